"""``python -m torch_deploy.predict``: a launcher package, holding only ``__main__.py``.

The command itself is tools/predict.py; the libraries never import it (docs/architecture.md,
"Package layering").
"""
