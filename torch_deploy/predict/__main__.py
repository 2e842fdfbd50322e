"""Runs tools/predict.py as ``python -m torch_deploy.predict``."""

from csfcn.cli import launching

with launching():
    from tools.predict import main

raise SystemExit(main())
