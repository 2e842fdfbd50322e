"""``python -m torch_deploy.benchmark``: a launcher package, holding only ``__main__.py``.

The command itself is tools/benchmark.py; the libraries never import it (docs/architecture.md,
"Package layering").
"""
