"""SFANet as a plain ``torch.nn`` module (NCHW): the PyTorch twin of :mod:`jax_csfcn.zoo.sfanet`.

Paper: "Stage-Aware Feature Alignment Network for Real-Time Semantic Segmentation of Street
Scenes", IEEE T-ITS 2021; upstream kaigelee/CSFCN ``models/SFANet.py`` built as
``SFANet(n_classes, output_aux=True)``.  Module names, nesting and registration order are the
upstream's (``resnet.stem``, ``resnet.layer1..4`` with SCA at index 1 of layers 2-4,
``resnet.cbr1..3``, ``sfa4..sfa1``, ``conv_out``, ``conv_out1..4``), so an upstream
``state_dict`` loads with ``strict=True`` in the same key order (254 entries, 12,793,438
parameters at 19 classes; only the heads' last convs depend on K).  The architecture, the
upstream quirks and what we do about them are described in :mod:`jax_csfcn.zoo.sfanet`; in short:

* ``forward(x)``: main logits (B, K, H, W); ``outputs(x)``: (main, aux1, aux2, aux3, aux4), all at
  the input size.  Upstream's heads upsample by a fixed ``scale_factor`` (wrong sizes unless H, W
  are multiples of 4 * factor: aux4 is 736 x 960 at 720 x 960); here each head is resized to the
  input size, which equals upstream wherever upstream's size is right (align_corners=True).
* The aux heads are always built; ``forward`` does not compute them (upstream's
  ``output_aux=False`` would return int64 argmax labels instead of logits).
* ECA's kernel is 3 everywhere, as upstream actually builds it (its k = 5 for 512 channels is
  passed as ECA's ``channel`` argument and lost).
* FAA's sampling grid is built on the offsets' device and dtype; upstream builds it on the CPU in
  fp32 and copies it to the device on every call (4 per forward), which only costs time.
* ``sfa4.cbr`` normalises the 1 x 1 global-average map: in training PyTorch needs batch >= 2.
* The stem conv has no BN and no ReLU (upstream has no ``bn1``).

BatchNorm folding: every conv + BN pair below goes through ``self.ops.conv_bn`` -- the
BasicBlocks, the CBRs (``conv.0`` + ``conv.1``), FEB_4/FEB_3's ``conv_1x1`` + ``bn_2`` and
FEB_2's ``conv_1`` + ``bn_1`` and ``conv_2`` + ``bn_2``.  FEB_4/FEB_3's ``bn_1`` cannot be folded:
it reads ``dw_conv_1``'s output, which the concatenation also takes raw; it is called directly.
Convs with no BN after them (stem, SCA 1x1s, FAA offsets, depthwise convs, head classifiers) go
through ``self.ops.conv``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch_deploy.model import REFERENCE_OPS, BasicBlock, ReferenceOps, use_ops


def _kaiming_a1(conv: nn.Conv2d) -> None:
    """Upstream's ``kaiming_normal_(a=1)`` for the FEB and FAA convs."""
    nn.init.kaiming_normal_(conv.weight, a=1)


class ECALayer(nn.Module):
    """Upstream ``eca_layer``: the channel gate sigmoid(Conv1d_k3(GAP(x))) as (B, C, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        y = self.avg_pool(x)  # B C 1 1; the channels are the Conv1d's length axis
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return self.sigmoid(y)


class SCA(nn.Module):
    """x * sigmoid(1x1 conv C -> 1) + x * ECA gate."""

    ops = REFERENCE_OPS

    def __init__(self, channels: int):
        super().__init__()
        self.spatial = nn.Sequential(nn.Conv2d(channels, 1, 1, bias=False), nn.Sigmoid())
        self.channel = ECALayer()

    def forward(self, x):
        channel = self.channel(x)  # upstream's order (and so its backward's summation order)
        spatial = torch.sigmoid(self.ops.conv(self.spatial[0], x))
        return x * spatial + x * channel


class CBR(nn.Module):
    """conv k x k (no bias) + BN + ReLU as ``conv.0/1/2`` (an nn.Sequential)."""

    ops = REFERENCE_OPS

    def __init__(self, cin: int, cout: int, k: int = 1):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    def forward(self, x):
        return self.ops.conv_bn(self.conv[0], self.conv[1], x, relu=True)


class Backbone(nn.Module):
    """ResNet-18 without stem BN/ReLU, SCA inside layers 2-4, cbr1..3 and the global average."""

    ops = REFERENCE_OPS

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64, 1), BasicBlock(64, 64, 1))
        cin = 64
        for i, cout in ((2, 128), (3, 256), (4, 512)):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, 2), SCA(cout), BasicBlock(cout, cout, 1)))
            cin = cout
        # Upstream's ResNet initialises its own convs (the SCA 1x1s included; not the Conv1d)
        # kaiming fan_out and its BNs to (1, 0); cbr1..3 keep PyTorch's defaults.
        for m in (self.stem, self.layer1, self.layer2, self.layer3, self.layer4):
            for mod in m.modules():
                if isinstance(mod, nn.Conv2d):
                    nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        self.cbr1 = CBR(128, 128, 3)
        self.cbr2 = CBR(256, 128, 3)
        self.cbr3 = CBR(512, 128, 3)
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.maxpool(self.ops.conv(self.stem, x))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return c1, self.cbr1(c2), self.cbr2(c3), self.cbr3(c4), self.gap(c4)


class FEBDepthwise(nn.Module):
    """Upstream FEB_4 (dilations 2, 5) and FEB_3 (1, 1)."""

    ops = REFERENCE_OPS

    def __init__(self, channels: int, d1: int, d2: int):
        super().__init__()
        c = channels
        self.dw_conv_1 = nn.Conv2d(c, c, 3, 1, d1, dilation=d1, groups=c, bias=False)
        self.bn_1 = nn.BatchNorm2d(c)
        self.dw_conv_2 = nn.Conv2d(c, c, 3, 1, d2, dilation=d2, groups=c, bias=False)
        self.conv_1x1 = nn.Conv2d(2 * c, c, 1, bias=False)
        self.bn_2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(True)
        self.sca = SCA(c)
        for conv in (self.dw_conv_1, self.dw_conv_2, self.conv_1x1):
            _kaiming_a1(conv)

    def forward(self, x):
        ops = self.ops
        x1 = ops.conv(self.dw_conv_1, x)
        x2 = ops.conv(self.dw_conv_2, self.bn_1(x1))  # bn_1 not foldable: x1 is also used raw
        y = ops.conv_bn(self.conv_1x1, self.bn_2, torch.cat([x1, x2], dim=1))
        return self.sca(ops.add_relu(y, x))


class FEB2(nn.Module):
    """Upstream FEB_2: 3x3 conv + BN, 3x3 conv + BN, ReLU(residual sum), SCA."""

    ops = REFERENCE_OPS

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.conv_1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(c)
        self.conv_2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn_2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(True)
        self.sca = SCA(c)
        for conv in (self.conv_1, self.conv_2):
            _kaiming_a1(conv)

    def forward(self, x):
        ops = self.ops
        y = ops.conv_bn(self.conv_2, self.bn_2, ops.conv_bn(self.conv_1, self.bn_1, x))
        return self.sca(ops.add_relu(y, x))


class FEB1(nn.Module):
    """Upstream FEB_1: the identity."""

    def forward(self, x):
        return x


class FAA(nn.Module):
    """fl sampled (bilinear, zero padding, align_corners) at offsets from cat[fh, fl]; SCA(fh + fl)."""

    ops = REFERENCE_OPS

    def __init__(self, channels: int):
        super().__init__()
        self.offset = nn.Conv2d(2 * channels, 2, 3, 1, 1, bias=False)
        self.sca = SCA(channels)
        _kaiming_a1(self.offset)

    def forward(self, fh, fl):
        offset = self.ops.conv(self.offset, torch.cat([fh, fl], dim=1))
        return self.sca(self.ops.align_add(fh, fl, offset))  # optimize: kernels.sfc_fuse, one group


class SFA(nn.Module):
    def __init__(self, cbr_in: int, channels: int, feb: nn.Module):
        super().__init__()
        self.cbr = CBR(cbr_in, channels, 1)
        self.feb = feb
        self.faa = FAA(channels)

    def forward(self, fh, fl):
        fl = F.interpolate(self.cbr(fl), size=fh.shape[2:], mode="bilinear", align_corners=True)
        return self.faa(self.feb(fh), fl)


class SegHead(nn.Module):
    """1x1 CBR to 64, 3x3 conv to K (no bias), bilinear (align_corners) to ``size``."""

    ops = REFERENCE_OPS

    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.block = nn.Sequential(CBR(cin, 64, 1), nn.Conv2d(64, num_classes, 3, 1, 1, bias=False))

    def forward(self, x, size):
        y = self.ops.conv(self.block[1], self.block[0](x))
        return F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=True)


class SFANet(nn.Module):
    """Normalised (B, 3, H, W) images -> (B, K, H, W) main logits; ``outputs``: main + 4 aux."""

    LOSS_WEIGHTS = (1.0, 0.4, 0.4, 0.4, 0.4)

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.resnet = Backbone()
        self.sfa4 = SFA(512, 128, FEBDepthwise(128, 2, 5))
        self.sfa3 = SFA(128, 128, FEBDepthwise(128, 1, 1))
        self.sfa2 = SFA(128, 128, FEB2(128))
        self.sfa1 = SFA(128, 64, FEB1())
        self.conv_out = SegHead(128, num_classes)
        self.conv_out1 = SegHead(64, num_classes)
        self.conv_out2 = SegHead(128, num_classes)
        self.conv_out3 = SegHead(128, num_classes)
        self.conv_out4 = SegHead(128, num_classes)

    @property
    def ops(self) -> ReferenceOps:
        return self.conv_out.ops

    def use_ops(self, ops: ReferenceOps) -> SFANet:
        """Run every module of this network through the backend ``ops`` (returns self)."""
        return use_ops(self, ops)

    def _features(self, x):
        feat4, feat8, feat16, feat32, gap = self.resnet(x)
        sfa4 = self.sfa4(feat32, gap)
        sfa3 = self.sfa3(feat16, sfa4)
        sfa2 = self.sfa2(feat8, sfa3)
        sfa1 = self.sfa1(feat4, sfa2)
        return feat4, sfa1, sfa2, sfa3, sfa4

    def forward(self, x):
        feat4, sfa1, *_ = self._features(x)
        return self.conv_out(torch.cat([feat4, sfa1], dim=1), x.shape[2:])

    def outputs(self, x):
        """(main, aux1, aux2, aux3, aux4), each (B, K, H, W)."""
        size = x.shape[2:]
        feat4, sfa1, sfa2, sfa3, sfa4 = self._features(x)
        main = self.conv_out(torch.cat([feat4, sfa1], dim=1), size)
        heads = (self.conv_out1, self.conv_out2, self.conv_out3, self.conv_out4)
        return (main, *(head(f, size) for head, f in zip(heads, (sfa1, sfa2, sfa3, sfa4))))
