"""Tolerances from the arithmetic: a result is compared with the same function in fp64, and bound
by what the precision it runs in costs on the very same inputs (the fp32 reference's own distance
to fp64), not by a fixed number. Shared by the kernel and the optimised-model tests."""

from __future__ import annotations

import torch


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def assert_near_fp64(out: torch.Tensor, reference, *inputs: torch.Tensor, k: float = 3.0, **kw) -> None:
    """``out`` is as close to the fp64 function as the fp32 reference is, within a factor ``k``.

    The bound is the arithmetic's own: the reference computes the same sums from the same inputs
    in fp32 and rounds the result to the storage dtype, so its distance to the same function in
    fp64 (``reference`` on the inputs converted exactly to fp64) is the rounding this precision
    costs on these very inputs: ~u*sqrt(n) for fp32 sums of n terms (u = 2^-24), ~u/sqrt(12) for
    an fp16 (u = 2^-11) or bf16 (u = 2^-8) stored output. A kernel doing the same arithmetic in
    another order has rounding of the same size; errors of thousands of elements concentrate, so
    the two distances agree closely (measured 0.56x..2.09x over the kernel tests). k = 3 leaves
    room for the interpreter's truncating fp32 -> bf16 conversion (error RMS exactly 2x
    round-to-nearest's: sqrt(1/4 + 1/12) vs sqrt(1/12)). The 2^-24 floor covers a result the
    reference gets exactly. Real slips land beyond it: scores rounded to fp16/bf16 before the
    softmax in pooled attention measure 4.0x and 5.6x; TF32 in an fp32 path ~1e-3 vs ~1e-6."""
    truth = reference(*(t.double() for t in inputs), **kw)
    own = rel_l2(reference(*inputs, **kw), truth)
    err = rel_l2(out, truth)
    assert err <= k * own + 2**-24, f"relative L2 to fp64 {err:.2e} > {k} x the reference's own {own:.2e}"


def tf32_round(t: torch.Tensor) -> torch.Tensor:
    """fp32 values rounded to TF32's 10-bit mantissa (to nearest, ties away from zero, as the GPU's
    fp32 -> tf32 conversion does): what a TF32 dot product multiplies."""
    bits = t.float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).reshape(t.shape)
