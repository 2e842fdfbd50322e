"""MGSeg as plain ``torch.nn`` modules (NCHW): the PyTorch twin of :mod:`jax_csfcn.zoo.mgseg`.

"MGSeg: Multiple Granularity-Based Real-Time Semantic Segmentation Network" (IEEE TIP 2021),
upstream kaigelee/CSFCN ``models/MGSeg.py`` built as ``MGSeg(n_classes, output_aux=True)``.
Module names, nesting and registration order are the upstream's (aux head ``conv_out16``
included), so an upstream ``state_dict`` loads with ``strict=True`` and lists its keys in the
same order (161 entries).  The network, the upstream bugs and quirks and what this port does
instead are described in :mod:`jax_csfcn.zoo.mgseg`; in short:

* the 19 classes hard-coded upstream in ``hafa.predictor``, ``fgr.gwl.conv_1.1`` (8*19),
  ``fgr.gwl.GC_conv`` (4*19, groups=19) and FGR's reshape are K here (equal shapes at K=19;
  13,665,920 parameters at K=11 against the broken upstream 11-class build's 13,678,720);
* every fixed-factor resize (x2, x0.5, x8) is a bilinear align_corners=True resize to the
  size of the tensor it meets (the input size for the outputs), so any input size works and
  the numbers equal upstream's wherever upstream runs (H, W multiples of 32);
* the aux PixelShuffle(16) output (16*ceil(H/16)) is resized to the input size when it differs;
* ``forward`` returns the main logits; ``outputs`` = (main, pred, aux), LOSS_WEIGHTS (1, 0.4, 0.4).

Deployment: every BatchNorm reads only the conv before it (the trunk's BasicBlocks, the CBRs of
``hafa.q5_slwa``, ``hafa.q4_slwa``, ``hafa.q3_lwa`` and ``conv_out16.conv``), and all of those
pairs run through ``self.ops.conv_bn``: every BN folds.  The stem conv has no BN, and the HAFA
chain and FGR convs have none (upstream).  Plain convs run through ``self.ops.conv``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch_deploy.model import REFERENCE_OPS, BasicBlock, ReferenceOps, use_ops

AUX_UPSAMPLE = 16


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear align_corners=True resize to ``size`` (a no-op copy-free return when equal)."""
    size = tuple(size)
    if tuple(x.shape[2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _kaiming_a1(conv: nn.Conv2d) -> None:
    """Upstream ``init_weight``: kaiming_normal_(a=1), bias 0."""
    nn.init.kaiming_normal_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class Backbone(nn.Module):
    """Upstream ``Backbone``: ``stem`` conv 7x7/2 (no BN, no ReLU), max-pool, layer1..4."""

    ops = REFERENCE_OPS

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (cout, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), start=1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        for m in self.modules():  # upstream ResNet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layer1(self.maxpool(self.ops.conv(self.stem, x)))
        c2 = self.layer2(x)
        c3 = self.layer3(c2)
        return c2, c3, self.layer4(c3)


class CBR(nn.Module):
    """Upstream ``CBR``: ``conv`` = Sequential(conv k x k no bias, BN, ReLU); default conv init."""

    ops = REFERENCE_OPS

    def __init__(self, cin: int, cout: int, k: int = 1):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    def forward(self, x):
        return self.ops.conv_bn(self.conv[0], self.conv[1], x, relu=True)


class S_LWA(nn.Module):  # the upstream name
    """x = CBR3x3(in); x * sigmoid(Linear(GAP x)) + x."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.reduce = CBR(cin, cout, 3)
        self.fc = nn.Sequential(nn.Linear(cout, cout, bias=False), nn.Sigmoid())

    def forward(self, x):
        x = self.reduce(x)
        b, c = x.shape[:2]
        y = self.fc(F.adaptive_avg_pool2d(x, 1).view(b, c)).view(b, c, 1, 1)
        return x * y + x


class LWA(nn.Module):
    """x = CBR1x1(in); x * sigmoid(L2(relu(L1(GAP x)))) + x."""

    def __init__(self, cin: int, cout: int, reduction: int = 2):
        super().__init__()
        self.reduce = CBR(cin, cout, 1)
        self.fc = nn.Sequential(
            nn.Linear(cout, cout // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(cout // reduction, cout, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        x = self.reduce(x)
        b, c = x.shape[:2]
        y = self.fc(F.adaptive_avg_pool2d(x, 1).view(b, c)).view(b, c, 1, 1)
        return x * y + x


class HAFA(nn.Module):
    """Upstream ``HAFA`` with ``predictor`` 32 -> K; a linear conv chain (no BN, no activation)."""

    ops = REFERENCE_OPS

    def __init__(self, num_classes: int):
        super().__init__()

        def conv(cin, cout):
            c = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
            _kaiming_a1(c)
            return c

        self.q5_slwa = S_LWA(512, 128)
        self.q5_conv = conv(128, 128)
        self.q4_slwa = S_LWA(256, 128)
        self.q4_conv = conv(128, 128)
        self.q3_lwa = LWA(256, 128)
        self.q3_conv = conv(128, 128)
        self.p1_conv = conv(128, 32)
        self.p1_1_conv = conv(32, 32)
        self.p2_conv = conv(128, 32)
        self.p2_1_conv = conv(32, 32)
        self.p3_conv = conv(128, 32)
        self.p3_1_conv = conv(32, 32)
        self.predictor = conv(32, num_classes)

    def forward(self, q3, q4, q5):
        """(f3 1/16, f2 1/16, f1 1/8, pred 1/8); each upstream x2 / x0.5 resizes to its partner's size."""
        conv = self.ops.conv
        f3 = _resize(self.q5_slwa(q5), q4.shape[2:])
        p3 = conv(self.q5_conv, f3)
        f2 = self.q4_slwa(q4)
        p2 = conv(self.q4_conv, _resize(p3 + f2, q3.shape[2:]))
        f1 = self.q3_lwa(torch.cat([q3, p2], dim=1))
        p1 = conv(self.q3_conv, f1 + p2)
        p3 = conv(self.p3_conv, p3)
        p2 = conv(self.p2_conv, p2)
        p1 = conv(self.p1_1_conv, conv(self.p1_conv, p1))
        p2 = conv(self.p2_1_conv, p1 + p2)
        p3 = conv(self.p3_1_conv, _resize(p2, p3.shape[2:]) + p3)
        p3 = _resize(p3, p2.shape[2:])
        return f3, f2, f1, conv(self.predictor, p3 + p2 + p1)


class GWL(nn.Module):
    """conv 3x3 512->128, conv 1x1 128->8K, up to 1/16, grouped 3x3 8K->4K (K groups), up to 1/8."""

    ops = REFERENCE_OPS

    def __init__(self, num_classes: int, cin: int = 512):
        super().__init__()
        k = num_classes
        self.conv_1 = nn.Sequential(nn.Conv2d(cin, 128, 3, 1, 1, bias=False), nn.Conv2d(128, 8 * k, 1, bias=False))
        self.GC_conv = nn.Conv2d(8 * k, 4 * k, 3, 1, 1, bias=False, groups=k)
        _kaiming_a1(self.GC_conv)

    def forward(self, q5, size16, size8):
        conv = self.ops.conv
        x = conv(self.conv_1[1], conv(self.conv_1[0], q5))
        return _resize(conv(self.GC_conv, _resize(x, size16)), size8)


class FGR(nn.Module):
    """Per class k and pixel: sum_m w[k, m] * [a1, a2, a3, pred_k][m] at 1/8."""

    ops = REFERENCE_OPS

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.gwl = GWL(num_classes)
        self.conv_1 = nn.Conv2d(128, 1, 3, 1, 1, bias=False)
        self.conv_2 = nn.Conv2d(128, 1, 3, 1, 1, bias=False)
        self.conv_3 = nn.Conv2d(128, 1, 3, 1, 1, bias=False)
        for c in (self.conv_1, self.conv_2, self.conv_3):
            _kaiming_a1(c)

    def forward(self, q5, f3, f2, f1, pred):
        conv = self.ops.conv
        size = f1.shape[2:]
        weight = self.gwl(q5, f2.shape[2:], size)
        b, _, h, w = weight.shape
        k = self.num_classes
        a = torch.cat(
            [conv(self.conv_1, _resize(f3, size)), conv(self.conv_2, _resize(f2, size)), conv(self.conv_3, f1)], 1
        )
        g = torch.cat([a.unsqueeze(1).expand(b, k, 3, h, w), pred.unsqueeze(2)], dim=2)  # B K 4 h w
        return torch.sum(g * weight.reshape(b, k, 4, h, w), dim=2)


class SegHead(nn.Module):
    """Upstream ``SegHead(256, 64, K, up_factor=16)``: CBR 3x3, conv 1x1 (+bias), PixelShuffle(16)."""

    ops = REFERENCE_OPS

    def __init__(self, cin: int, mid: int, num_classes: int, up_factor: int = AUX_UPSAMPLE):
        super().__init__()
        self.conv = CBR(cin, mid, 3)
        self.conv_out = nn.Conv2d(mid, num_classes * up_factor**2, 1, bias=True)
        self.up = nn.PixelShuffle(up_factor)
        _kaiming_a1(self.conv_out)

    def forward(self, x):
        return self.up(self.ops.conv(self.conv_out, self.conv(x)))


class MGSeg(nn.Module):
    """NCHW normalised images -> (B, K, H, W) main logits; ``outputs`` -> (main, pred, aux)."""

    LOSS_WEIGHTS = (1.0, 0.4, 0.4)

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.resnet = Backbone()
        self.hafa = HAFA(num_classes)
        self.fgr = FGR(num_classes)
        self.conv_out16 = SegHead(256, 64, num_classes, up_factor=AUX_UPSAMPLE)

    @property
    def ops(self) -> ReferenceOps:
        return self.hafa.ops

    def use_ops(self, ops: ReferenceOps) -> MGSeg:
        """Run every module of this network through the backend ``ops`` (returns self)."""
        return use_ops(self, ops)

    def _main(self, x):
        c2, c3, c4 = self.resnet(x)
        f3, f2, f1, pred = self.hafa(c2, c3, c4)
        return self.fgr(c4, f3, f2, f1, pred), pred, c3

    def forward(self, x):
        h, _, _ = self._main(x)
        return _resize(h, x.shape[2:])  # upstream: x8

    def outputs(self, x):
        """(main, pred, aux), each (B, K, H, W) at the input size."""
        size = x.shape[2:]
        h, pred, c3 = self._main(x)
        return _resize(h, size), _resize(pred, size), _resize(self.conv_out16(c3), size)
