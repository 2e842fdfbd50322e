"""`python -m tools.gpu_check --dry-run`: every section of the prepared GPU check runs on CPU at
tiny sizes, with none of the packages a GPU machine's preinstalled Python lacks importable.

The child processes (the check, and the pytest runs it starts with the same interpreter flags)
run with ``python -S`` over a site-packages without grain, ml_collections, TensorFlow, TFDS,
cityscapesscripts and tensorboardX, as on that machine (.ci/gpu-image.txt).
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
        [sys.executable, "-S", "-m", "tools.gpu_check", "--out", str(out), "--dry-run"],
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
        "training",
        "input",
        "compiled kernels",
        "models 64x128",
        "benchmark 32x64",
    ]
    # every section ran under its own limit, and the table was rewritten after each one
    assert all(0 <= s["seconds"] <= s["limit_s"] for s in sections.values()), sections
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
    # the input path with no grain: the loader's per-record work, the device augmentation, the step with it
    inp = sections["input"]["result"]
    assert inp["loss_finite"] and inp["images_per_s"] > 0 and inp["device_augment_ms_per_image"]["median"] > 0
    assert inp["augment"]["photometric"] == "device" and inp["augment"]["blur_prob"] == 1.0
    assert inp["augment"]["geometry"] == "device" and inp["augment"]["source_size"] == list(inp["source"])
    eq = inp["device_vs_host"]
    assert eq["records"] == 2 and eq["values"] > 0 and eq["differing"] == 0 and eq["label_pixels_differing"] == 0, eq
    # the final table comes last (a caller may read only the end of the output), also as markdown
    tail = res.stdout.strip().splitlines()[-25:]
    assert any(line.startswith("| target | JAX training") for line in tail)
    assert any(line.startswith("| input | device geometry + blur + jitter per image") for line in tail)
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("GPU check on CPU") and "python3 -m tools.gpu_check" in md
    assert "| model | 64x128 a  reference eager fp32" in md and "| model | 32x64 a  reference eager fp32" in md
    assert report["environment"]["packages"]["pytest"]


def test_gpu_check_refuses_a_missing_gpu_clearly(tmp_path):
    """Without --dry-run on a machine with no GPU: one clear line, exit 2, no traceback."""
    import torch

    if torch.cuda.is_available():
        return
    res = subprocess.run(
        [sys.executable, "-m", "tools.gpu_check", "--out", str(tmp_path / "gc")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2
    assert "no CUDA device visible" in res.stderr and "--dry-run" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_section_stops_at_its_limit_and_the_tables_are_rewritten_after_each(tmp_path):
    """A GPU run is cut off from outside: each section has its own time limit, one that would end
    past the budget is not started, and gpu_check.json/.md hold every finished section."""
    import time

    from tools.gpu_check import Check, make_plan

    check = Check(str(tmp_path), make_plan(dry_run=True), budget_s=3.0, dry_run=True)
    check.section("quick", lambda: {"x": 1}, 1.0)
    assert json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["quick"]["status"] == "ok"
    assert "| section | quick | ok |" in (tmp_path / "gpu_check.md").read_text()
    check.section("stuck", lambda: time.sleep(5), 0.5)
    stuck = check.report["sections"]["stuck"]
    assert stuck["status"] == "timeout" and stuck["seconds"] < 2, stuck
    check.section("too long", lambda: 1, 10.0)
    skipped = check.report["sections"]["too long"]
    assert skipped["status"] == "skipped" and "budget left" in skipped["reason"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| section | stuck | timeout |" in md and "| section | too long | skipped |" in md


def test_unknown_skip_names_and_an_out_file_are_one_line(tmp_path, capsys, monkeypatch):
    """--skip nosuch once ran everything; --out naming a file was a FileExistsError traceback."""
    import tools.gpu_check as gc
    from tools.gpu_check import main

    def no_sections(*args, **kwargs):
        raise AssertionError("the check started despite a bad flag")

    monkeypatch.setattr(gc, "Check", no_sections)

    out = tmp_path / "gc"
    assert main(["--out", str(out), "--dry-run", "--skip", "tests,nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --skip nosuch: no such section") and err.count("\n") == 1
    assert "tests, benchmark, models, training" in err and not out.exists()
    (tmp_path / "file").write_text("x")
    assert main(["--out", str(tmp_path / "file"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {tmp_path / 'file'}: exists and is not a folder") and err.count("\n") == 1
    assert (tmp_path / "file").read_text() == "x"
