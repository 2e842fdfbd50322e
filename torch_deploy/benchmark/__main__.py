"""Runs tools/benchmark.py as ``python -m torch_deploy.benchmark``."""

from csfcn.cli import launching, run_main

with launching():
    from tools.benchmark import main

run_main(main)  # Ctrl-C / SIGTERM: one line, nothing partial (csfcn/cli.py)
