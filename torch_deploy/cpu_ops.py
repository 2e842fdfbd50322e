"""What ``optimize`` runs on CPU besides oneDNN: the CPU forms of the fused ops of :mod:`kernels`
(no Triton there), and whether the CPU computes bf16 natively.

    out = sfc_fuse_rows(cp, sp32, r)   # = kernels.sfc_fuse.sfc_fuse_reference(cp, sp32, r), channels-last

Each is the same function as the kernel's reference (docs/architecture.md, SFC steps 4-7), laid
out for a CPU: channels-last tensors read as rows of channels, so that a bilinear sample of all
the channels of one group at one position is one contiguous row.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from kernels.sfc_fuse import linspace_m1p1

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache  # the CPU does not change while the process runs
def cpu_bf16_native() -> tuple[bool, str]:
    """(whether this CPU computes bf16 natively, the evidence): AVX512_BF16 or AMX-BF16 in /proc/cpuinfo.
    Without them bf16 is emulated and slower than fp32, so the bf16 rows are skipped."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False, "no /proc/cpuinfo to read the CPU's flags from"
    have = [flag for flag in BF16_FLAGS if flag in flags]
    if have:
        return True, "CPU flags " + ", ".join(have)
    return False, f"this CPU lacks {' and '.join(BF16_FLAGS)} (bf16 would be emulated)"


def _corners(offsets: torch.Tensor, gate: torch.Tensor, groups: int):
    """The four bilinear corners of every sample as (row index, weight) pairs.

    offsets: (B, 2G, H, W) float32 (x then y per group); gate: (B, H, W) float32, folded into
    the weights. Sample (b, y, x, g) reads rows ((b*H + yi)*W + xi)*G + g of a channels-last
    tensor viewed as (B*H*W*G, C/G); a corner outside the image has weight 0 (zero padding)."""
    b, _, h, w = offsets.shape
    off = offsets.view(b, groups, 2, h, w).permute(0, 3, 4, 1, 2)  # (B, H, W, G, 2)
    xs = linspace_m1p1(w, offsets.dtype).view(1, 1, w, 1)
    ys = linspace_m1p1(h, offsets.dtype).view(1, h, 1, 1)
    # grid_sample's coordinates with align_corners: ((grid + 1) / 2) * (size - 1)
    ix = ((xs + off[..., 0] / w) + 1) / 2 * (w - 1)
    iy = ((ys + off[..., 1] / h) + 1) / 2 * (h - 1)
    x0, y0 = ix.floor(), iy.floor()
    fx, fy = ix - x0, iy - y0
    base = (torch.arange(b).view(b, 1, 1, 1) * h) * w * groups + torch.arange(groups).view(1, 1, 1, groups)
    gate = gate.unsqueeze(-1)
    out = []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        yi = y0 + dy
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi = x0 + dx
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            rows = base + (yi.clamp(0, h - 1).long() * w + xi.clamp(0, w - 1).long()) * groups
            out.append((rows.reshape(-1), (wx * wy * gate * inside).reshape(-1, 1)))
    return out


def sfc_fuse_rows(cp: torch.Tensor, sp32: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``kernels.sfc_fuse.sfc_fuse_reference(cp, sp32, r)`` on CPU in channels-last rows.

    cp (B, C, H, W) and r (B, 4G+2, H, W) at 1/8, sp32 (B, C, h, w) at 1/32 (resized to 1/8
    here). Each sample gathers whole rows of C/G channels (``index_select``) and accumulates them
    weighted by bilinear weight x gate (``addcmul_``), in float32: 16 passes over the output,
    no grid_sample, no separate gating, no layout change (measured 2x faster than the reference
    ops; BENCHMARKS.md, CPU deployment). Returns cp's dtype, channels-last."""
    b, c, h, w = cp.shape
    groups = (r.shape[1] - 2) // 4
    r32 = r.float()
    sp = F.interpolate(sp32.float(), (h, w), mode="bilinear", align_corners=True)
    gates = 1.0 + torch.tanh(r32[:, 4 * groups : 4 * groups + 2])
    out = torch.zeros(b * h * w * groups, c // groups)
    picked = {}  # one gather buffer per dtype, reused by every corner
    for x, offsets, gate in (
        (sp, r32[:, 2 * groups : 4 * groups], gates[:, 0]),
        (cp, r32[:, : 2 * groups], gates[:, 1]),
    ):
        rows = x.permute(0, 2, 3, 1).reshape(-1, c // groups)  # a view for channels-last x
        buf = picked.setdefault(rows.dtype, torch.empty_like(out, dtype=rows.dtype))
        for index, weight in _corners(offsets, gate, groups):
            out.addcmul_(torch.index_select(rows, 0, index, out=buf), weight)
    return out.view(b, h, w, c).permute(0, 3, 1, 2).to(cp.dtype)
