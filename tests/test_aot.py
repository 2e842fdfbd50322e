"""The ahead-of-time compile gate (kernels/aot.py, run by tools/aot.py): every launch of the fast path compiles for sm_80
and sm_90 within shared memory and without spills, and the gate does catch a spilling config.

Compiling for a GPU target needs the kernels imported without Triton's interpreter, which this
test session uses (``TRITON_INTERPRET=1``), so the gate runs in child processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_every_model_launch_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    out = tmp_path / "aot.json"
    res = subprocess.run(
        [sys.executable, "-m", "tools.aot", "--json", str(out), "--no-progress"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    results = json.loads(out.read_text())
    names = {r["name"] for r in results}
    assert names == {"_pooled_attention_kernel", "_sfc_fuse_kernel", "_shuffle_logits_kernel", "_shuffle_labels_kernel"}
    assert {r["target"] for r in results} == {"sm_80", "sm_90"}
    cases = {c for r in results for c in r["cases"]}
    for variant in ("csfcn", "csfcn_tiny", "sfanet"):  # SFANet: its alignments run through sfc_fuse
        for precision in ("fp32", "fp16", "bf16"):
            for output in ("logits", "labels"):
                for size in ("1024x2048", "712x1304"):
                    assert f"{variant} {precision} {output} {size}" in cases
    for r in results:
        assert r["error"] is None, r
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
        assert 0 <= r["shared_bytes"] <= r["shared_limit"], r
        assert 0 < r["registers"] <= 255, r
    # a compile per distinct specialisation, not per traced case
    keys = [(r["name"], r["target"], r["config"], tuple(sorted(r["cases"]))) for r in results]
    assert len(keys) == len(set(keys))
    assert len(results) == 84 and "84/84 compiled kernels pass" in res.stdout
    assert "| pooled_attention" in res.stdout and "spill st/ld B" in res.stdout


_SPILLING = """
import kernels.aot as aot, kernels.pooled_attention as pa
from tools.aot import record_model_launches
orig = pa.pooled_attention_launch_config
def spilling(*a, **k):  # 64 fp32 queries with 4 warps: the configuration the gate rejected
    cfg = orig(*a, **k)
    cfg.update(BLOCK_N=64, num_warps=4)
    return cfg
pa.pooled_attention_launch_config = spilling
rec = record_model_launches(sizes=((1024, 2048),), precisions=("fp32",), outputs=("logits",), variants=("csfcn",))
rec = [(c, ln) for c, ln in rec if ln.name == "_pooled_attention_kernel"]
res = aot.compile_all(aot.plan(rec, targets=("sm_90",)), workers=1, progress=False)
print(len(res), res[0].spill_stores, res[0].problems)
"""


def test_gate_catches_a_spilling_configuration():
    res = subprocess.run(
        [sys.executable, "-c", _SPILLING], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-4000:]
    n, spills, problems = res.stdout.strip().split(" ", 2)
    assert n == "1" and int(spills) > 0 and "spills" in problems


def test_launches_are_recorded_on_meta_without_running():
    """The model traced on the meta device issues one launch per kernel, with the GPU configuration."""
    from kernels._common import gpu_launch_config, record_launches
    from torch_deploy.model import CSFCN
    from torch_deploy.optimize import optimize

    with torch.device("meta"):
        twin = CSFCN(num_classes=11).eval()
    with record_launches():
        fast = optimize(twin, "fp16", "labels", cuda_graphs=False, kernels=True)
    with record_launches() as launches, gpu_launch_config():
        labels = fast(torch.empty(1, 3, 512, 1536, device="meta"))
    assert labels.shape == (1, 512, 1536) and labels.device.type == "meta"
    names = [ln.name for ln in launches]
    assert names == ["_pooled_attention_kernel", "_sfc_fuse_kernel", "_shuffle_labels_kernel"]
    attn = launches[0]
    assert attn.args[5] == 150  # S at aspect ratio 3: tiled over S whatever its size
    assert all(ln.meta["num_warps"] == 8 for ln in launches)


def test_the_gate_traces_the_layouts_a_gpu_run_has():
    """On meta a convolution returns NCHW; on a GPU cuDNN returns channels-last, and Triton
    specialises on strides (a unit channel stride becomes a constant), so the gate must see the
    GPU's layouts: every 4-d kernel argument is channels-last, as in the real graph."""
    from tools.aot import record_model_launches

    rec = record_model_launches(sizes=((64, 96),), precisions=("fp16",), outputs=("labels",), variants=("csfcn",))
    assert [ln.name for _, ln in rec] == ["_pooled_attention_kernel", "_sfc_fuse_kernel", "_shuffle_labels_kernel"]
    feature_maps = [a for _, ln in rec for a in ln.args if isinstance(a, torch.Tensor) and a.dim() == 4]
    assert len(feature_maps) >= 6
    for t in feature_maps:
        assert t.stride(1) == 1 and t.is_contiguous(memory_format=torch.channels_last), t.stride()


def test_meta_tensors_are_refused_outside_recording():
    from kernels.sfc_fuse import sfc_fuse

    t = torch.empty(1, 128, 8, 8, device="meta")
    with pytest.raises(ValueError, match="unsupported device meta"):
        sfc_fuse(t, t, torch.empty(1, 10, 8, 8, device="meta"))


_SINGLE_ROW = """
import json, torch, kernels.aot as aot
from kernels._common import gpu_launch_config, record_launches
from kernels.sfc_fuse import sfc_fuse
rec = []
for h, w, sp_hw in ((1, 5, (1, 2)), (6, 1, (3, 1)), (1, 1, (1, 1))):
    def t(c, hw):
        return torch.empty(1, c, *hw, device="meta").contiguous(memory_format=torch.channels_last)
    with record_launches() as launches, gpu_launch_config():
        sfc_fuse(t(128, (h, w)), t(128, sp_hw), t(10, (h, w)))
    rec += [(f"{h}x{w}", ln) for ln in launches]
res = aot.compile_all(aot.plan(rec, targets=("sm_90",)), workers=1, progress=False)
print(json.dumps([[sorted(r.cases), r.error] for r in res]))
"""


def test_sfc_fuse_compiles_for_a_single_row_or_column():
    """Triton turns an int argument equal to 1 into a constant; sfc_fuse converts H and W to fp32,
    which a constant cannot do, so a 1-row or 1-column map must not be specialised. The interpreter
    never specialises, so only a real compile (here for sm_90) shows it."""
    res = subprocess.run(
        [sys.executable, "-c", _SINGLE_ROW], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-4000:]
    results = json.loads(res.stdout.strip().splitlines()[-1])
    assert sorted(c for cases, _ in results for c in cases) == ["1x1", "1x5", "6x1"]
    assert all(error is None for _, error in results), results


def _result(target: str, **report):
    """An aot.Result as _compile fills it for ``target``, with ptxas's ``report`` fields overridden."""
    import kernels.aot as aot

    fields = dict(registers=128, stack_bytes=0, spill_stores=0, spill_loads=0, shared_bytes=0)
    return aot.Result(
        "_k", target, ["case"], "BLOCK_P=64", 4, 2, **{**fields, **report}, shared_limit=aot.TARGETS[target][1]
    )


def test_shared_memory_limits_are_cudas_per_block_opt_in_maxima():
    """The per-block shared memory a kernel may opt in to, from the CUDA C++ Programming Guide
    (Compute Capabilities, "Maximum amount of shared memory per thread block"): 163 KB on
    compute capability 8.0 (A100), 227 KB on 9.0 (H100/H200), KB = 1024 bytes. A kernel between
    the two fits an H100 and fails to launch on an A100: the gate must flag it on sm_80 only."""
    import kernels.aot as aot

    assert aot.TARGETS["sm_80"] == (80, 163 * 1024), f"sm_80 (cap, shared limit) is {aot.TARGETS['sm_80']}"
    assert aot.TARGETS["sm_90"] == (90, 227 * 1024), f"sm_90 (cap, shared limit) is {aot.TARGETS['sm_90']}"
    between = 200 * 1024
    assert _result("sm_80", shared_bytes=between).problems, "200 KiB of shared memory passed the sm_80 gate"
    assert _result("sm_90", shared_bytes=between).problems == [], "200 KiB of shared memory failed on sm_90"
    for target, (_, limit) in aot.TARGETS.items():  # the limit itself is allowed, one byte more is not
        assert _result(target, shared_bytes=limit).problems == [], f"{target}: exactly the limit flagged"
        assert _result(target, shared_bytes=limit + 1).problems, f"{target}: limit + 1 B not flagged"


def test_gate_fails_spill_stores_or_spill_loads_alone():
    """Any spill fails the gate (docs/gpu_readiness.md): spill stores alone, spill loads alone, both."""
    assert _result("sm_90").problems == [], "a kernel without spills was flagged"
    for stores, loads in ((16, 0), (0, 16), (16, 16)):
        problems = _result("sm_90", spill_stores=stores, spill_loads=loads).problems
        assert any("spills" in p for p in problems), f"{stores} B spill stores / {loads} B loads passed the gate"
