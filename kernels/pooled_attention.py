"""CFC's attention over the pooled positions in one pass (docs/architecture.md, CFC step 4).

For every query pixel n of a (B, D, H, W) query map, with keys (B, D, S) and values
(B, C, S) at the S pooled positions (S = 100 at an aspect ratio of 2; S grows with the
input's aspect ratio, about 50 per unit: 150 at 512x1536, 500 for a 10:1 panorama):

    context[:, n] = sum_s softmax_s(query[:, n] . key[:, s]) * value[:, s]

No 1/sqrt(D) scaling (as upstream). One program takes a block of queries and a block of
value channels and walks the S positions tile by tile with an online softmax (running
maximum and sum, the accumulator rescaled when the maximum grows), so registers and shared
memory are bounded by the tile sizes, not by S: every S is launchable. The (N, S) attention
matrix never touches memory. The output (B, C, H, W) follows the query map's layout (NCHW or
channels-last). fp32 (IEEE dots unless ``allow_tf32``), fp16, bf16: the unnormalised
probabilities are cast to the value dtype before the PV product (fp32 accumulation), as
flash attention does.
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
    launch,
    like_layout,
    next_pow2,
    tf32,
    uses_gpu_config,
)

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
        pid_n = tl.program_id(0)
        pid_c = tl.program_id(1)
        b = tl.program_id(2)
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = n < H * W
        y = n // W
        x = n % W
        d = tl.arange(0, BLOCK_D)
        dmask = d < D
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        q = tl.load(
            q_ptr + b * q_sb + (y * q_sh + x * q_sw)[:, None] + (d * q_sd)[None, :],
            mask=nmask[:, None] & dmask[None, :],
            other=0.0,
        )
        m_i = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_N,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        for s0 in range(0, S, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            smask = s < S
            k = tl.load(
                k_ptr + b * k_sb + (d * k_sd)[:, None] + (s * k_ss)[None, :],
                mask=dmask[:, None] & smask[None, :],
                other=0.0,
            )
            scores = _dot(q, k, tl.zeros((BLOCK_N, BLOCK_S), dtype=tl.float32), IEEE, DOT_F32)
            scores = tl.where(smask[None, :], scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))  # finite: every tile holds a valid position
            alpha = tl.exp(m_i - m_new)  # 0 on the first tile (m_i = -inf)
            p = tl.exp(scores - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(
                v_ptr + b * v_sb + (s * v_ss)[:, None] + (c * v_sc)[None, :],
                mask=smask[:, None] & cmask[None, :],
                other=0.0,
            )
            pv = p if DOT_F32 else p.to(v_ptr.dtype.element_ty)  # fp32 probabilities only where dots run in fp32
            acc = _dot(pv, v, acc * alpha[:, None], IEEE, DOT_F32)
            m_i = m_new
        ctx = acc / l_i[:, None]
        tl.store(
            out_ptr + b * o_sb + (y * o_sh + x * o_sw)[:, None] + (c * o_sc)[None, :],
            ctx.to(out_ptr.dtype.element_ty),
            mask=nmask[:, None] & cmask[None, :],
        )


def pooled_attention_launch_config(d: int, s: int, c: int, dtype: torch.dtype, *, gpu: bool) -> dict:
    """Block sizes, warps and stages of a launch. GPU: 64-query (fp32: 32) x 64-position x
    64-channel tiles, 8 warps, 2 stages -- no spills and at most 48 KiB of shared memory in every
    dtype, whatever S (the compile gate, ``python -m tools.aot``, checks both on sm_80 and sm_90;
    64 queries with 4 warps spill 0.4-0.8 KB per thread in fp32). The interpreter pays per
    program and per loop trip, so it takes whole rows of channels and long position tiles."""
    if gpu:
        return {
            "BLOCK_N": 32 if dtype == torch.float32 else 64,  # fp32 IEEE dots run on FMA units: more registers
            "BLOCK_D": max(16, next_pow2(d)),
            "BLOCK_S": 64,
            "BLOCK_C": 64,
            "num_warps": 8,
            "num_stages": 2,
        }
    return {
        "BLOCK_N": 256,
        "BLOCK_D": max(16, next_pow2(d)),
        "BLOCK_S": max(16, min(128, next_pow2(s))),
        "BLOCK_C": max(16, min(256, next_pow2(c))),
        "num_warps": 4,
        "num_stages": 1,
    }


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
    channels-last, key and value contiguous; any S >= 1. The output follows query's layout.
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
    if s < 1:
        raise ValueError(f"{name}: key and value hold no pooled positions (S = 0)")
    check_device(name, _pooled_attention_kernel, query=query, key=key, value=value)
    c = value.shape[1]
    out = like_layout((bsz, c, h, w), query, query.dtype)
    if out.numel() == 0:
        return out
    if max(query.numel(), key.numel(), value.numel(), out.numel()) >= 2**31:
        raise ValueError(f"{name}: tensors of 2**31 or more elements need int64 indexing")
    cfg = pooled_attention_launch_config(d, s, c, query.dtype, gpu=uses_gpu_config(_pooled_attention_kernel))
    if block_n is not None:
        cfg["BLOCK_N"] = block_n
    grid = (triton.cdiv(h * w, cfg["BLOCK_N"]), triton.cdiv(c, cfg["BLOCK_C"]), bsz)
    args = (query, key, value, out, d, s, c, h, w, *query.stride(), *key.stride(), *value.stride(), *out.stride())
    launch(
        _pooled_attention_kernel,
        grid,
        args,
        IEEE=query.dtype == torch.float32 and not allow_tf32,
        # the interpreter's tl.dot multiplies bf16 bit patterns: it computes bf16 dots in fp32
        DOT_F32=query.dtype == torch.bfloat16 and interpreted(_pooled_attention_kernel),
        **cfg,
    )
    return out


def pooled_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The same function in plain PyTorch (fp32, TF32 off on a GPU), as the twin's CFC computes it."""
    bsz, d, h, w = query.shape
    ct = torch.float64 if query.dtype == torch.float64 else torch.float32  # fp64 kept for exactness checks
    q = query.to(ct).reshape(bsz, d, h * w).permute(0, 2, 1)  # B N D
    with tf32(False):
        attn = torch.softmax(torch.matmul(q, key.to(ct)), dim=-1)  # B N S
        ctx = torch.bmm(value.to(ct), attn.permute(0, 2, 1)).reshape(bsz, -1, h, w)
    fmt = torch.contiguous_format if query.is_contiguous() else torch.channels_last
    return ctx.to(query.dtype).contiguous(memory_format=fmt)
