"""``python -m torch_deploy.serve``: the launcher of tools/serve.py (a Triton Inference Server for a checkpoint)."""
