"""int8 on CPU: oneDNN's int8 convolutions inside ``optimize``'s graph.

    fast = optimize(twin, "int8", output="labels", calibration=images)  # images: normalised (1, 3, H, W)

This module is the int8 arithmetic; ``torch_deploy.optimize.Int8Ops`` runs it inside the graph.

Static post-training quantization, the scheme of PyTorch's x86 quantizer and of ONNX Runtime's
default: every convolution of the folded graph (BN folded first) takes uint8 activations with
one scale and zero point per tensor -- the minimum and maximum its input reached over the
calibration images, widened to include 0 -- and int8 weights with one symmetric scale per
output channel; it accumulates in int32 and writes fp32, the ReLU fused. Quantizing an input
is one pass (:func:`quantize_uint8`); the convolution is ``torch.ops.onednn.qconv2d_pointwise``
on weights packed once per input shape (``qconv_prepack``), the ops PyTorch's own compiler
emits for quantized models, called eagerly. Everything between convolutions -- residual adds,
max-pool, the CFC attention, the SFC sampling, the head's argmax -- runs as in
``optimize(precision="fp32")``: measured faster than bf16 around int8 convolutions, whose
inputs would need a conversion pass before each quantization.

Why this and not ONNX Runtime or OpenVINO/NNCF on our ONNX: the convolutions run on oneDNN's
VNNI kernels as in OpenVINO (53 vs 51 ms per 512x1024 image; ONNX Runtime's own take 67 ms)
while the rest of the graph keeps ``optimize``'s CPU ops, whose argmax and sampling are several
times faster than the runtimes' (BENCHMARKS.md, CPU deployment); and it needs no package beyond
torch. ONNX Runtime's int8 stays in the benchmark as a peer (``torch_deploy.cpu_peers``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class Int8Conv:
    """One convolution's calibrated int8 form."""

    conv: nn.Conv2d
    scale: float  # input activation scale and zero point (uint8)
    zero_point: int
    weight: torch.Tensor  # int8, (C_out, C_in/groups, kh, kw)
    weight_scale: torch.Tensor  # (C_out,) float32
    weight_zero_point: torch.Tensor  # (C_out,) int32 zeros: symmetric
    bias: torch.Tensor | None  # float32
    qmax: int = 255  # largest activation value: 255 (8 bits) with VNNI, 127 (7 bits) without
    packed: dict = field(default_factory=dict)  # input shape -> weight in oneDNN's layout for it

    def packed_for(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The weight packed for inputs of ``shape``, once per shape: oneDNN picks the blocked
        layout by shape, and a weight packed for another one is reordered on every call
        (measured 6 ms per call for the head's 1x1 conv, whose chunks are small)."""
        packed = self.packed.get(shape)
        if packed is None:
            c = self.conv
            packed = self.packed[shape] = torch.ops.onednn.qconv_prepack(
                self.weight, self.weight_scale, self.scale, self.zero_point, list(c.stride), list(c.padding),
                list(c.dilation), c.groups, list(shape),
            )  # fmt: skip
        return packed


def activation_qparams(lo: float, hi: float, qmax: int = 255) -> tuple[float, int]:
    """uint8 (scale, zero point) mapping [lo, hi], widened to include 0 so that 0 (the
    convolution's zero padding) is exact, onto 0..qmax (255, or 127 for 7-bit activations)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / qmax, 1e-8)  # a constant-zero input still gets a valid scale
    return scale, int(min(qmax, max(0, round(-lo / scale))))


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, per-output-channel float32 scale): symmetric, max |w| -> 127."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=tuple(range(1, w.dim()))) / 127.0).clamp_min(1e-12)
    q = torch.round(w / scale.view(-1, *([1] * (w.dim() - 1)))).clamp_(-128, 127).to(torch.int8)
    return q, scale


def quantize_uint8(x: torch.Tensor, scale: float, zero_point: int, qmax: int = 255) -> torch.Tensor:
    """``clamp(round(x / scale) + zero_point, 0, qmax)`` as uint8 (round half to even).

    ``torch.quantize_per_tensor`` is deprecated (pytorch/pytorch#184982) yet 6x faster than the
    same arithmetic in four ops (measured at 1/4 resolution, 64 channels: 0.18 vs 1.15 ms); the
    arithmetic takes over once it is gone. 7-bit activations (``qmax=127``) clamp the uint8
    result once more: an input above the calibrated range must not reach 128..255, where the
    pre-VNNI kernels saturate (torch_deploy/cpu_caps.py)."""
    if hasattr(torch, "quantize_per_tensor"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
            q = _uint8(torch.quantize_per_tensor(x, scale, zero_point, torch.quint8))
        return q if qmax == 255 else q.clamp_(max=qmax)
    return x.mul(1.0 / scale).round_().add_(zero_point).clamp_(0, qmax).to(torch.uint8)


def _uint8(q: torch.Tensor) -> torch.Tensor:
    """The uint8 values of a quint8 tensor as a plain uint8 tensor on the same memory (what
    oneDNN's int8 ops take): ``int_repr()`` copies, 5x the cost of the quantization itself."""
    return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), q.storage_offset(), q.shape, q.stride())


def quantizable(conv: nn.Conv2d) -> bool:
    """Whether oneDNN's int8 convolution computes ``conv`` (zero padding given as numbers)."""
    return isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def int8_conv(q: Int8Conv, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """``relu?(q.conv(x))`` in int8: ``x`` quantized to uint8 with the calibrated scale, oneDNN's
    int8 convolution, fp32 (``x.dtype``) out."""
    conv = q.conv
    qx = quantize_uint8(x.float(), q.scale, q.zero_point, q.qmax)
    return torch.ops.onednn.qconv2d_pointwise(
        qx,
        q.scale,
        q.zero_point,
        q.packed_for(tuple(qx.shape)),
        q.weight_scale,
        q.weight_zero_point,
        q.bias,
        list(conv.stride),
        list(conv.padding),
        list(conv.dilation),
        conv.groups,
        1.0,  # output scale and zero point: float output, not requantized
        0,
        x.dtype,
        "relu" if relu else "none",
        [],
        "",
    )


def quantize_convs(ranges: dict, bits: int = 8) -> dict:
    """{conv: Int8Conv} for every quantizable conv of ``ranges`` ({conv: [min, max] of its input}),
    activations in ``bits`` bits (8, or 7 on CPUs without VNNI: torch_deploy/cpu_caps.py)."""
    if bits not in (7, 8):
        raise ValueError(f"quantize_convs: activations take 7 or 8 bits, not {bits}")
    qmax = 2**bits - 1
    out = {}
    for conv, (lo, hi) in ranges.items():
        if not quantizable(conv):
            continue
        scale, zero_point = activation_qparams(lo, hi, qmax)
        weight, weight_scale = quantize_weight(conv.weight)
        bias = None if conv.bias is None else conv.bias.detach().float().clone()
        zeros = torch.zeros(weight_scale.numel(), dtype=torch.int32)
        out[conv] = Int8Conv(conv, scale, zero_point, weight, weight_scale, zeros, bias, qmax)
    return out
