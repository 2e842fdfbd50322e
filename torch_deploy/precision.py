"""Which precision runs where: the one place that decides it, for every tool.

``optimize`` (the graph), ``Predictor`` and so ``predict`` (what a user runs), ``benchmark``,
``accuracy`` and ``compare`` all ask here; none holds its own list of values or its own rule.
Two questions, two answers:

* :func:`refusal` -- may a user run ``precision`` on this device? One sentence why not, or None.
  fp16 is the GPU precision and int8 the CPU one (oneDNN); bf16 and int8 on a CPU follow its
  instruction set (:mod:`torch_deploy.cpu_caps`: refused where they would be emulated).
* :func:`plan` -- what runs for a request, ``"auto"`` included: the precision, and whether the
  folded graph of ``optimize`` runs or the twin itself. ``"auto"`` is the fastest path whose
  accuracy is measured (BENCHMARKS.md, CPU deployment): on a CPU int8 when calibration images
  are given, else bf16 where native, else fp32, always through ``optimize``; on CUDA fp32 (the
  accuracy of fp16 on a GPU is not measured yet).

``optimize`` itself asks :func:`computable`: it builds any precision a device can compute, fp16
on a CPU included (the tests check GPU bounds that way), and refuses only what depends on the
CPU's instruction set.
"""

from __future__ import annotations

import dataclasses

import torch

from torch_deploy.cpu_caps import CpuPrecisionError, cpu_caps

# The compute dtype of each float precision (fp64: optimize's exactness checks only).
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
# What a user may ask for (every --precision), and what "auto" means, in one sentence for --help.
CHOICES = ("auto", "fp32", "fp16", "bf16", "int8")
AUTO_HELP = (
    "auto: the fastest path whose accuracy is measured (BENCHMARKS.md, CPU deployment): on a CPU optimize "
    "in int8 when calibration images are given, else in bf16 where the CPU has native bf16, else in fp32; "
    "on CUDA fp32. fp16 needs CUDA; int8 (CPU, oneDNN) needs calibration images"
)


class PrecisionError(ValueError):
    """A precision this device does not run; the message says why and what to use instead."""


def _check_known(precision: str, allowed) -> None:
    if precision not in allowed:
        raise ValueError(f"precision={precision!r}: choose one of {sorted(allowed)}")


def refusal(precision: str, device) -> str | None:
    """Why a user should not run ``precision`` on ``device`` (one sentence), or None."""
    _check_known(precision, CHOICES[1:])
    device = torch.device(device)
    if device.type == "cuda":
        return "int8 is the CPU path (oneDNN int8); on CUDA use fp16 or bf16" if precision == "int8" else None
    if precision == "fp16":
        return f"fp16 needs a CUDA device; on {device} use fp32, bf16 or int8"
    verdict = cpu_caps().verdict(precision)
    return None if verdict.ok else verdict.why


def check(precision: str, device, what: str = "precision") -> None:
    """Raise (one sentence) unless a user may run ``precision`` on ``device``: on a CPU whose
    instruction set rules it out, :class:`torch_deploy.cpu_caps.CpuPrecisionError`."""
    why = refusal(precision, device)
    if why is None:
        return
    if torch.device(device).type == "cpu" and precision in ("bf16", "int8"):
        raise CpuPrecisionError(f"{what} {precision} on this CPU: {why}")
    raise PrecisionError(f"{what} {precision}: {why}")


def computable(precision: str, device, what: str = "optimize: precision") -> None:
    """What ``optimize`` builds: every float precision on any device; bf16 and int8 on a CPU only
    where its instruction set runs them (:func:`check`); int8 only on a CPU."""
    _check_known(precision, (*DTYPES, "int8"))
    device = torch.device(device)
    if device.type == "cpu" and precision in ("bf16", "int8"):
        check(precision, device, what)
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"optimize: precision='int8' is the CPU path (oneDNN); the model is on {device}")


def activation_dtype(precision: str) -> torch.dtype:
    """The dtype ``optimize(precision=...)`` computes in between convolutions: fp32 for int8
    (measured faster than bf16 there: each int8 conv quantizes its input from fp32 without a
    conversion pass; torch_deploy.quantize)."""
    return torch.float32 if precision == "int8" else DTYPES[precision]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What runs for a request: ``precision`` (never "auto"), through ``optimize``'s folded graph
    (``optimized``) or the twin itself (the reference, fp32 on a CPU unless asked otherwise)."""

    precision: str
    optimized: bool

    @property
    def path(self) -> str:
        """e.g. "optimize-bf16", "twin-fp32", "optimize-int8"."""
        return f"{'optimize' if self.optimized else 'twin'}-{self.precision}"


def plan(precision: str, device, *, calibration: bool = False, fast: bool | None = None) -> Plan:
    """The one policy. ``calibration``: calibration images are at hand (int8, and "auto" on a CPU).
    ``fast``: on a CPU in fp32, run ``optimize``'s graph instead of the twin (1.4x, BENCHMARKS.md)."""
    _check_known(precision, CHOICES)
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    if precision == "auto":
        precision = "fp32" if on_cuda else cpu_caps().auto(calibration)
        fast = fast if fast is not None else not on_cuda
    check(precision, device)
    return Plan(precision, optimized=on_cuda or precision in ("bf16", "int8") or bool(fast))
