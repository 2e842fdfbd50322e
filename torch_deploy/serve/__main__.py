"""Runs tools/serve.py as ``python -m torch_deploy.serve``."""

from csfcn.cli import launching

with launching():
    from tools.serve import main

raise SystemExit(main())
