"""What ``optimize`` runs on CPU: oneDNN convolutions with pre-packed weights, the CPU forms of
the fused ops of :mod:`kernels` (no Triton there). Which precisions this CPU runs:
:mod:`torch_deploy.cpu_caps`.

    y = conv2d(conv, x, relu=True)       # one oneDNN call, ReLU fused
    out = sfc_fuse_rows(cp, sp32, r)     # = kernels.sfc_fuse.sfc_fuse_reference(cp, sp32, r)
    labels = labels_head(head, x)        # = pixel_shuffle(head.conv_out(x), 8).argmax(1)

Each is the same function as its reference (docs/architecture.md, "On a CPU"), laid out for a
CPU: channels-last tensors read as rows of channels, so that what one output position needs --
a bilinear sample of all the channels of a group, the scores of all 64 sub-pixels of a class --
is contiguous.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from csfcn.model_config import HEAD_UPSAMPLE
from kernels.sfc_fuse import linspace_m1p1
from torch_deploy.model import Head, labels_dtype


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
    for x, offsets, gate in (
        (sp, r32[:, 2 * groups : 4 * groups], gates[:, 0]),
        (cp, r32[:, : 2 * groups], gates[:, 1]),
    ):
        rows = x.permute(0, 2, 3, 1).reshape(-1, c // groups)  # a view for channels-last x
        buf = torch.empty_like(out, dtype=rows.dtype)  # the gather buffer of the four corners
        for index, weight in _corners(offsets, gate, groups):
            out.addcmul_(torch.index_select(rows, 0, index, out=buf), weight)
    return out.view(b, h, w, c).permute(0, 3, 1, 2).to(cp.dtype)


# ----------------------------------------------------------------------------- convolutions
def _onednn(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv(x)`` can run as one oneDNN convolution with a fused post-op (CPU, fp32/bf16)."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and conv.weight.dtype == x.dtype
        and torch.backends.mkldnn.is_available()
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def _derived(conv: nn.Conv2d, name: str, build):
    """``build()``, a tensor derived from ``conv``'s parameters, computed once and cached on the conv;
    rebuilt when its weight or bias is replaced or modified in place."""
    key = tuple(
        (t.data_ptr(), t.dtype, None if t.is_inference() else t._version)  # inference tensors have no version
        for t in (conv.weight, conv.bias)
        if t is not None
    )
    cached = conv.__dict__.get(name)
    if cached is None or cached[0] != key:
        cached = conv.__dict__[name] = (key, build())
    return cached[1]


def _packed_weight(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv.weight`` reordered once into oneDNN's blocked layout (what PyTorch's CPU compiler does
    when it freezes weights)."""
    return _derived(
        conv,
        "_onednn_weight",
        lambda: torch.ops.mkldnn._reorder_convolution_weight(
            conv.weight, conv.padding, conv.stride, conv.dilation, conv.groups, list(x.shape)
        ),
    )


def conv2d(conv: nn.Conv2d, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """``conv(x)``, or ``relu(conv(x))``. On CPU in fp32/bf16: one oneDNN convolution with pre-packed
    weights and the ReLU as its post-op (the ATen op PyTorch's own CPU compiler emits; measured in
    BENCHMARKS.md); elsewhere the module, then an in-place ReLU."""
    if _onednn(conv, x):
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            _packed_weight(conv, x),
            conv.bias,
            conv.padding,
            conv.stride,
            conv.dilation,
            conv.groups,
            "relu" if relu else "none",
            [None] if relu else [],
            None,
        )
    y = conv(x)
    return F.relu(y, inplace=True) if relu else y


def conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x))`` (see :func:`conv2d`)."""
    return conv2d(conv, x, relu=True)


# ----------------------------------------------------------------------------- the CSFCN head
def _head_rows(conv_out: nn.Conv2d, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's 1x1 conv with outputs reordered from (class, sub-pixel) to (sub-pixel, class), for
    the CPU logits path: one matmul then writes the logits in channels-last order."""

    def build():
        r2 = HEAD_UPSAMPLE**2
        rows = conv_out.weight.detach().reshape(k, r2, -1).transpose(0, 1).reshape(r2 * k, -1).clone()
        return rows, conv_out.bias.detach().reshape(k, r2).t().reshape(-1).clone()

    return _derived(conv_out, "_head_rows", build)


# The CPU labels head works on chunks of this many low-resolution pixels: (256, K, 64) fp32 scores
# are 1.2 MB for K = 19, which stay in a core's L2 between the head's passes (measured: 128 to 1024
# pixels are within 10 % of each other, whole images 3x slower; BENCHMARKS.md, CPU deployment).
LABEL_CHUNK_PIXELS = 256
# Multiplying a non-zero score gap (>= 2**-126, the smallest normal float32/bfloat16) by this
# makes it <= -1, so clamp(gap * ONE_HOT_SCALE + 1, min=0) is 1 at a maximum and 0 elsewhere.
ONE_HOT_SCALE = 2.0**126


def _class_codes(conv_out: nn.Conv2d, k: int) -> torch.Tensor:
    """(1, K, 1) float32 scores K - k: the largest for the first class (exact up to 2**24 classes)."""
    return _derived(conv_out, "_class_codes", lambda: (k - torch.arange(k, dtype=torch.float32)).view(1, k, 1))


def logits_head(head: Head, x: torch.Tensor) -> torch.Tensor:
    """Head 1x1 conv + pixel shuffle on CPU, logits out, as a matmul over (pixel, channel) rows.

    For channels-last ``x`` the rows are a free view; the matmul writes (pixel, sub-pixel,
    class), which is the (B, K, 8h, 8w) logits in channels-last layout."""
    b, c, h, w = x.shape
    k, r = head.num_classes, HEAD_UPSAMPLE
    weight, bias = _head_rows(head.conv_out, k)
    rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
    y = torch.addmm(bias, rows, weight.t()).view(b, h, w, r, r, k)
    # (b, h, i, w, j, k) in memory: logits (b, k, 8h, 8w) in channels-last layout
    return y.permute(0, 1, 3, 2, 4, 5).reshape(b, h * r, w * r, k).permute(0, 3, 1, 2)


def labels_head(head: Head, x: torch.Tensor, conv=None) -> torch.Tensor:
    """Head 1x1 conv + pixel shuffle + argmax on CPU, labels out, chunk by chunk.

    Per chunk of :data:`LABEL_CHUNK_PIXELS` low-resolution pixels (whole rows of one image):
    the oneDNN 1x1 conv writes, per pixel, K runs of 64 sub-pixel scores (the conv's
    (class, sub-pixel) channel order, channels-last). The argmax over K is then built from
    reductions and element-wise passes that vectorise over the 64 contiguous sub-pixels,
    where PyTorch's argmax over a 19-long axis runs one element at a time: the maximum m per
    sub-pixel; s = clamp((score - m) * 2**126 + 1, min=0), exactly 1 at the maximum and 0
    elsewhere; max over k of s * (K - k) is K minus the first class at the maximum -- the
    argmax, ties included. The chunk stays in cache between passes and no full-resolution
    logits exist. The passes run in float32 (bfloat16 scores converted exactly, per chunk;
    measured 2x faster than bfloat16 arithmetic on CPU). ``conv(module, x)`` runs the 1x1 conv
    (default :func:`conv2d`; the int8 backend passes its own)."""
    conv = conv or conv2d
    b, _, h, w = x.shape
    k, r = head.num_classes, HEAD_UPSAMPLE
    code = _class_codes(head.conv_out, k)
    labels = torch.empty(b, h, r, w, r, dtype=labels_dtype(k))
    rows = max(1, LABEL_CHUNK_PIXELS // w)
    for i in range(b):
        for top in range(0, h, rows):
            y = conv(head.conv_out, x[i : i + 1, :, top : top + rows])  # (1, K*r*r, rows, w)
            scores = y.permute(0, 2, 3, 1).reshape(-1, k, r * r).float()  # bf16: one pass, then faster ops
            scores.sub_(scores.amax(1, keepdim=True)).mul_(ONE_HOT_SCALE).add_(1).clamp_(min=0)
            first = scores.mul_(code).amax(1)  # K - the first class at the maximum, per sub-pixel
            labels[i, top : top + rows] = first.neg_().add_(k).view(-1, w, r, r).transpose(1, 2)
    return labels.view(b, h * r, w * r)
