"""The one place that knows the CPU: which precisions this CPU runs correctly, and fast.

    from torch_deploy.cpu_caps import cpu_caps
    caps = cpu_caps()
    print(caps.describe())            # the CPU class, each precision's verdict and its evidence
    caps.check("bf16")                # raises CpuPrecisionError (one sentence) where bf16 cannot run
    caps.int8_bits                    # 8 with VNNI, 7 without (docs/architecture.md, "int8 without VNNI")
    caps.auto(calibration=True)       # what precision="auto" runs on this CPU

``optimize``, ``Predictor``, ``predict --precision auto``, ``benchmark --device cpu`` and
``accuracy`` all ask :func:`cpu_caps`; nothing else reads CPU flags.

What each class of x86-64 CPU gets (oneDNN runs every convolution; it picks its kernels by the
instruction sets below):

* **int8** runs everywhere on x86-64 with AVX2, but its arithmetic differs. With VNNI
  (AVX512_VNNI, AVX-VNNI or AMX-INT8) each uint8 x int8 product is accumulated in int32: exact.
  Without it oneDNN uses ``vpmaddubsw``, which adds the products of two neighbouring input
  channels into a *saturating int16*: 255 x 127 x 2 = 64,770 does not fit in 32,767, so
  8-bit activations give wrong sums (tests/test_cpu_caps.py reproduces oneDNN's results exactly
  from the saturated pair sums). There activations are quantized to 7 bits (0..127): a pair sum
  is then at most 127 x 128 x 2 = 32,512, which fits, and the int8 path is again exactly the
  fake-quantized function -- at twice the activation step.
* **bf16** is native with AVX512_BF16 or AMX-BF16. Elsewhere it is refused in one sentence:
  with AVX-512 (BW/VL/DQ) but no bf16 instructions oneDNN emulates bf16, slower than fp32; with
  AVX2 alone PyTorch's oneDNN bf16 convolution does not run at all.
* **fp32** runs on every CPU.

arm64 (and any other non-x86 CPU): fp32 only. The int8 and bf16 paths are oneDNN's x86
kernels; none is measured on Arm here, so they are refused there rather than guessed at.

The evidence: the CPU's flags from ``/proc/cpuinfo`` (``torch.cpu``'s own feature report where
there is no such file), limited by oneDNN's ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``)
when it is set -- oneDNN then dispatches as on a lower CPU, and the verdicts follow, so setting
``ONEDNN_MAX_CPU_ISA=AVX2`` on an AVX-512 machine shows (and the tests check) what an AVX2 user
gets.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform

import torch

# The flags each oneDNN ISA level admits (its documented ONEDNN_MAX_CPU_ISA names; older
# spellings as aliases). A cap keeps only the CPU's flags in the named level's set.
_AVX2 = frozenset({"avx", "avx2", "fma", "f16c"})
_AVX2_VNNI = _AVX2 | {"avx_vnni"}
_AVX2_VNNI_2 = _AVX2_VNNI | {"avx_ne_convert", "avx_vnni_int8"}
_AVX512_CORE = _AVX2 | {"avx512f", "avx512cd", "avx512bw", "avx512vl", "avx512dq"}
_AVX512_CORE_VNNI = _AVX512_CORE | {"avx512_vnni"}
_AVX512_CORE_BF16 = _AVX512_CORE_VNNI | {"avx512_bf16"}
_AVX10_1_512 = _AVX512_CORE_BF16 | _AVX2_VNNI_2 | {"avx512_fp16"}
_AMX = _AVX10_1_512 | {"amx_tile", "amx_int8", "amx_bf16"}
ONEDNN_ISA_FLAGS: dict[str, frozenset[str] | None] = {
    "SSE41": frozenset(),
    "AVX": frozenset({"avx"}),
    "AVX2": _AVX2,
    "AVX2_VNNI": _AVX2_VNNI,
    "AVX2_VNNI_2": _AVX2_VNNI_2,
    "AVX512_CORE": _AVX512_CORE,
    "AVX512_CORE_VNNI": _AVX512_CORE_VNNI,
    "AVX512_CORE_BF16": _AVX512_CORE_BF16,
    "AVX10_1_512": _AVX10_1_512,
    "AVX512_CORE_FP16": _AVX10_1_512,
    "AVX10_1_512_AMX": _AMX,
    "AVX512_CORE_AMX": _AMX,
    "AVX10_1_512_AMX_FP16": _AMX | {"amx_fp16"},
    "AVX512_CORE_AMX_FP16": _AMX | {"amx_fp16"},
    "ALL": None,  # no cap
}
CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# PyTorch's own condition for running a oneDNN bf16 convolution at all (mkldnn_bf16_device_check)
BF16_RUNNABLE = (("avx512bw", "avx512vl", "avx512dq"), ("avx_ne_convert",))
CPU_PRECISIONS = ("fp32", "bf16", "int8")
X86 = ("x86_64", "amd64", "i386", "i686", "x86")


class CpuPrecisionError(ValueError):
    """A precision this CPU cannot run correctly (or only emulated); the message says why and what to use."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One precision on this CPU: whether it runs (correct and not slower than fp32), and why."""

    ok: bool
    why: str


@dataclasses.dataclass(frozen=True)
class CpuCaps:
    """What this CPU computes correctly and fast; built by :func:`cpu_caps` (or by hand in tests)."""

    arch: str  # platform.machine(), lower case
    flags: frozenset[str]  # the CPU's feature flags as the kernel names them (/proc/cpuinfo)
    source: str  # where the flags came from
    cap: str | None = None  # ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) when set

    @property
    def x86(self) -> bool:
        return self.arch in X86

    @property
    def effective(self) -> frozenset[str]:
        """The flags oneDNN may use: the CPU's, limited by the ISA cap."""
        allowed = ONEDNN_ISA_FLAGS.get(self.cap.upper()) if self.cap else None
        return self.flags if allowed is None else self.flags & allowed

    def _have(self, names) -> list[str]:
        return [f for f in names if f in self.effective]

    def _missing(self, names) -> str:
        """'no a or b' for flags absent here, with what the ISA cap hides of them."""
        hidden = [f for f in names if f in self.flags and f not in self.effective]
        text = f"no {' or '.join(names)}"
        if hidden:
            text += f" ({self._cap_var()}={self.cap} hides {'it' if len(hidden) == 1 else 'them'})"
        return text

    def _cap_var(self) -> str:
        return next((v for v in CAP_VARIABLES if os.environ.get(v)), CAP_VARIABLES[0])

    @property
    def vnni(self) -> bool:
        return bool(self._have(VNNI_FLAGS))

    @property
    def int8_bits(self) -> int:
        """Activation bits of the int8 path: 8 with VNNI (exact int32 accumulation), 7 without
        (oneDNN's pre-VNNI int16 pair sums saturate on 8-bit activations)."""
        return 8 if self.vnni else 7

    def verdict(self, precision: str) -> Verdict:
        if precision == "fp32":
            return Verdict(True, "every CPU")
        if precision == "fp16":
            return Verdict(False, "fp16 is the GPU precision; on a CPU use fp32, bf16 or int8")
        if precision not in CPU_PRECISIONS:
            raise ValueError(f"precision {precision!r}: the CPU precisions are {CPU_PRECISIONS}")
        if not self.x86:
            return Verdict(
                False,
                f"{precision} on {self.arch}: the int8 and bf16 paths are oneDNN's x86 kernels, not measured on "
                f"this architecture; use fp32",
            )
        if precision == "int8":
            if "avx2" not in self.effective:
                return Verdict(False, f"{self._missing(['avx2'])}: oneDNN's int8 kernels need AVX2; use fp32")
            have = self._have(VNNI_FLAGS)
            if have:
                return Verdict(True, f"8-bit activations: {', '.join(have)} accumulates in int32")
            return Verdict(
                True,
                f"7-bit activations: {self._missing(VNNI_FLAGS)}, so oneDNN's int16 pair sums would saturate "
                "on 8-bit ones",
            )
        have = self._have(BF16_FLAGS)
        if have:
            return Verdict(True, f"native: {', '.join(have)}")
        runnable = any(all(f in self.effective for f in group) for group in BF16_RUNNABLE)
        missing = self._missing(BF16_FLAGS)
        if runnable:
            return Verdict(False, f"{missing}: bf16 would be emulated, slower than fp32; use fp32 or int8")
        return Verdict(
            False,
            f"{missing}, nor AVX-512 BW/VL/DQ or AVX-NE-CONVERT: PyTorch's oneDNN cannot run bf16 convolutions "
            "here; use fp32 or int8",
        )

    def check(self, precision: str, what: str = "precision") -> None:
        """Raise :class:`CpuPrecisionError` (one sentence) unless ``precision`` runs on this CPU."""
        v = self.verdict(precision)
        if not v.ok:
            raise CpuPrecisionError(f"{what} {precision} on this CPU: {v.why}")

    def auto(self, calibration: bool) -> str:
        """What ``precision="auto"`` runs on this CPU: int8 when calibration images are given
        (and int8 runs here), else bf16 where native, else fp32 -- the fastest path whose
        accuracy is measured (BENCHMARKS.md, CPU deployment)."""
        if calibration and self.verdict("int8").ok:
            return "int8"
        return "bf16" if self.verdict("bf16").ok else "fp32"

    @property
    def cpu_class(self) -> str:
        """A name for the CPU class the verdicts follow from."""
        if not self.x86:
            return self.arch
        e = self.effective
        parts = ["AVX-512" if "avx512bw" in e else "AVX2" if "avx2" in e else "pre-AVX2"]
        if "amx_tile" in e:
            parts.append("AMX")
        elif "avx512_bf16" in e:
            parts.append("BF16")
        if self.vnni:
            parts.append("VNNI")
        return " + ".join(parts)

    @property
    def isa_flags(self) -> list[str]:
        """The CPU's flags that decide the verdicts (AVX, AVX-512, VNNI, AMX families), sorted."""
        return sorted(f for f in self.flags if f.startswith(("avx", "amx")))

    def as_dict(self) -> dict:
        """For JSON reports (benchmark, accuracy): which CPU a figure was measured on."""
        return {
            "arch": self.arch,
            "class": self.cpu_class,
            "flags": self.isa_flags,
            "flags_from": self.source,
            "onednn_max_cpu_isa": self.cap,
            "int8_activation_bits": self.int8_bits if self.verdict("int8").ok else None,
            "precisions": {p: dataclasses.asdict(self.verdict(p)) for p in CPU_PRECISIONS},
        }

    def describe(self) -> str:
        """Lines a user reads: the class, the evidence, each precision's verdict."""
        cap = f"; oneDNN limited to {self.cap} by {self._cap_var()}" if self.cap else ""
        lines = [
            f"CPU: {self.arch}, class {self.cpu_class} (flags from {self.source}: "
            f"{' '.join(self.isa_flags) or 'none of AVX/AVX-512/AMX'}{cap})"
        ]
        for p in CPU_PRECISIONS:
            v = self.verdict(p)
            lines.append(f"  {p:5s} {'yes' if v.ok else 'no '}  {v.why}")
        return "\n".join(lines)


def _proc_flags() -> frozenset[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):  # x86 names them flags, arm64 features
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _torch_flags() -> frozenset[str]:
    """The flags torch.cpu reports (cpuinfo inside PyTorch), in /proc/cpuinfo's names."""
    checks = {
        "avx2": "_is_avx2_supported",
        "avx512bw": "_is_avx512_supported",
        "avx512_vnni": "_is_vnni_supported",
        "avx512_bf16": "_is_avx512_bf16_supported",
        "amx_tile": "_is_amx_tile_supported",
    }
    have = {flag for flag, fn in checks.items() if getattr(torch.cpu, fn, lambda: False)()}
    if "avx512bw" in have:
        have |= {"avx512f", "avx512vl", "avx512dq"}
    if "amx_tile" in have:
        have |= {"amx_int8", "amx_bf16"}
    return frozenset(have)


def detect() -> CpuCaps:
    """This process's CPU (not cached: tests change ONEDNN_MAX_CPU_ISA; :func:`cpu_caps` caches)."""
    arch = platform.machine().lower()
    flags, source = _proc_flags(), "/proc/cpuinfo"
    if flags is None:
        flags, source = _torch_flags(), "torch.cpu's feature report"
    cap = next((os.environ[v] for v in CAP_VARIABLES if os.environ.get(v)), None)
    if cap is not None and cap.upper() not in ONEDNN_ISA_FLAGS:
        raise ValueError(f"{CAP_VARIABLES[0]}={cap}: not an ISA name oneDNN knows ({', '.join(ONEDNN_ISA_FLAGS)})")
    return CpuCaps(arch=arch, flags=flags, source=source, cap=cap)


@functools.cache  # oneDNN reads its ISA cap once per process, and the CPU does not change
def cpu_caps() -> CpuCaps:
    """This process's :class:`CpuCaps` (read once)."""
    return detect()
