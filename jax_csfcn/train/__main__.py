"""Runs tools/train.py as ``python -m jax_csfcn.train``."""

from csfcn.cli import launching

with launching():
    from tools.train import main

main()
