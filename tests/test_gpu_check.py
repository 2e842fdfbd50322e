"""`python -m torch_deploy.gpu_check --dry-run`: every section of the prepared GPU check runs on CPU at
tiny sizes, with none of the packages a GPU machine's preinstalled Python lacks importable.

The child processes (the check, and the pytest runs it starts with the same interpreter flags)
run with ``python -S`` over a site-packages without grain, ml_collections, orbax, TensorFlow,
TFDS, cityscapesscripts, onnx/onnxruntime, tensorboardX and matplotlib, as on that machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from isolated_site import GPU_MACHINE_LACKS, site_without

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSENT = GPU_MACHINE_LACKS


def test_gpu_check_dry_run_without_the_training_stack(tmp_path):
    site = site_without(tmp_path / "site", ABSENT + ("tensorflow_cpu", "tensorflow_io_gcs_filesystem"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([site, ROOT])
    probe = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            f"import importlib.util as u; print([u.find_spec(m) is None for m in {ABSENT!r}])",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == str([True] * len(ABSENT)), probe.stdout + probe.stderr
    out = tmp_path / "gc"
    res = subprocess.run(
        [sys.executable, "-S", "-m", "torch_deploy.gpu_check", "--out", str(out), "--dry-run"],
        cwd=tmp_path,  # not the repository: the check must find its tests by itself
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == [
        "environment",
        "ceilings",
        "kernel tests",
        "gpu tests",
        "benchmark 64x128",
        "compiled kernels",
        "models 64x128",
        "training",
        "benchmark 32x64",
    ]
    for name, s in sections.items():
        assert s["status"] == "ok", (name, s)
    assert sections["kernel tests"]["result"]["passed"]
    assert "passed" in sections["kernel tests"]["result"]["summary"]
    for size in ("64x128", "32x64"):
        bench = sections[f"benchmark {size}"]["result"]
        assert {m["variant"] for m in bench["models"]} >= {"a", "d", "e"}
        assert all(m["floor_ms"] and m["floor_ms"] > 0 for m in bench["models"])
    rows = sections["training"]["result"]["rows"]
    assert len(rows) == 2 and all(r["images_per_s"] > 0 for r in rows.values())
    # the final table comes last (a caller may read only the end of the output), also as markdown
    tail = res.stdout.strip().splitlines()[-25:]
    assert any(line.startswith("| target | JAX training") for line in tail)
    md = (out / "gpu_check.md").read_text()
    assert "| model | 64x128 a  reference eager fp32" in md and "| model | 32x64 a  reference eager fp32" in md
    assert report["environment"]["packages"]["pytest"]


def test_gpu_check_refuses_a_missing_gpu_clearly(tmp_path):
    """Without --dry-run on a machine with no GPU: one clear line, exit 2, no traceback."""
    import torch

    if torch.cuda.is_available():
        return
    res = subprocess.run(
        [sys.executable, "-m", "torch_deploy.gpu_check", "--out", str(tmp_path / "gc")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2
    assert "no CUDA device visible" in res.stderr and "--dry-run" in res.stderr
    assert "Traceback" not in res.stderr
