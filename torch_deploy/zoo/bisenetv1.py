"""BiSeNet V1 as plain ``torch.nn`` modules (NCHW): the PyTorch twin of :mod:`jax_csfcn.zoo.bisenetv1`.

BiSeNet (Yu et al., ECCV 2018), the trainable model of CoinCheung/BiSeNet
``lib/models/bisenetv1.py`` + ``lib/models/resnet.py`` built as ``BiSeNetV1(n_classes,
aux_mode='train')``. The network, the input recipe and every difference from upstream are
described in :mod:`jax_csfcn.zoo.bisenetv1`; in short: no ImageNet download in the constructor,
the context path's nearest x2 and the heads' bilinear x8/x8/x16 (``align_corners=False``) are
resizes to the skip's / the input's size (upstream needs H, W multiples of 32 and crashes at
720x960; where it works the result is the same), the auxiliary heads always exist.

Parameters, buffers and their order are upstream's: its ``state_dict`` (222 entries with the
aux heads) loads here with ``strict=True``. Parameter-free upstream modules are not registered
(the ``nn.ReLU``s, ``cp.up32``/``cp.up16`` and the heads' ``up``: nn.Upsample by a fixed factor,
which this twin replaces by resizes by size), which changes no key.

``forward(x)``: (B, 3, H, W) normalised images -> (B, K, H, W) main logits (the aux heads are not
run); ``outputs(x)``: (main, aux16, aux32) at the input size, ``LOSS_WEIGHTS`` = (1, 1, 1).

Deployment: every BatchNorm reads only the conv registered just before it, so every conv -> BN
pair goes through ``ops.conv_bn`` and deployment folds all of them (``remove_bn`` too):
the backbone, every ConvBNReLU (stride-2 spatial path, ``conv_avg`` on the 1x1 global mean
included) and the attention pairs ``arm16/arm32.conv_atten`` + ``bn_atten`` and ``ffm.conv`` +
``ffm.bn`` (a 1x1 conv of the global mean then BN: affine per channel, foldable into one 1x1
conv with bias). No BN stays unfolded. In training ``conv_avg.bn``, ``bn_atten`` and ``ffm.bn``
see 1x1 maps: PyTorch needs batch >= 2 there.

The CSFCN authors' speed script (``models/speed/bisenetv1_speed.py``) times this network with
every BN deleted and no ReLU after the stem conv, returning logits (13,261,971 parameters). The
folded twin without aux heads is that graph plus the stem ReLU and the folded convs' biases
(6,784 values: 13,268,755 parameters); both are 118.3 GMAC at 1024x2048 (121.4 with the aux heads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch_deploy.model import REFERENCE_OPS, ResNet18


def _init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """Upstream's init of its own convs: ``kaiming_normal_(a=1)``, bias 0."""
    nn.init.kaiming_normal_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class ConvBNReLU(nn.Module):
    """Upstream ``ConvBNReLU(cin, cout, ks, stride, padding=ks // 2)``: ``conv``, ``bn``, ``relu``."""

    ops = REFERENCE_OPS

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1):
        super().__init__()
        self.conv = _init_conv(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False))
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.ops.conv_bn(self.conv, self.bn, x, relu=True)


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    return torch.mean(x, dim=(2, 3), keepdim=True)


class AttentionRefinementModule(nn.Module):
    ops = REFERENCE_OPS

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3)
        self.conv_atten = _init_conv(nn.Conv2d(cout, cout, 1, bias=False))
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        atten = self.ops.conv_bn(self.conv_atten, self.bn_atten, _global_mean(feat))
        return feat * torch.sigmoid(atten)


class ContextPath(nn.Module):
    ops = REFERENCE_OPS

    def __init__(self):
        super().__init__()
        self.resnet = ResNet18("torchvision")
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3)
        self.conv_head16 = ConvBNReLU(128, 128, 3)
        self.conv_avg = ConvBNReLU(512, 128, 1)

    def forward(self, x):
        """(cp8, cp16): the conv_head16 (1/8) and conv_head32 (1/16) outputs."""
        _, feat8, feat16, feat32 = self.resnet.stages(x)
        avg = self.conv_avg(_global_mean(feat32))
        s32 = self.arm32(feat32) + avg
        # Upstream: nearest x2; nearest to the skip's size here (same pixels where x2 fits).
        cp16 = self.conv_head32(F.interpolate(s32, size=feat16.shape[2:], mode="nearest"))
        s16 = self.arm16(feat16) + cp16
        cp8 = self.conv_head16(F.interpolate(s16, size=feat8.shape[2:], mode="nearest"))
        return cp8, cp16


class SpatialPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = ConvBNReLU(3, 64, 7, 2)
        self.conv2 = ConvBNReLU(64, 64, 3, 2)
        self.conv3 = ConvBNReLU(64, 64, 3, 2)
        self.conv_out = ConvBNReLU(64, 128, 1)

    def forward(self, x):
        return self.conv_out(self.conv3(self.conv2(self.conv1(x))))


class FeatureFusionModule(nn.Module):
    ops = REFERENCE_OPS

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1)
        self.conv = _init_conv(nn.Conv2d(cout, cout, 1, bias=False))
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, fsp, fcp):
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.ops.conv_bn(self.conv, self.bn, _global_mean(feat)))
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    ops = REFERENCE_OPS

    def __init__(self, cin: int, mid: int, num_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid, 3)
        self.conv_out = _init_conv(nn.Conv2d(mid, num_classes, 1, bias=True))

    def forward(self, x, size):
        y = self.ops.conv(self.conv_out, self.conv(x))
        # Upstream: nn.Upsample(scale_factor=8 or 16, bilinear); to the input size here.
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class BiSeNetV1(nn.Module):
    """BiSeNet V1 with both auxiliary heads (upstream ``aux_mode='train'`` layout)."""

    LOSS_WEIGHTS = (1.0, 1.0, 1.0)
    ops = REFERENCE_OPS

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.cp = ContextPath()
        self.sp = SpatialPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, num_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, num_classes)
        self.conv_out32 = BiSeNetOutput(128, 64, num_classes)

    def _features(self, x):
        cp8, cp16 = self.cp(x)
        return self.ffm(self.sp(x), cp8), cp8, cp16

    def forward(self, x):
        fused, _, _ = self._features(x)
        return self.conv_out(fused, x.shape[2:])

    def outputs(self, x):
        """(main, aux16, aux32) logits at the input size."""
        size = x.shape[2:]
        fused, cp8, cp16 = self._features(x)
        return self.conv_out(fused, size), self.conv_out16(cp8, size), self.conv_out32(cp16, size)
