"""CFC's attention over the pooled positions in one pass (MODEL.md, CFC step 4).

For every query pixel n of a (B, D, H, W) query map, with keys (B, D, S) and values
(B, C, S) at the S pooled positions (S = 100 at 32x64, at most a few hundred):

    context[:, n] = sum_s softmax_s(query[:, n] . key[:, s]) * value[:, s]

No 1/sqrt(D) scaling (as upstream). One program takes a block of queries, computes its
(BLOCK_N, S) scores with one dot product, the softmax in fp32 in registers, and multiplies
by the values channel block after channel block -- the (N, S) attention matrix never
touches memory. The output (B, C, H, W) follows the query map's layout (NCHW or
channels-last). fp32 (IEEE dots unless ``allow_tf32``), fp16, bf16.
"""

from __future__ import annotations

import torch

from kernels._common import (
    HAS_TRITON,
    _dot,
    check_contiguous,
    check_device,
    check_feature_map,
    check_float,
    check_ndim,
    check_triton,
    interpreted,
    like_layout,
    next_pow2,
)

MAX_POSITIONS = 1024  # scores of one query block stay in registers

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _pooled_attention_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        out_ptr,
        D,
        S,
        C,
        H,
        W,
        q_sb,
        q_sd,
        q_sh,
        q_sw,
        k_sb,
        k_sd,
        k_ss,
        v_sb,
        v_sc,
        v_ss,
        o_sb,
        o_sc,
        o_sh,
        o_sw,
        IEEE: tl.constexpr,
        DOT_F32: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = tl.program_id(1)
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = n < H * W
        y = n // W
        x = n % W
        d = tl.arange(0, BLOCK_D)
        dmask = d < D
        s = tl.arange(0, BLOCK_S)
        smask = s < S
        q = tl.load(
            q_ptr + b * q_sb + (y * q_sh + x * q_sw)[:, None] + (d * q_sd)[None, :],
            mask=nmask[:, None] & dmask[None, :],
            other=0.0,
        )
        k = tl.load(
            k_ptr + b * k_sb + (d * k_sd)[:, None] + (s * k_ss)[None, :],
            mask=dmask[:, None] & smask[None, :],
            other=0.0,
        )
        scores = _dot(q, k, tl.zeros((BLOCK_N, BLOCK_S), dtype=tl.float32), IEEE, DOT_F32)
        scores = tl.where(smask[None, :], scores, float("-inf"))
        m = tl.max(scores, axis=1)
        e = tl.exp(scores - m[:, None])
        p = e / tl.sum(e, axis=1)[:, None]
        pv = p if DOT_F32 else p.to(v_ptr.dtype.element_ty)  # fp32 probabilities only where dots run in fp32
        obase = out_ptr + b * o_sb + (y * o_sh + x * o_sw)[:, None]
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            cmask = c < C
            v = tl.load(
                v_ptr + b * v_sb + (s * v_ss)[:, None] + (c * v_sc)[None, :],
                mask=smask[:, None] & cmask[None, :],
                other=0.0,
            )
            ctx = _dot(pv, v, tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32), IEEE, DOT_F32)
            tl.store(
                obase + (c * o_sc)[None, :], ctx.to(out_ptr.dtype.element_ty), mask=nmask[:, None] & cmask[None, :]
            )


def pooled_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    allow_tf32: bool = False,
    block_n: int | None = None,
) -> torch.Tensor:
    """softmax_S(query . key) @ value^T per pixel: (B, D, H, W), (B, D, S), (B, C, S) -> (B, C, H, W).

    One float dtype, one device (CUDA, or CPU under TRITON_INTERPRET=1); query NCHW or
    channels-last, key and value contiguous; S <= 1024. The output follows query's layout.
    """
    name = "pooled_attention"
    check_triton(name)
    check_feature_map(name, "query", query)
    check_ndim(name, "key", key, 3, "(B, D, S)")
    check_ndim(name, "value", value, 3, "(B, C, S)")
    for arg, t in (("query", query), ("key", key), ("value", value)):
        check_float(name, arg, t)
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise TypeError(f"{name}: query, key, value must share one dtype: {query.dtype}, {key.dtype}, {value.dtype}")
    check_contiguous(name, "key", key)
    check_contiguous(name, "value", value)
    bsz, d, h, w = query.shape
    if key.shape[:2] != (bsz, d):
        raise ValueError(f"{name}: key {tuple(key.shape)} must be (B, D, S) = ({bsz}, {d}, S) for query {query.shape}")
    s = key.shape[2]
    if value.shape[0] != bsz or value.shape[2] != s:
        raise ValueError(f"{name}: value {tuple(value.shape)} must be (B, C, S) = ({bsz}, C, {s})")
    if not 1 <= s <= MAX_POSITIONS:
        raise ValueError(f"{name}: {s} pooled positions; the kernel takes 1..{MAX_POSITIONS}")
    check_device(name, _pooled_attention_kernel, query=query, key=key, value=value)
    c = value.shape[1]
    out = like_layout((bsz, c, h, w), query, query.dtype)
    if out.numel() == 0:
        return out
    if max(query.numel(), value.numel(), out.numel()) >= 2**31:
        raise ValueError(f"{name}: tensors of 2**31 or more elements need int64 indexing")
    interp = interpreted(_pooled_attention_kernel)
    block_n = block_n or (256 if interp else 64)
    grid = (triton.cdiv(h * w, block_n), bsz)
    _pooled_attention_kernel[grid](
        query,
        key,
        value,
        out,
        d,
        s,
        c,
        h,
        w,
        *query.stride(),
        *key.stride(),
        *value.stride(),
        *out.stride(),
        IEEE=query.dtype == torch.float32 and not allow_tf32,
        DOT_F32=query.dtype == torch.bfloat16 and interp,
        BLOCK_N=block_n,
        BLOCK_D=max(16, next_pow2(d)),
        BLOCK_S=max(16, next_pow2(s)),
        BLOCK_C=256 if interp else 64,
    )
    return out


def pooled_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The same function in plain PyTorch (fp32), as the twin's CFC computes it."""
    bsz, d, h, w = query.shape
    ct = torch.float64 if query.dtype == torch.float64 else torch.float32  # fp64 kept for exactness checks
    q = query.to(ct).reshape(bsz, d, h * w).permute(0, 2, 1)  # B N D
    attn = torch.softmax(torch.matmul(q, key.to(ct)), dim=-1)  # B N S
    ctx = torch.bmm(value.to(ct), attn.permute(0, 2, 1)).reshape(bsz, -1, h, w)
    fmt = torch.contiguous_format if query.is_contiguous() else torch.channels_last
    return ctx.to(query.dtype).contiguous(memory_format=fmt)
