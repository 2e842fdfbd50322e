"""``python -m torch_deploy.serve``: a launcher package, holding only ``__main__.py``.

The command itself is tools/serve.py; the libraries never import it (docs/architecture.md,
"Package layering"). What it serves and how: docs/serving.md.
"""
