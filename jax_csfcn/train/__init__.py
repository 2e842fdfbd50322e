"""``python -m jax_csfcn.train``: a launcher package, holding only ``__main__.py``.

The command itself is tools/train.py; the libraries never import it (docs/architecture.md,
"Package layering").
"""
