"""optimize(precision="int8"): oneDNN's int8 convolutions against a float64 fake-quantized reference."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F
from test_optimize import randomize_like_trained, rel_l2
from torch import nn

from torch_deploy.cpu_caps import cpu_caps
from torch_deploy.model import CSFCN, ReferenceOps, use_ops
from torch_deploy.optimize import Int8Ops, fold_sfc_offsets, optimize, remove_bn
from torch_deploy.quantize import activation_qparams, quantize_uint8, quantize_weight


@pytest.fixture
def g(request) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


class FakeQuantOps(ReferenceOps):
    """The reference ops in float64 with each calibrated convolution computed on its quantized
    input and weight, dequantized: what the int8 kernels must equal up to accumulation order."""

    def __init__(self, convs, output="logits"):
        super().__init__(output)
        self.convs = convs

    def conv(self, conv, x, relu=False):
        q = self.convs.get(conv)
        if q is None:
            return super().conv(conv, x, relu)
        # the quantization's own rounding: x * (1 / scale) in float32, half to even
        xq = torch.clamp(torch.round(x.float() * (1.0 / q.scale)) + q.zero_point, 0, q.qmax)
        xd = (xq.double() - q.zero_point) * q.scale
        wd = q.weight.double() * q.weight_scale.double().view(-1, 1, 1, 1)
        bias = None if q.bias is None else q.bias.double()
        y = F.conv2d(xd, wd, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return F.relu(y) if relu else y


def test_qparams_and_weights():
    """uint8 activation parameters cover [lo, hi] widened to 0 (0 exact); int8 weights are
    symmetric per output channel, the largest |w| of each at +-127."""
    scale, zp = activation_qparams(-1.0, 3.0)
    assert scale == pytest.approx(4 / 255) and zp == 64
    assert activation_qparams(2.0, 5.0) == (pytest.approx(5 / 255), 0)
    assert activation_qparams(-3.0, -1.0) == (pytest.approx(3 / 255), 255)
    assert activation_qparams(0.0, 0.0)[1] == 0 and activation_qparams(0.0, 0.0)[0] > 0
    w = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    w[2] = 0.0  # a dead channel still gets a finite scale
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and s.shape == (6,) and torch.isfinite(s).all()
    assert torch.equal(q.flatten(1).abs().amax(1)[[0, 1, 3, 4, 5]], torch.full((5,), 127, dtype=torch.int8))
    assert ((q.float() * s.view(-1, 1, 1, 1) - w).abs() <= s.view(-1, 1, 1, 1) / 2 + 1e-7).all()


def test_quantize_uint8_without_quantize_per_tensor(monkeypatch):
    """The arithmetic fallback equals torch.quantize_per_tensor's uint8 values, layout kept."""
    x = (torch.randn(1, 8, 5, 7, generator=torch.Generator().manual_seed(2)) * 3).contiguous(
        memory_format=torch.channels_last
    )
    fast = quantize_uint8(x, 0.023, 117)
    monkeypatch.delattr(torch, "quantize_per_tensor")
    slow = quantize_uint8(x, 0.023, 117)
    assert fast.dtype == slow.dtype == torch.uint8 and torch.equal(fast, slow)
    assert fast.is_contiguous(memory_format=torch.channels_last) and fast.min() == 0 and fast.max() == 255


def test_int8_is_the_fake_quantized_function_and_close_to_fp32(g):
    """Every convolution of CSFCN runs in int8 (31 of them, the head's 1x1 included); the logits
    equal the float64 fake-quantized graph (each conv on its dequantized uint8 input and int8
    weight) to 1e-6, far closer than to fp32 (so the comparison sees the quantization), and the
    labels head gives their argmax. What int8 costs against fp32 is measured on a trained model
    (BENCHMARKS.md, CPU deployment): random weights through 31 quantized layers say little."""
    twin = randomize_like_trained(CSFCN(num_classes=19), g)
    calibration = [torch.randn(1, 3, 64, 128, generator=g) for _ in range(2)]
    x = torch.randn(2, 3, 64, 128, generator=g)
    q = optimize(twin, "int8", "logits", calibration=calibration)
    assert len(q.ops.convs) == 31 and q.dtype == torch.float32
    folded = remove_bn(twin)  # the graph optimize folds, built again: its modules by name
    fold_sfc_offsets(folded.sfc)
    ours = dict(q.model.named_modules())
    convs = {m: q.ops.convs[ours[name]] for name, m in folded.named_modules() if ours.get(name) in q.ops.convs}
    assert len(convs) == 31
    fake = use_ops(folded.double(), FakeQuantOps(convs))
    with torch.no_grad():
        got = q(x)
        ref = fake(x.double())
        fp32 = twin(x)
    err = rel_l2(got, ref)
    assert err <= 1e-6, err  # int32 accumulation is exact: only the float epilogue rounds differently
    assert rel_l2(got, fp32) > 1000 * err  # the int8 path is quantized, and the reference saw it
    labels = optimize(twin, "int8", "labels", calibration=calibration)(x)
    assert labels.dtype == torch.uint8 and (labels.long() == got.argmax(1)).float().mean() >= 0.999


def test_int8_rejects_what_cannot_run(g):
    twin = CSFCN(num_classes=11).eval()
    image = [torch.randn(1, 3, 32, 64, generator=g)]
    with pytest.raises(ValueError, match="needs calibration"):
        optimize(twin, "int8", "labels")
    with pytest.raises(ValueError, match="not the Triton kernels"):
        optimize(twin, "int8", "labels", kernels=True, calibration=image)
    with pytest.raises(ValueError, match="calibration is for precision='int8'"):
        optimize(twin, "fp32", "labels", calibration=image)
    with pytest.raises(ValueError, match=r"expected normalised \(B, 3, H, W\) image tensors, got \(3, 32, 64\)"):
        optimize(twin, "int8", "labels", calibration=[image[0][0]])


def int8_error_bound(q, x: torch.Tensor) -> torch.Tensor:
    """Elementwise bound on |int8 conv(x) - float conv(x)| (groups = 1), for ``x`` inside the
    calibrated range [lo, hi]. With x^ = (q_x - zp) * s_x and w^ = q_w * s_w[o] (what the int32
    accumulation computes exactly, the bias added in float):

        y^ - y = sum_i w^_oi (x^_i - x_i) + sum_i (w^_oi - w_oi) x_i
        |y^ - y| <= s_x * sum_i |w^_oi| + s_w[o] / 2 * sum_i |x_i|

    |w^ - w| <= s_w[o] / 2: symmetric rounding, never clamped (max |w| -> 127). |x^ - x| <= s_x:
    s_x / 2 of rounding inside the range, and at its ends the grid's end points (-zp * s_x,
    (qmax - zp) * s_x) lie within s_x / 2 of lo and hi (zp = round(-lo / s_x)), so a clamped
    value is off by at most s_x. The sums run over each output's receptive field: sum_i |x_i| is
    |x| convolved with ones (zero padding adds nothing). ReLU is 1-Lipschitz, so the same bound
    holds after it. 1e-4 covers the float32 rounding of both convolutions' sums and epilogues."""
    c = q.conv
    w_abs = (q.weight.float() * q.weight_scale.view(-1, 1, 1, 1)).abs().flatten(1).sum(1)
    x_abs = F.conv2d(x.abs(), torch.ones(1, *c.weight.shape[1:]), None, c.stride, c.padding, c.dilation)
    return (q.scale * w_abs).view(1, -1, 1, 1) + (q.weight_scale / 2).view(1, -1, 1, 1) * x_abs + 1e-4


def test_int8_calibration_range_is_the_union_over_images(g):
    """Each convolution's input range is the minimum and maximum over all calibration images,
    not the last image's: calibrated on a wide image then one at a quarter of its scale, the
    int8 convolution still covers the wide one (no clipping), within int8_error_bound."""
    conv = nn.Conv2d(8, 6, 3, padding=1).eval()
    wide = 3.0 * torch.randn(1, 8, 9, 11, generator=g)
    narrow = 0.25 * torch.randn(1, 8, 9, 11, generator=g)
    ops = Int8Ops("logits", cpu_caps().int8_bits)
    with torch.no_grad():
        assert ops.calibrate(lambda image: ops.conv(conv, image), [wide, narrow]) == 1
        q = ops.convs[conv]
        lo, hi = min(wide.min(), narrow.min()).item(), max(wide.max(), narrow.max()).item()
        assert (q.scale, q.zero_point) == activation_qparams(lo, hi, q.qmax), (
            f"activation (scale, zero point) {(q.scale, q.zero_point)} is not that of the union "
            f"[{lo:.3f}, {hi:.3f}] over the calibration images"
        )
        covered = (-q.zero_point * q.scale, (q.qmax - q.zero_point) * q.scale)
        assert covered[0] <= lo + q.scale / 2 and covered[1] >= hi - q.scale / 2, (
            f"calibrated range {covered} does not cover the first image's [{lo:.3f}, {hi:.3f}]"
        )
        err = (ops.conv(conv, wide) - conv(wide)).abs()
        bound = int8_error_bound(q, wide)
        assert (err <= bound).all(), f"int8 conv on the first calibration image off by {err.max():.4f} (clipped?)"


def test_int8_conv_fuses_the_relu(g):
    """Int8Ops.conv(relu=True) is relu(conv(x)) in int8 -- no negative output, within
    int8_error_bound of the float one -- and the float conv with its ReLU while calibrating."""
    conv = nn.Conv2d(8, 6, 3, padding=1).eval()
    x = torch.randn(1, 8, 9, 11, generator=g)
    ops = Int8Ops("logits", cpu_caps().int8_bits)
    with torch.no_grad():
        ref = F.relu(conv(x))
        seen = []
        ops.calibrate(lambda image: seen.append(ops.conv(conv, image, relu=True)), [x])
        assert rel_l2(seen[0], ref) <= 1e-6, "the float conv while calibrating is not relu(conv(x))"
        got = ops.conv(conv, x, relu=True)
        bound = int8_error_bound(ops.convs[conv], x)
        assert (conv(x) < -bound).any(), "test too weak: no output below -bound, a dropped ReLU would pass"
    assert got.min() >= 0, f"int8 conv with relu=True gave negative values (min {got.min():.4f}): ReLU dropped"
    err = (got - ref).abs()
    assert (err <= bound).all(), f"int8 relu(conv) off by {err.max():.4f} > the int8 bound {bound.max():.4f}"
