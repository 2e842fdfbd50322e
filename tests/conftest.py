"""Shared test helpers: fresh seeded random inputs, layout helpers, error metrics."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zlib

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the session and the child processes it starts:
# the training tests build the same step functions many times (fresh closures per run, and
# in subprocesses), and a cache hit skips a 10-30 s CPU compile.  Keyed by the program, so a
# hit is always the same program.  The process that loads this file first (pytest itself, or
# the xdist controller, whose workers inherit its environment) makes it and removes it at the end.
_OWN_JAX_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_JAX_CACHE = tempfile.mkdtemp(prefix="csfcn-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_JAX_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
sys.path.insert(0, os.path.dirname(__file__))  # tests/random_weights.py


def rel_l2(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def nchw(a) -> np.ndarray:
    return np.asarray(a).transpose(0, 3, 1, 2)


def nhwc(a) -> np.ndarray:
    return np.asarray(a).transpose(0, 2, 3, 1)


# The longest test starts first. `make test` runs on two xdist workers (`--dist worksteal`: an
# idle worker takes unstarted tests from the other's queue), and the README test alone is about
# 600 s of a ~15-minute run, measured with `--durations` on a 2-core x86 machine. Collected in
# its alphabetical place it started after 5-6 minutes and ran on alone at the end while the
# other core idled; started first, it overlaps everything else.
LONGEST_FIRST = ("tests/test_readme.py::test_every_readme_command_runs",)


# One math thread per xdist worker when the workers fill the cores. PyTorch's OpenMP threads
# busy-wait between parallel regions; two workers of two threads each on two cores spend much of
# their time spinning against each other. Measured on a 2-core x86 machine with `-n 2` over
# test_parity, test_optimize, test_zoo_parity and test_kernels: 160 s wall and 305 s of CPU with
# the default threads, 98 s and 180 s with one thread per worker (XLA's own pool made no
# measurable difference either way). Set in the controller before the workers start, so that
# they and every child process they run inherit it; a value the caller set is kept.
def pytest_configure(config):
    if hasattr(config, "workerinput"):
        return
    n = getattr(config.option, "numprocesses", None)
    cores = os.cpu_count() or 1
    workers = cores if n in ("auto", "logical") else (n if isinstance(n, int) else 0)
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))


def pytest_collection_modifyitems(config, items):
    rank = {nodeid: i for i, nodeid in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid, len(rank)))  # stable: the rest keep their order


def pytest_sessionfinish(session):
    if _OWN_JAX_CACHE and not hasattr(session.config, "workerinput"):
        shutil.rmtree(_OWN_JAX_CACHE, ignore_errors=True)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: fresh per test, reproducible across runs."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
