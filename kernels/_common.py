"""Launcher helpers shared by the kernels: Triton availability, device and layout checks.

Every launcher in :mod:`kernels` validates its arguments with these before launching, so a
wrong shape, dtype, device or memory layout is a ``ValueError``/``TypeError`` naming the
argument, not a Triton compile error or a silent wrong answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import numpy as np
import torch

try:  # Triton is optional: the pure-PyTorch references work without it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton = None
    HAS_TRITON = False


def _interpreter_scalar_index_compat() -> bool:
    """Let Triton 3.6's CPU interpreter loop over a runtime int with numpy >= 2.5.

    The interpreter holds every scalar argument as a shape-(1,) array and gives its tensors
    ``__index__ = int(data)``; numpy 2.5 refuses ``int()`` of an array with ndim > 0, so
    ``for k in range(0, CIN, BLOCK)`` raises inside every kernel (Triton 3.7+ squeezes first).
    Re-set ``__index__`` the way the newer interpreter does, and only under the interpreter of an
    affected Triton: compiled kernels never go through it. Returns whether it patched."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    from triton.runtime import interpreter

    patch = getattr(interpreter, "_patch_lang_tensor", None)
    try:
        int(np.array([1]))
        return False  # numpy still converts 1-element arrays: nothing to fix
    except TypeError:
        pass
    if patch is None or getattr(patch, "csfcn_compat", False):
        return False

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched.csfcn_compat = True
    interpreter._patch_lang_tensor = patched
    return True


if HAS_TRITON:
    _interpreter_scalar_index_compat()

    @triton.jit
    def _dot(a, b, acc, IEEE: tl.constexpr, DOT_F32: tl.constexpr):
        if DOT_F32:  # Triton 3.9's interpreter multiplies bf16 bit patterns in tl.dot: go through fp32
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE:
            return tl.dot(a, b, acc, input_precision="ieee")
        else:
            return tl.dot(a, b, acc)


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """cuDNN convolutions and cuBLAS matmuls with TF32 on or off within the block, restored after.

    PyTorch runs CUDA fp32 convolutions in TF32 (10-bit mantissa, rel. rounding 2^-11 ~ 4.9e-4
    per product) unless told otherwise, so an "fp32" reference or benchmark row on a GPU is a
    TF32 one by default. The one switch every fp32 reference, benchmark row and ``optimize``'s fp32
    path goes through. No effect on CPU."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def interpreted(kernel) -> bool:
    """True when ``kernel`` runs under Triton's CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return type(kernel).__name__ == "InterpretedFunction"


def check_triton(name: str) -> None:
    if not HAS_TRITON:
        raise RuntimeError(f"{name}: Triton is not installed; use the *_reference function or `pip install triton`")


def check_device(name: str, kernel, **tensors: torch.Tensor) -> torch.device:
    """All tensors on one device; CUDA, or CPU when the kernel runs under the interpreter (or
    ``meta`` while :func:`record_launches` is active)."""
    devices = {k: t.device for k, t in tensors.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        raise ValueError(f"{name}: tensors are on different devices: {devices}")
    if first.type == "meta" and _RECORDER is not None:
        return first
    if first.type == "cpu" and not interpreted(kernel):
        raise ValueError(
            f"{name}: CPU tensors need Triton's interpreter (set TRITON_INTERPRET=1 before importing kernels); "
            "otherwise pass CUDA tensors or call the *_reference function"
        )
    if first.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: unsupported device {first}; Triton kernels run on CUDA")
    return first


def check_float(name: str, arg: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: {arg} has dtype {t.dtype}; expected one of float32, float16, bfloat16")


def check_ndim(name: str, arg: str, t: torch.Tensor, ndim: int, what: str) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name}: {arg} must be {what} ({ndim}-D), got shape {tuple(t.shape)}")


def check_feature_map(name: str, arg: str, t: torch.Tensor) -> None:
    """A (B, C, H, W) tensor, dense in NCHW or in channels-last (the kernels take its strides)."""
    check_ndim(name, arg, t, 4, "(B, C, H, W)")
    if not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(
            f"{name}: {arg} (shape {tuple(t.shape)}, strides {t.stride()}) is neither NCHW-contiguous nor "
            "channels-last-contiguous; call .contiguous() or .contiguous(memory_format=torch.channels_last)"
        )


def check_contiguous(name: str, arg: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name}: {arg} (shape {tuple(t.shape)}, strides {t.stride()}) must be contiguous")


def like_layout(shape, ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An empty 4-D tensor of ``shape`` in ``ref``'s memory format (channels-last if ``ref`` is)."""
    channels_last = not ref.is_contiguous() and ref.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return new_output(torch.empty(shape, dtype=dtype, device=ref.device, memory_format=fmt))


_POISON = False


@contextlib.contextmanager
def poison_outputs(enabled: bool = True) -> Iterator[None]:
    """Within the block, every output a launcher allocates is filled with NaN (float) or the
    dtype's largest integer (labels) before the kernel runs, so an element the kernel fails to
    write shows up in a comparison instead of passing on whatever the allocator left there."""
    global _POISON
    prev, _POISON = _POISON, bool(enabled)
    try:
        yield
    finally:
        _POISON = prev


def new_output(t: torch.Tensor) -> torch.Tensor:
    """A freshly allocated kernel output, poisoned inside :func:`poison_outputs`."""
    if _POISON and t.device.type != "meta" and t.numel():
        t.fill_(float("nan") if t.is_floating_point() else torch.iinfo(t.dtype).max)
    return t


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# ----------------------------------------------------------------------------- launch configuration
# Each launcher picks its block sizes, warps and stages in one place (``*_launch_config``): one
# choice for a GPU launch, and a larger-block one for Triton's CPU interpreter, which pays per
# program.  ``gpu_launch_config()`` makes the launchers take the GPU choice under the interpreter
# too, so that the tests run what a GPU launch compiles (docs/gpu_readiness.md).
_FORCE_GPU_CONFIG = False


@contextlib.contextmanager
def gpu_launch_config(enabled: bool = True) -> Iterator[None]:
    """Within the block, launchers use the block sizes/warps/stages/flags of a CUDA launch even
    when the kernels run under the interpreter (what the CPU tests force to check the GPU path)."""
    global _FORCE_GPU_CONFIG
    prev, _FORCE_GPU_CONFIG = _FORCE_GPU_CONFIG, bool(enabled)
    try:
        yield
    finally:
        _FORCE_GPU_CONFIG = prev


def uses_gpu_config(kernel) -> bool:
    """Whether a launch of ``kernel`` now takes the GPU launch configuration."""
    return _FORCE_GPU_CONFIG or not interpreted(kernel)


@dataclasses.dataclass
class Launch:
    """One kernel launch as a launcher would issue it: the kernel, its grid, its arguments (tensors
    included, as the launcher passed them) and its compile-time meta-parameters."""

    kernel: object
    grid: tuple
    args: tuple
    meta: dict

    @property
    def name(self) -> str:
        fn = getattr(self.kernel, "fn", self.kernel)
        return getattr(fn, "__name__", str(fn))


_RECORDER: list[Launch] | None = None


@contextlib.contextmanager
def record_launches() -> Iterator[list[Launch]]:
    """Collect the launches the launchers would make, without running any kernel.

    Launchers accept ``meta`` tensors inside the block (and return their outputs unwritten), so a
    whole model can be traced at any input size for free: :mod:`kernels.aot` compiles what it
    records for real GPU targets.
    """
    global _RECORDER
    prev, _RECORDER = _RECORDER, []
    try:
        yield _RECORDER
    finally:
        _RECORDER = prev


def recording() -> bool:
    return _RECORDER is not None


def launch(kernel, grid: tuple, args: tuple, **meta) -> None:
    """``kernel[grid](*args, **meta)``, or a record of it inside :func:`record_launches`.

    Under the interpreter ``num_warps``/``num_stages`` are dropped (they mean nothing there)."""
    if _RECORDER is not None:
        _RECORDER.append(Launch(kernel, tuple(grid), tuple(args), dict(meta)))
        return
    if interpreted(kernel):
        meta = {k: v for k, v in meta.items() if k not in ("num_warps", "num_stages")}
    kernel[grid](*args, **meta)
