"""torch_deploy.cpu_caps: what each class of CPU gets, decided in one place; and every CPU
precision path run under lower oneDNN ISAs than this machine's (tests/isa_probe.py in a
subprocess with ONEDNN_MAX_CPU_ISA), so an AVX-512 machine catches what an AVX2 user hits."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torch_deploy.cpu_caps import CpuCaps, CpuPrecisionError, cpu_caps, detect
from torch_deploy.model import CSFCN
from torch_deploy.optimize import optimize
from torch_deploy.predictor import Predictor

# the modules (torch_deploy/__init__.py exports functions of the same names)
optimize_module = importlib.import_module("torch_deploy.optimize")

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
AVX512 = AVX2 | {"avx512f", "avx512cd", "avx512bw", "avx512vl", "avx512dq"}
CLASSES = {  # (flags, bf16 runs, int8 activation bits, auto without / with calibration)
    "avx2 (Haswell..Comet Lake, Zen 1-3)": (AVX2, False, 7, "fp32", "int8"),
    "avx2 + avx-vnni (Alder Lake)": (AVX2 | {"avx_vnni"}, False, 8, "fp32", "int8"),
    "avx-512 (Skylake-SP)": (AVX512, False, 7, "fp32", "int8"),
    "avx-512 vnni (Cascade Lake)": (AVX512 | {"avx512_vnni"}, False, 8, "fp32", "int8"),
    "avx-512 bf16 (Cooper Lake, Zen 4)": (AVX512 | {"avx512_vnni", "avx512_bf16"}, True, 8, "bf16", "int8"),
    "amx (Sapphire Rapids)": (AVX512 | {"avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}, True, 8,
                              "bf16", "int8"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CLASSES))
def test_decision_per_cpu_class(name):
    flags, bf16, bits, auto, auto_cal = CLASSES[name]
    caps = CpuCaps("x86_64", flags, "a test's flags")
    assert caps.verdict("fp32").ok and caps.verdict("int8").ok
    assert caps.verdict("bf16").ok is bf16 and caps.int8_bits == bits
    assert caps.auto(calibration=False) == auto and caps.auto(calibration=True) == auto_cal
    why = caps.verdict("bf16").why
    if not bf16:
        with pytest.raises(CpuPrecisionError, match="precision bf16 on this CPU: no avx512_bf16 or amx_bf16"):
            caps.check("bf16")
        assert ("emulated" in why) is ("avx512bw" in flags)  # AVX-512 emulates; AVX2 cannot run it at all
    assert ("7-bit" in caps.verdict("int8").why) is (bits == 7)
    text = caps.describe()
    assert text.count("\n") == 3 and all(f"  {p}" in text for p in ("fp32", "bf16", "int8"))


def test_arm64_gets_fp32_and_says_why():
    caps = CpuCaps("aarch64", frozenset({"fp", "asimd", "bf16", "i8mm"}), "a test's flags")
    assert caps.auto(calibration=True) == caps.auto(calibration=False) == "fp32"
    for p in ("bf16", "int8"):
        with pytest.raises(CpuPrecisionError, match=f"{p} on aarch64: .*x86 kernels.*use fp32"):
            caps.check(p)
    assert caps.cpu_class == "aarch64" and caps.verdict("fp32").ok


def test_onednn_isa_cap_lowers_the_class(monkeypatch):
    """ONEDNN_MAX_CPU_ISA hides what oneDNN will not use: the verdicts follow the cap, and the
    reason names it."""
    amx = CLASSES["amx (Sapphire Rapids)"][0]
    for cap, cls, bits, bf16 in (
        ("AVX2", "AVX2", 7, False),
        ("avx512_core", "AVX-512", 7, False),
        ("AVX512_CORE_VNNI", "AVX-512 + VNNI", 8, False),
        ("AVX512_CORE_BF16", "AVX-512 + BF16 + VNNI", 8, True),
        ("ALL", "AVX-512 + AMX + VNNI", 8, True),
    ):
        caps = CpuCaps("x86_64", amx, "a test's flags", cap)
        assert (caps.cpu_class, caps.int8_bits, caps.verdict("bf16").ok) == (cls, bits, bf16), cap
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "ONEDNN_MAX_CPU_ISA=AVX2 hides them" in CpuCaps("x86_64", amx, "t", "AVX2").verdict("bf16").why
    assert detect().cap == "AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX3000")
    with pytest.raises(ValueError, match="ONEDNN_MAX_CPU_ISA=AVX3000: not an ISA name oneDNN knows"):
        detect()


def test_flags_without_proc_cpuinfo_come_from_torch(monkeypatch):
    import torch_deploy.cpu_caps as module

    monkeypatch.setattr(module, "_proc_flags", lambda: None)
    caps = detect()
    assert caps.source == "torch.cpu's feature report"
    assert ("avx2" in caps.flags) is torch.cpu._is_avx2_supported()
    assert ("avx512_vnni" in caps.flags) is torch.cpu._is_vnni_supported()


def test_every_tool_asks_the_one_report(monkeypatch):
    """optimize, Predictor (auto too) and the benchmark's and accuracy's path choices follow
    cpu_caps through the one decision (torch_deploy.precision): an AVX2 report makes bf16 a
    one-line refusal, int8 7-bit, auto fp32. Besides the decision, only optimize (int8's bits)
    and the benchmark (its labels) read the report."""
    import tools.accuracy as accuracy_module
    import tools.benchmark as benchmark_module
    import torch_deploy.precision as precision_module

    avx2 = CpuCaps("x86_64", AVX2, "a test's flags")
    for module in (precision_module, optimize_module, benchmark_module):
        monkeypatch.setattr(module, "cpu_caps", lambda: avx2)
    twin = CSFCN(num_classes=5).eval()
    with pytest.raises(CpuPrecisionError, match="^optimize: precision bf16 on this CPU: no avx512_bf16"):
        optimize(twin, "bf16", "labels")
    image = [torch.randn(1, 3, 32, 64)]
    assert optimize(twin, "int8", "labels", calibration=image).ops.bits == 7
    assert Predictor(twin, device="cpu", precision="auto").path == "optimize-fp32"
    with pytest.raises(CpuPrecisionError, match="^precision bf16 on this CPU"):
        Predictor(twin, device="cpu", precision="bf16")
    assert accuracy_module.build_path("optimize-bf16", twin, image) == (None, avx2.verdict("bf16").why)
    run, skipped = {}, {}
    benchmark_module.cpu_peer_variants(twin, lambda k: k in ("f", "q"), run, skipped)
    assert skipped == {"f  optimize bf16 labels": avx2.verdict("bf16").why}
    assert [label for label in run] == ["q  optimize int8 labels (oneDNN int8 convolutions, 7-bit activations)"]
    arm = CpuCaps("aarch64", frozenset({"asimd"}), "a test's flags")
    monkeypatch.setattr(precision_module, "cpu_caps", lambda: arm)
    monkeypatch.setattr(optimize_module, "cpu_caps", lambda: arm)
    assert Predictor(twin, device="cpu", precision="auto", calibration=["unused.png"]).path == "optimize-fp32"
    with pytest.raises(CpuPrecisionError, match="int8 on aarch64"):
        optimize(twin, "int8", "labels", calibration=image)


def _probe(isa: str) -> dict:
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("isa_probe.py"))], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# The machine's own ISA runs in-process (test_quantize.py, test_optimize.py); these three are
# lower on an AVX-512/AMX machine: no VNNI and no bf16 (AVX2), no VNNI and emulated bf16
# (AVX512_CORE), VNNI without AVX-512 (AVX2_VNNI). On a lower CPU a cap above it changes nothing.
@pytest.mark.parametrize("isa", ["AVX2", "AVX512_CORE", "AVX2_VNNI"])
def test_every_precision_path_under_a_lower_isa(isa):
    """Under the cap: cpu_caps agrees with what oneDNN computes (exact int32 sums with VNNI,
    saturated int16 pair sums without); int8 -- 7 bits where the pairs saturate -- is exactly the
    fake-quantized function conv by conv, and as close to fp32 as that function is; bf16 runs to
    its precision or is a one-line refusal, never oneDNN's error."""
    out = _probe(isa)
    caps, pairs, int8 = out["caps"], out["pair_sums"], out["int8"]
    assert pairs["pairs_over_int16"] > 0  # the probe's pairs do overflow int16
    # what the cap does to oneDNN, seen directly: the decision's premise
    assert pairs["exact"] is (caps["int8_activation_bits"] == 8) and pairs["saturated"] is (not pairs["exact"])
    assert int8["bits"] == caps["int8_activation_bits"] and int8["convs"] == 31
    # int32 accumulation is exact, the fp32 epilogue (dequantize, bias, ReLU) rounds a few ulp:
    # measured ~1e-7 on every ISA; saturated 8-bit pair sums give 1.2e-2 (int8_8bit below)
    assert int8["worst_conv_rel_l2"] <= 1e-6, int8
    # accuracy is the fake-quantized function's own (up to a bin flip amplified downstream);
    # 7-bit activations on this damped model: agreement 0.957, 8-bit 0.969 (tests/isa_probe.py)
    assert int8["agreement"] >= int8["fake_agreement"] - 0.01 and int8["agreement"] >= 0.93, int8
    assert int8["rel_l2_to_fp32"] <= 1.5 * int8["fake_rel_l2_to_fp32"], int8
    if "int8_8bit" in out:  # what the code did before: 8 bits where the pairs saturate
        assert out["int8_8bit"]["worst_conv_rel_l2"] > 1e-3
    bf16 = out["bf16"]
    assert "crashed" not in bf16, bf16["crashed"]
    if caps["precisions"]["bf16"]["ok"]:
        assert bf16["rel_l2_to_fp32"] <= 0.05  # bf16's 8-bit mantissa through 31 convs (test_optimize: 1e-2)
    else:
        assert bf16["refused"] == f"optimize: precision bf16 on this CPU: {caps['precisions']['bf16']['why']}"
        assert "\n" not in bf16["refused"]


def test_benchmark_prints_the_cpu_report(capsys, tmp_path):
    """`python -m torch_deploy.benchmark --device cpu` says which CPU class its rows ran on."""
    from tools.benchmark import main

    out = tmp_path / "b.json"
    args = ["--device", "cpu", "--size", "32", "64", "--only", "a", "--repeats", "1", "--warmup", "0"]
    assert main([*args, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert cpu_caps().describe() in text
    assert json.loads(out.read_text())["cpu"] == cpu_caps().as_dict()
