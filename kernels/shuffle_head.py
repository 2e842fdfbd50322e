"""The CSFCN head's 1x1 conv fused with its pixel shuffle (logits) or with the argmax (labels).

The head ends in a 1x1 conv 128 -> K * R * R (R = 8) followed by ``pixel_shuffle(R)``:
``out[k, R*y + i, R*x + j] = conv[k*R*R + i*R + j, y, x]`` (docs/architecture.md, Head). Both kernels
compute that conv as a GEMM over the input channels with fp32 accumulation:

* ``output="logits"``: the epilogue adds the bias and stores every value straight at its
  pixel-shuffled position -- the (B, K*R*R, h, w) intermediate never exists.
* ``output="labels"``: for each 1/8 pixel and each of its R*R sub-pixels the kernel loops
  over the K classes, keeps the running maximum and its index, and writes only the labels
  (B, R*h, R*w) -- full-resolution logits never touch memory. Ties go to the lowest class, as
  ``torch.argmax``; a NaN logit wins, as ``torch.argmax``.

x may be NCHW or channels-last; fp32 (IEEE fp32 dot products unless ``allow_tf32``), fp16
and bf16 storage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._common import (
    HAS_TRITON,
    _dot,
    check_contiguous,
    check_device,
    check_feature_map,
    check_float,
    check_triton,
    interpreted,
    launch,
    like_layout,
    new_output,
    next_pow2,
    tf32,
    uses_gpu_config,
)

OUTPUTS = ("logits", "labels")
LABEL_DTYPES = (torch.uint8, torch.int32, torch.int64)

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _shuffle_logits_kernel(
        x_ptr,
        w_ptr,
        b_ptr,
        out_ptr,
        CIN,
        h,
        w,
        N,
        x_sb,
        x_sc,
        x_sh,
        x_sw,
        w_sn,
        w_sc,
        o_sb,
        o_sk,
        o_sh,
        o_sw,
        R: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        IEEE: tl.constexpr,
        DOT_F32: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        pid_p = tl.program_id(0)
        pid_n = tl.program_id(1)
        b = tl.program_id(2)
        p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = p < h * w
        y = p // w
        x = p % w
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = n < N
        x_rows = x_ptr + b * x_sb + y * x_sh + x * x_sw
        acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, CIN, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            kmask = kk < CIN
            a = tl.load(x_rows[:, None] + (kk * x_sc)[None, :], mask=pmask[:, None] & kmask[None, :], other=0.0)
            wt = tl.load(
                w_ptr + (kk * w_sc)[:, None] + (n * w_sn)[None, :], mask=kmask[:, None] & nmask[None, :], other=0.0
            )
            acc = _dot(a, wt, acc, IEEE, DOT_F32)
        if HAS_BIAS:
            acc += tl.load(b_ptr + n, mask=nmask, other=0.0).to(tl.float32)[None, :]
        cls = n // (R * R)
        sub = n % (R * R)
        oy = R * y[:, None] + (sub // R)[None, :]
        ox = R * x[:, None] + (sub % R)[None, :]
        optr = out_ptr + b * o_sb + (cls * o_sk)[None, :] + oy * o_sh + ox * o_sw
        tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=pmask[:, None] & nmask[None, :])

    @triton.jit
    def _shuffle_labels_kernel(
        x_ptr,
        w_ptr,
        b_ptr,
        out_ptr,
        CIN,
        h,
        w,
        K,
        x_sb,
        x_sc,
        x_sh,
        x_sw,
        w_sn,
        w_sc,
        o_sb,
        o_sh,
        o_sw,
        R: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        IEEE: tl.constexpr,
        DOT_F32: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_CIN: tl.constexpr,
        BLOCK_S: tl.constexpr,
    ):
        pid_p = tl.program_id(0)
        b = tl.program_id(1)
        p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = p < h * w
        y = p // w
        x = p % w
        c = tl.arange(0, BLOCK_CIN)
        cmask = c < CIN
        a = tl.load(
            x_ptr + b * x_sb + (y * x_sh + x * x_sw)[:, None] + (c * x_sc)[None, :],
            mask=pmask[:, None] & cmask[None, :],
            other=0.0,
        )
        s = tl.arange(0, BLOCK_S)
        smask = s < R * R
        best = tl.full((BLOCK_P, BLOCK_S), float("-inf"), tl.float32)
        label = tl.zeros((BLOCK_P, BLOCK_S), dtype=tl.int32)
        for k in range(0, K):
            n = k * R * R + s
            wt = tl.load(
                w_ptr + (c * w_sc)[:, None] + (n * w_sn)[None, :], mask=cmask[:, None] & smask[None, :], other=0.0
            )
            logit = _dot(a, wt, tl.zeros((BLOCK_P, BLOCK_S), dtype=tl.float32), IEEE, DOT_F32)
            if HAS_BIAS:
                logit += tl.load(b_ptr + n, mask=smask, other=0.0).to(tl.float32)[None, :]
            # strictly greater: the first maximum wins; a NaN wins over any number (torch.argmax)
            take = (logit > best) | ((logit != logit) & (best == best))
            best = tl.where(take, logit, best)
            label = tl.where(take, k, label)
        oy = R * y[:, None] + (s // R)[None, :]
        ox = R * x[:, None] + (s % R)[None, :]
        tl.store(
            out_ptr + b * o_sb + oy * o_sh + ox * o_sw,
            label.to(out_ptr.dtype.element_ty),
            mask=pmask[:, None] & smask[None, :],
        )


def _check_args(name, x, weight, bias, upscale, output):
    check_triton(name)
    check_feature_map(name, "x", x)
    check_float(name, "x", x)
    check_float(name, "weight", weight)
    if weight.dim() == 4:
        if weight.shape[2:] != (1, 1):
            raise ValueError(f"{name}: weight {tuple(weight.shape)} must be a 1x1 conv kernel (N, Cin, 1, 1)")
        weight = weight.reshape(weight.shape[0], weight.shape[1])
    if weight.dim() != 2:
        raise ValueError(f"{name}: weight must be (N, Cin) or (N, Cin, 1, 1), got shape {tuple(weight.shape)}")
    check_contiguous(name, "weight", weight)
    n, cin = weight.shape
    if cin != x.shape[1]:
        raise ValueError(f"{name}: weight has {cin} input channels, x {tuple(x.shape)} has {x.shape[1]}")
    if upscale < 1 or n % (upscale * upscale):
        raise ValueError(f"{name}: weight's {n} outputs are not K * {upscale}**2 for the upscale factor {upscale}")
    if weight.dtype != x.dtype:
        raise TypeError(f"{name}: weight dtype {weight.dtype} differs from x dtype {x.dtype}")
    tensors = {"x": x, "weight": weight}
    if bias is not None:
        check_float(name, "bias", bias)
        if bias.shape != (n,):
            raise ValueError(f"{name}: bias must have shape ({n},), got {tuple(bias.shape)}")
        check_contiguous(name, "bias", bias)
        tensors["bias"] = bias
    # int32 offsets: every tensor the kernel addresses must hold < 2**31 elements. Logits write
    # B * K * R*R * h * w values; labels only B * R*R * h * w (the argmax over K stays on chip).
    b, _, h, w = x.shape
    written = b * (n if output == "logits" else upscale * upscale) * h * w
    for what, count in (("x", x.numel()), ("weight", weight.numel()), (f"the {output} output", written)):
        if count >= 2**31:
            raise ValueError(
                f"{name}: {what} has {count} elements (x {tuple(x.shape)}, {n} conv outputs); the kernel's int32 "
                "indexing needs < 2**31: split the batch or the image"
            )
    return weight, n // (upscale * upscale), tensors


def shuffle_head_launch_config(output: str, cin: int, upscale: int, dtype: torch.dtype, *, gpu: bool) -> dict:
    """Block sizes, warps and stages of a launch.

    GPU, logits: a 64-pixel x 64-output GEMM tile over 32-channel K steps, 8 warps, 2 stages
    (4 warps and 64-channel steps spill up to 10 KB per thread in fp32 on sm_80). GPU, labels:
    64 pixels (fp32: 32) x all input channels x the R*R sub-pixels of one class per step, 8
    warps; every program reads the whole weight, so larger pixel blocks cut L2 traffic (128
    compiles without spills in fp16/bf16 -- a tuning candidate for a GPU run). The compile gate
    (``python -m tools.aot``) checks that no path spills on sm_80/sm_90. The interpreter pays
    per program and per loop trip: large blocks there."""
    if output == "logits":
        if gpu:
            return {
                "BLOCK_P": 64,
                "BLOCK_N": 64,
                "BLOCK_K": max(16, min(32, next_pow2(cin))),
                "num_warps": 8,
                "num_stages": 2,
            }
        return {
            "BLOCK_P": 256,
            "BLOCK_N": 256,
            "BLOCK_K": max(16, min(256, next_pow2(cin))),
            "num_warps": 4,
            "num_stages": 1,
        }
    block_s = max(16, next_pow2(upscale * upscale))
    if gpu:
        return {
            "BLOCK_P": 32 if dtype == torch.float32 else 64,  # fp32 at 64 pixels sits at 254 registers on sm_80
            "BLOCK_CIN": max(16, next_pow2(cin)),
            "BLOCK_S": block_s,
            "num_warps": 8,
            "num_stages": 2,
        }
    return {"BLOCK_P": 1024, "BLOCK_CIN": max(16, next_pow2(cin)), "BLOCK_S": block_s, "num_warps": 4, "num_stages": 1}


def default_labels_dtype(k: int) -> torch.dtype:
    """The label dtype for K classes: uint8 while the class indices fit, else int32."""
    return torch.uint8 if k <= 256 else torch.int32


def shuffle_head(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    upscale: int = 8,
    output: str = "logits",
    labels_dtype: torch.dtype | None = None,
    allow_tf32: bool = False,
    block_p: int | None = None,
) -> torch.Tensor:
    """1x1 conv + ``pixel_shuffle(upscale)`` (logits, (B, K, R*h, R*w) in x's dtype and layout), or
    its argmax over the K classes (labels, (B, R*h, R*w), uint8 for K <= 256 else int32).

    x: (B, Cin, h, w); weight: (K*R*R, Cin) or (K*R*R, Cin, 1, 1); bias: (K*R*R,) or None. One
    float dtype, one device (CUDA, or CPU under TRITON_INTERPRET=1).
    """
    name = "shuffle_head"
    if output not in OUTPUTS:
        raise ValueError(f"{name}: output={output!r}; choose one of {OUTPUTS}")
    weight, k, tensors = _check_args(name, x, weight, bias, upscale, output)
    kernel = _shuffle_logits_kernel if output == "logits" else _shuffle_labels_kernel
    check_device(name, kernel, **tensors)
    bsz, cin, h, w = x.shape
    r = upscale
    ieee = x.dtype == torch.float32 and not allow_tf32
    # the interpreter's tl.dot multiplies bf16 bit patterns: it computes bf16 dots in fp32
    dot_f32 = x.dtype == torch.bfloat16 and interpreted(kernel)
    cfg = shuffle_head_launch_config(output, cin, r, x.dtype, gpu=uses_gpu_config(kernel))
    if block_p is not None:
        cfg["BLOCK_P"] = block_p
    bias_arg = bias if bias is not None else weight  # never read when HAS_BIAS is False
    if output == "logits":
        out = like_layout((bsz, k, r * h, r * w), x, x.dtype)
        if out.numel() == 0:
            return out
        n = weight.shape[0]
        grid = (triton.cdiv(h * w, cfg["BLOCK_P"]), triton.cdiv(n, cfg["BLOCK_N"]), bsz)
        args = (x, weight, bias_arg, out, cin, h, w, n, *x.stride(), *weight.stride(), *out.stride())
        launch(_shuffle_logits_kernel, grid, args, R=r, HAS_BIAS=bias is not None, IEEE=ieee, DOT_F32=dot_f32, **cfg)
        return out
    labels_dtype = labels_dtype or default_labels_dtype(k)
    if labels_dtype not in LABEL_DTYPES:
        raise TypeError(f"{name}: labels_dtype {labels_dtype}; choose one of {LABEL_DTYPES}")
    if labels_dtype == torch.uint8 and k > 256:
        raise TypeError(f"{name}: {k} classes do not fit labels_dtype=torch.uint8")
    out = new_output(torch.empty((bsz, r * h, r * w), dtype=labels_dtype, device=x.device))
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(h * w, cfg["BLOCK_P"]), bsz)
    args = (x, weight, bias_arg, out, cin, h, w, k, *x.stride(), *weight.stride(), *out.stride())
    launch(_shuffle_labels_kernel, grid, args, R=r, HAS_BIAS=bias is not None, IEEE=ieee, DOT_F32=dot_f32, **cfg)
    return out


def shuffle_labels(conv_out: torch.Tensor, upscale: int = 8, labels_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Argmax over K per sub-pixel of a (B, K*R*R, h, w) conv output, pixel-shuffled: (B, R*h, R*w).

    Plain PyTorch; no float tensor at full resolution is created (only the labels).
    """
    bsz, n, h, w = conv_out.shape
    r = upscale
    k = n // (r * r)
    if not conv_out.is_contiguous() and conv_out.is_contiguous(memory_format=torch.channels_last):
        # channels-last: (B, h, w, K, R*R) is a view; reduce over K, the sub-pixels stay contiguous
        idx = conv_out.permute(0, 2, 3, 1).reshape(bsz, h, w, k, r, r).argmax(dim=3)  # (B, h, w, R, R)
        idx = idx.permute(0, 1, 3, 2, 4).reshape(bsz, r * h, r * w)
    else:
        idx = conv_out.reshape(bsz, k, r, r, h, w).argmax(dim=1)  # (B, R, R, h, w)
        idx = idx.permute(0, 3, 1, 4, 2).reshape(bsz, r * h, r * w)
    return idx.to(labels_dtype or default_labels_dtype(k))


def shuffle_head_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    upscale: int = 8,
    output: str = "logits",
    labels_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The same function in plain PyTorch (conv in fp32, fp64 for fp64 inputs, then pixel shuffle or
    argmax). The conv
    runs in true fp32 on a GPU too: cuDNN's default TF32 would put the reference 2.6e-4..7.7e-4
    (rel. L2) from fp32 and flip labels the kernel gets right."""
    if output not in OUTPUTS:
        raise ValueError(f"shuffle_head_reference: output={output!r}; choose one of {OUTPUTS}")
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32  # fp64 kept for exactness checks
    w4 = weight.reshape(weight.shape[0], weight.shape[1], 1, 1).to(ct)
    with tf32(False):
        y = F.conv2d(x.to(ct), w4, None if bias is None else bias.to(ct))
    if output == "labels":
        return shuffle_labels(y, upscale, labels_dtype)
    fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
    return F.pixel_shuffle(y, upscale).to(x.dtype).contiguous(memory_format=fmt)
