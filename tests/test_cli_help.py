"""Every command line answers ``--help`` with its usage on stdout and exit status 0, and all of
them are one parser family (argparse) with one flag spelling (dashes, never underscores)."""

from __future__ import annotations

import concurrent.futures as futures
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIS = (
    "convert",
    "jax_csfcn.train",
    "jax_csfcn.evaluate",
    "jax_csfcn.summary",
    "jax_csfcn.demo",
    "jax_csfcn.accuracy_speed",
    "jax_csfcn.official_eval",
    "jax_csfcn.benchmark",
    "jax_csfcn.data.benchmark",
    "jax_csfcn.data.synthetic",
    "jax_csfcn.data.folder",
    "jax_csfcn.data.tfds_cityscapes",
    "kernels.aot",
    "torch_deploy.predict",
    "torch_deploy.benchmark",
    "torch_deploy.export_onnx",
    "torch_deploy.accuracy",
    "torch_deploy.roofline",
    "torch_deploy.gpu_check",
)


def _help(module: str) -> tuple[str, int, str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, capture_output=True, text=True)
    return module, res.returncode, res.stdout + res.stderr


def test_every_cli_help_exits_zero():
    with futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(_help, CLIS))
    bad = [(m, rc, out[-500:]) for m, rc, out in results if rc != 0 or not out.startswith("usage: python -m ")]
    assert not bad, bad
    underscores = {m: re.findall(r"--[a-z0-9]+_[a-z0-9_]+", out) for m, _, out in results}
    assert not any(underscores.values()), underscores
