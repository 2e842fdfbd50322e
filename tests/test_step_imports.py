"""The train step and its benchmark run with only the JAX + PyTorch stacks installed.

A GPU machine that times the JAX train step against the PyTorch twin's
(tools.benchmark_train.bench_train) has torch, triton, jax, flax, optax, numpy, safetensors and
pytest, and none of the data / config / checkpoint / export packages below.  A child process
hides those packages from the import system (as if they were not installed) and runs
jax_csfcn.step and bench_train in the GPU check's precision (JAX bf16 compute, torch bf16
autocast, channels-last) on tiny settings on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

from isolated_site import TRAIN_STEP_NEEDS_NONE_OF  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

NOT_INSTALLED = TRAIN_STEP_NEEDS_NONE_OF

CHILD = """
import importlib.abc, json, sys

NOT_INSTALLED = set(sys.argv[1].split(","))


class NotInstalled(importlib.abc.MetaPathFinder):
    # Wraps one finder of sys.meta_path and finds nothing of NOT_INSTALLED, so that the import
    # machinery raises ModuleNotFoundError for them and importlib.util.find_spec returns None,
    # exactly as on a machine without them (torch and JAX probe optional packages that way).
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in NOT_INSTALLED:
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find else None

    def invalidate_caches(self):
        getattr(self.finder, "invalidate_caches", lambda: None)()


def loaded():
    return sorted(m for m in sys.modules if m.partition(".")[0] in NOT_INSTALLED)


assert not loaded(), loaded()
sys.meta_path[:] = [NotInstalled(f) for f in sys.meta_path]
for name in NOT_INSTALLED:  # the refusal works: none of them can be imported now
    try:
        __import__(name)
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError(f"{name} is still importable")

import jax_csfcn.step  # noqa: E402
from tools.benchmark_train import bench_train  # noqa: E402

out = bench_train(
    1, 2, (64, 64), "csfcn", warmup=0, min_kept=500, torch_layouts=("channels_last",),
    dtype="bfloat16", torch_amp=True, device="cpu",
)
assert not loaded(), loaded()
print("RESULT" + json.dumps(out))
"""


def test_bench_train_runs_without_data_config_and_checkpoint_packages():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # the session's compilation cache (conftest) is kept
    r = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(NOT_INSTALLED)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.split("RESULT", 1)[1])
    assert out["precision"] == {"jax_compute_dtype": "bfloat16", "torch_autocast": "bfloat16"}
    rows = out["rows"]
    assert set(rows) == {"jax csfcn bfloat16", "torch csfcn channels_last bf16-amp"}, rows.keys()
    for name, row in rows.items():
        assert row["runs"] == 1, name
        assert math.isfinite(row["first_step_loss"]) and row["first_step_loss"] > 0, (name, row)
        assert math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0, (name, row)
    # Same weights, batch and OHEM on both sides: the first losses agree to bf16 precision.
    losses = [row["first_step_loss"] for row in rows.values()]
    assert math.isclose(*losses, rel_tol=1e-2), losses


def test_default_settings_are_get_config():
    """The namespace bench_train starts from has every field and value of the ConfigDict."""
    from jax_csfcn.config import get_config
    from jax_csfcn.step import default_settings

    def as_dict(ns):
        return {k: as_dict(v) if isinstance(v, types.SimpleNamespace) else v for k, v in vars(ns).items()}

    assert as_dict(default_settings()) == get_config().to_dict()
    a, b = default_settings(), default_settings()
    a.train.dtype = "bfloat16"
    assert b.train.dtype == "float32"  # each call is a fresh copy
