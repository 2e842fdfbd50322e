"""SFC sampling and gating in one pass (docs/architecture.md, SFC steps 4-7).

Given the calibrated 1/8 features ``cp`` (B, C, H, W), the spatial branch ``sp`` -- either at
cp's size or at its own lower resolution (the 1/32 map; then the align-corners bilinear
resize to (H, W) is fused: every full-resolution tap is itself 4 low-resolution reads) -- and
the offset/gate map ``r`` (B, 4G + 2, H, W), compute for every group g of C/G channels

    out = sample(sp_g, sp offsets of g) * (1 + tanh(r[4G]))
        + sample(cp_g, cp offsets of g) * (1 + tanh(r[4G + 1]))

where ``sample`` is ``grid_sample(bilinear, zeros, align_corners=True)`` at the base grid
``linspace(-1, 1)`` plus ``offset / (W, H)``. Offsets channels: [0:2G] cp (dx, dy per group),
[2G:4G] sp, then the two gates. The output is written once; nothing in between touches
memory. Coordinates and arithmetic are fp32 whatever the storage dtype (fp32/fp16/bf16);
every map may be NCHW or channels-last (the kernel takes strides); the output follows cp.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._common import (
    HAS_TRITON,
    check_device,
    check_feature_map,
    check_float,
    check_triton,
    launch,
    like_layout,
    next_pow2,
    uses_gpu_config,
)

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _linspace_m1p1(i, n):
        """``torch.linspace(-1, 1, n)[i]`` in fp32, computed the way ATen's CPU kernel does."""
        nf = n.to(tl.float32)
        fi = i.to(tl.float32)
        step = 2.0 / tl.maximum(nf - 1.0, 1.0)  # n == 1 is handled below
        v = tl.where(i < n // 2, -1.0 + step * fi, 1.0 - step * (nf - 1.0 - fi))
        return tl.where(n == 1, -1.0, v)

    @triton.jit
    def _tap(base, yi, xi, n_h, n_w, s_h, s_w, coff, cmask, valid):
        """One full-resolution tap: (BLOCK_P, BLOCK_C) fp32 values at integer (yi, xi), 0 where invalid."""
        ptr = base + (yi * s_h + xi * s_w)[:, None] + coff[None, :]
        return tl.load(ptr, mask=valid[:, None] & cmask[None, :], other=0.0).to(tl.float32)

    @triton.jit
    def _up_index(i, scale, n_low):
        """Align-corners source index of full-resolution index ``i``: (i0, i1, lambda0, lambda1)."""
        src = scale * i.to(tl.float32)
        i0 = tl.minimum(src.to(tl.int32), n_low - 1)
        i1 = tl.where(i0 < n_low - 1, i0 + 1, i0)
        l1 = tl.minimum(tl.maximum(src - i0.to(tl.float32), 0.0), 1.0)
        return i0, i1, 1.0 - l1, l1

    @triton.jit
    def _up_tap(base, yi, xi, h_low, w_low, scale_y, scale_x, s_h, s_w, coff, cmask, valid):
        """A full-resolution tap of the align-corners upsampled map, read as 4 low-resolution taps."""
        yc = tl.where(valid, yi, 0)
        xc = tl.where(valid, xi, 0)
        y0, y1, ly0, ly1 = _up_index(yc, scale_y, h_low)
        x0, x1, lx0, lx1 = _up_index(xc, scale_x, w_low)
        top = _tap(base, y0, x0, h_low, w_low, s_h, s_w, coff, cmask, valid) * lx0[:, None]
        top += _tap(base, y0, x1, h_low, w_low, s_h, s_w, coff, cmask, valid) * lx1[:, None]
        bot = _tap(base, y1, x0, h_low, w_low, s_h, s_w, coff, cmask, valid) * lx0[:, None]
        bot += _tap(base, y1, x1, h_low, w_low, s_h, s_w, coff, cmask, valid) * lx1[:, None]
        return top * ly0[:, None] + bot * ly1[:, None]

    @triton.jit
    def _sample(
        base, ix, iy, H, W, h_low, w_low, scale_y, scale_x, s_h, s_w, coff, cmask, pmask, UPSAMPLE: tl.constexpr
    ):
        """Bilinear, zero padding, at pixel coordinates (ix, iy) of an (H, W) map: (BLOCK_P, BLOCK_C) fp32."""
        # Far-away coordinates are clamped where all four taps stay outside: same zeros, no int overflow.
        wf = W.to(tl.float32)
        hf = H.to(tl.float32)
        ix = tl.minimum(tl.maximum(ix, -2.0), wf + 1.0)
        iy = tl.minimum(tl.maximum(iy, -2.0), hf + 1.0)
        x0f = tl.floor(ix)
        y0f = tl.floor(iy)
        wx1 = ix - x0f
        wy1 = iy - y0f
        wx0 = 1.0 - wx1
        wy0 = 1.0 - wy1
        x0 = x0f.to(tl.int32)
        y0 = y0f.to(tl.int32)
        x1 = x0 + 1
        y1 = y0 + 1
        vx0 = (x0 >= 0) & (x0 < W)
        vx1 = (x1 >= 0) & (x1 < W)
        vy0 = (y0 >= 0) & (y0 < H) & pmask
        vy1 = (y1 >= 0) & (y1 < H) & pmask
        if UPSAMPLE:
            acc = (
                _up_tap(base, y0, x0, h_low, w_low, scale_y, scale_x, s_h, s_w, coff, cmask, vy0 & vx0)
                * (wy0 * wx0)[:, None]
            )
            acc += (
                _up_tap(base, y0, x1, h_low, w_low, scale_y, scale_x, s_h, s_w, coff, cmask, vy0 & vx1)
                * (wy0 * wx1)[:, None]
            )
            acc += (
                _up_tap(base, y1, x0, h_low, w_low, scale_y, scale_x, s_h, s_w, coff, cmask, vy1 & vx0)
                * (wy1 * wx0)[:, None]
            )
            acc += (
                _up_tap(base, y1, x1, h_low, w_low, scale_y, scale_x, s_h, s_w, coff, cmask, vy1 & vx1)
                * (wy1 * wx1)[:, None]
            )
        else:
            acc = _tap(base, y0, x0, H, W, s_h, s_w, coff, cmask, vy0 & vx0) * (wy0 * wx0)[:, None]
            acc += _tap(base, y0, x1, H, W, s_h, s_w, coff, cmask, vy0 & vx1) * (wy0 * wx1)[:, None]
            acc += _tap(base, y1, x0, H, W, s_h, s_w, coff, cmask, vy1 & vx0) * (wy1 * wx0)[:, None]
            acc += _tap(base, y1, x1, H, W, s_h, s_w, coff, cmask, vy1 & vx1) * (wy1 * wx1)[:, None]
        return acc

    # H and W are never specialised: Triton turns an int argument equal to 1 into a constant, and
    # the kernel converts them to fp32 (`W.to(...)`), which a constant does not have -- a single-row
    # or single-column map would not compile (the interpreter, which does not specialise, hid it).
    @triton.jit(do_not_specialize=["H", "W"])
    def _sfc_fuse_kernel(
        cp_ptr,
        sp_ptr,
        r_ptr,
        out_ptr,
        H,
        W,
        h_sp,
        w_sp,
        scale_y,
        scale_x,
        CG,
        cp_sb,
        cp_sc,
        cp_sh,
        cp_sw,
        sp_sb,
        sp_sc,
        sp_sh,
        sp_sw,
        r_sb,
        r_sc,
        r_sh,
        r_sw,
        o_sb,
        o_sc,
        o_sh,
        o_sw,
        G: tl.constexpr,
        UPSAMPLE: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        pid_p = tl.program_id(0)
        bg = tl.program_id(1)
        b = bg // G
        g = bg % G
        p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = p < H * W
        y = p // W
        x = p % W
        cl = tl.arange(0, BLOCK_C)
        cmask = cl < CG
        c = g * CG + cl

        rb = r_ptr + b * r_sb + y * r_sh + x * r_sw
        dx_cp = tl.load(rb + (2 * g) * r_sc, mask=pmask, other=0.0).to(tl.float32)
        dy_cp = tl.load(rb + (2 * g + 1) * r_sc, mask=pmask, other=0.0).to(tl.float32)
        dx_sp = tl.load(rb + (2 * G + 2 * g) * r_sc, mask=pmask, other=0.0).to(tl.float32)
        dy_sp = tl.load(rb + (2 * G + 2 * g + 1) * r_sc, mask=pmask, other=0.0).to(tl.float32)
        gate_sp = tl.load(rb + (4 * G) * r_sc, mask=pmask, other=0.0).to(tl.float32)
        gate_cp = tl.load(rb + (4 * G + 1) * r_sc, mask=pmask, other=0.0).to(tl.float32)
        # 1 + tanh(v) == 2 * sigmoid(2 v), exact in reals and free of cancellation near -1; v >= -40
        # keeps exp finite (1 + tanh(-40) is below fp32's smallest normal anyway).
        a_sp = 2.0 / (1.0 + tl.exp(-2.0 * tl.maximum(gate_sp, -40.0)))
        a_cp = 2.0 / (1.0 + tl.exp(-2.0 * tl.maximum(gate_cp, -40.0)))

        wf = W.to(tl.float32)
        hf = H.to(tl.float32)
        xn = _linspace_m1p1(x, W)
        yn = _linspace_m1p1(y, H)
        # grid = base + offset / (W, H); pixel = (grid + 1) * (size - 1) / 2  (align_corners=True), with
        # the factor (size - 1) / 2 rounded first, as ATen's grid_sample kernels do.
        sx = (wf - 1.0) * 0.5
        sy = (hf - 1.0) * 0.5
        ix_cp = ((xn + dx_cp / wf) + 1.0) * sx
        iy_cp = ((yn + dy_cp / hf) + 1.0) * sy
        ix_sp = ((xn + dx_sp / wf) + 1.0) * sx
        iy_sp = ((yn + dy_sp / hf) + 1.0) * sy

        cp_base = cp_ptr + b * cp_sb
        v_cp = _sample(
            cp_base, ix_cp, iy_cp, H, W, H, W, 1.0, 1.0, cp_sh, cp_sw, c * cp_sc, cmask, pmask, UPSAMPLE=False
        )
        sp_base = sp_ptr + b * sp_sb
        v_sp = _sample(
            sp_base, ix_sp, iy_sp, H, W, h_sp, w_sp, scale_y, scale_x, sp_sh, sp_sw, c * sp_sc, cmask, pmask, UPSAMPLE
        )
        out = v_sp * a_sp[:, None] + v_cp * a_cp[:, None]
        optr = out_ptr + b * o_sb + (y * o_sh + x * o_sw)[:, None] + (c * o_sc)[None, :]
        tl.store(optr, out.to(out_ptr.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])


def _align_corners_scale(n_in: int, n_out: int) -> float:
    """ATen's ``area_pixel_compute_scale`` for align_corners=True, rounded to fp32 like its CPU kernel."""
    if n_out <= 1:
        return 0.0
    return float(torch.tensor(n_in - 1, dtype=torch.float32) / torch.tensor(n_out - 1, dtype=torch.float32))


def sfc_fuse_launch_config(cg: int, *, gpu: bool) -> dict:
    """Block sizes, warps and stages of a launch (``cg``: channels per group).

    GPU: 16 pixels x all channels of the group per program with 8 warps (32 pixels with 4 warps
    spill 0.6-1.8 KB per thread with the fused upsample); the compile gate (``python -m
    tools.aot``) checks that no path spills on sm_80/sm_90. The interpreter pays per program,
    so it takes 4096 pixels at once."""
    block_c = max(16, next_pow2(cg))
    if gpu:
        return {"BLOCK_P": 16, "BLOCK_C": block_c, "num_warps": 8, "num_stages": 1}
    return {"BLOCK_P": 4096, "BLOCK_C": block_c, "num_warps": 4, "num_stages": 1}


def sfc_fuse(cp: torch.Tensor, sp: torch.Tensor, r: torch.Tensor, *, block_p: int | None = None) -> torch.Tensor:
    """Fused SFC sampling + gating. ``sp`` at cp's size, or smaller (resize fused). Returns (B, C, H, W).

    cp: (B, C, H, W); sp: (B, C, h, w); r: (B, 4G + 2, H, W) with G groups, C divisible by G.
    All three of one float dtype, on one device (CUDA, or CPU under TRITON_INTERPRET=1), each
    NCHW- or channels-last-contiguous. The output has cp's dtype and memory format.
    """
    name = "sfc_fuse"
    check_triton(name)
    for arg, t in (("cp", cp), ("sp", sp), ("r", r)):
        check_feature_map(name, arg, t)
        check_float(name, arg, t)
    if sp.dtype != cp.dtype or r.dtype != cp.dtype:
        raise TypeError(f"{name}: cp, sp and r must share one dtype, got {cp.dtype}, {sp.dtype}, {r.dtype}")
    check_device(name, _sfc_fuse_kernel, cp=cp, sp=sp, r=r)
    b, c, h, w = cp.shape
    if sp.shape[:2] != cp.shape[:2]:
        raise ValueError(f"{name}: sp {tuple(sp.shape)} must have cp's batch and channels {tuple(cp.shape[:2])}")
    if r.shape[0] != b or r.shape[2:] != cp.shape[2:] or r.shape[1] < 6 or (r.shape[1] - 2) % 4:
        raise ValueError(
            f"{name}: r {tuple(r.shape)} must be (B, 4G + 2, H, W) = ({b}, 4G + 2, {h}, {w}) with G >= 1 groups"
        )
    groups = (r.shape[1] - 2) // 4
    if c % groups:
        raise ValueError(f"{name}: {c} channels do not split into {groups} groups (from r's {r.shape[1]} channels)")
    for arg, t in (("cp", cp), ("sp", sp), ("r", r)):
        if t.numel() >= 2**31:
            raise ValueError(f"{name}: {arg} has {t.numel()} elements; int32 indexing needs < 2**31")
    out = like_layout((b, c, h, w), cp, cp.dtype)
    if out.numel() == 0:
        return out
    cg = c // groups
    upsample = tuple(sp.shape[2:]) != (h, w)
    hs, ws = sp.shape[2:]
    cfg = sfc_fuse_launch_config(cg, gpu=uses_gpu_config(_sfc_fuse_kernel))
    if block_p is not None:
        cfg["BLOCK_P"] = block_p
    grid = (triton.cdiv(h * w, cfg["BLOCK_P"]), b * groups)
    args = (
        cp,
        sp,
        r,
        out,
        h,
        w,
        hs,
        ws,
        _align_corners_scale(hs, h),
        _align_corners_scale(ws, w),
        cg,
        *cp.stride(),
        *sp.stride(),
        *r.stride(),
        *out.stride(),
    )
    launch(_sfc_fuse_kernel, grid, args, G=groups, UPSAMPLE=upsample, **cfg)
    return out


def linspace_m1p1(n, dtype=torch.float32, device=None) -> torch.Tensor:
    """``torch.linspace(-1, 1, n)`` by ATen's scalar formula (the kernel's): halves from each end.

    ``torch.linspace`` itself may round some entries one ulp differently (its vectorised CPU
    path accumulates within a SIMD chunk); spelling the formula out keeps the reference and the
    kernel on the same coordinates, so fp32 comparisons measure the kernel, not the linspace.
    ``n`` may be symbolic (the dynamic ONNX export): no Python branch on it, and the step
    2 / (n - 1) is computed from a tensor.
    """
    idx = torch.arange(n, device=device)
    i = idx.to(dtype)
    step = 2.0 / i[-1:].clamp(min=1.0)  # 2 / (n - 1) in dtype; n == 1 gives the first branch's -1
    return torch.where((idx < n // 2) | (idx == 0), -1.0 + step * i, 1.0 - step * ((n - 1) - i))


def offset_grid(offsets: torch.Tensor, groups: int = 1, linspace=linspace_m1p1) -> torch.Tensor:
    """The sampling grid of every learned-offset sampler (SFC's groups, SFANet's alignment), in
    every form: (B*G, H, W, 2) = (linspace(-1, 1, W), linspace(-1, 1, H)) + offset / (W, H) of
    (B, 2G, H, W) ``offsets`` (x then y per group), on their device and dtype (docs/architecture.md,
    SFC step 5). ``linspace(n, dtype, device)``: the exact formula above (this kernel's reference,
    the CPU rows, the ONNX export; shape-generic), or ``torch.linspace`` for the twin, as the
    upstream builds it (torch_deploy/model.py)."""
    b, _, h, w = offsets.shape
    off = offsets.reshape(b * groups, 2, h, w)
    xs = linspace(w, offsets.dtype, offsets.device).view(1, 1, w) + off[:, 0] / w
    ys = linspace(h, offsets.dtype, offsets.device).view(1, h, 1) + off[:, 1] / h
    return torch.stack((xs, ys), dim=3)


def sfc_fuse_reference(cp: torch.Tensor, sp: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The same function in plain PyTorch ops, computed in fp32 (fp64 for fp64 inputs), returned in cp's
    dtype and layout."""
    b, c, h, w = cp.shape
    groups = (r.shape[1] - 2) // 4
    ct = torch.float64 if cp.dtype == torch.float64 else torch.float32  # fp64 kept for exactness checks
    cp32, sp32, r32 = cp.to(ct), sp.to(ct), r.to(ct)
    if tuple(sp.shape[2:]) != (h, w):
        sp32 = F.interpolate(sp32, (h, w), mode="bilinear", align_corners=True)
    kw = {"mode": "bilinear", "padding_mode": "zeros", "align_corners": True}
    cp_s = F.grid_sample(cp32.reshape(b * groups, c // groups, h, w), offset_grid(r32[:, : 2 * groups], groups), **kw)
    sp_s = F.grid_sample(
        sp32.reshape(b * groups, c // groups, h, w), offset_grid(r32[:, 2 * groups : 4 * groups], groups), **kw
    )
    gates = 1.0 + torch.tanh(r32[:, 4 * groups : 4 * groups + 2])
    out = sp_s.reshape(b, c, h, w) * gates[:, 0:1] + cp_s.reshape(b, c, h, w) * gates[:, 1:2]
    fmt = torch.contiguous_format if cp.is_contiguous() else torch.channels_last
    return out.to(cp.dtype).contiguous(memory_format=fmt)
