"""ICNet (Zhao et al., ECCV 2018) as a plain ``torch.nn`` module (NCHW): the PyTorch twin of
:mod:`jax_csfcn.zoo.icnet`, whose docstring describes the network, its outputs, the upstream
bugs and what this port does instead (the 1/2-scale pass stops at layer2; the full output is
exactly H x W; the unused ``pretrained.fc`` is kept; labels are resized by nearest neighbour in
training, not bilinearly as upstream's loss does).

Module names, nesting and registration order are upstream's (kaigelee/CSFCN ``models/icnet.py``
on liminn/ICNet-pytorch's ``resnet50_v1s``): ``pretrained`` (conv1, bn1, layer1..4, fc),
``conv_sub1``, ``head`` (cff_12, cff_24, conv_cls); the parameter-free ``ppm`` is a function
here (it has no ``state_dict`` entry).  An upstream ``state_dict`` (377 entries at any class
count) loads with ``strict=True`` in the same key order.

Every BatchNorm follows its conv and reads nothing else, so every conv + BN pair runs through
``self.ops.conv_bn`` and folds at deployment; no BN is left standalone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch_deploy.model import REFERENCE_OPS

# (planes, blocks, stride, dilation of block 0, dilation of the others): jax_csfcn.zoo.icnet.STAGES.
STAGES = ((64, 3, 1, 1, 1), (128, 4, 2, 1, 1), (256, 6, 1, 1, 2), (512, 3, 1, 2, 4))
EXPANSION = 4
PYRAMID_BINS = (1, 2, 3, 6)


class Bottleneck(nn.Module):
    """ResNet-v1b bottleneck (stride and dilation on the 3x3 conv), liminn's ``BottleneckV1b`` names."""

    ops = REFERENCE_OPS

    def __init__(self, cin: int, planes: int, stride: int, dilation: int):
        super().__init__()
        cout = planes * EXPANSION
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        ops = self.ops
        out = ops.conv_bn(self.conv1, self.bn1, x, relu=True)
        out = ops.conv_bn(self.conv2, self.bn2, out, relu=True)
        out = ops.conv_bn(self.conv3, self.bn3, out)
        identity = x if self.downsample is None else ops.conv_bn(self.downsample[0], self.downsample[1], x)
        return ops.add_relu(out, identity)


class ResNet50V1s(nn.Module):
    """liminn's ``ResNetV1b(BottleneckV1b, [3, 4, 6, 3], deep_stem=True, dilated=True)``:
    deep stem 64/64/128, output stride 8, the never-called ``avgpool`` + ``fc`` kept."""

    ops = REFERENCE_OPS

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, 1, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 128, 3, 1, 1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 128
        for i, (planes, n, stride, first_dil, dil) in enumerate(STAGES, start=1):
            blocks = [Bottleneck(cin, planes, stride, first_dil)]
            cin = planes * EXPANSION
            blocks += [Bottleneck(cin, planes, 1, dil) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, 1000)  # never called (jax_csfcn.zoo.icnet docstring)
        for m in self.modules():  # liminn's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x, depth: int):
        """The output of layer ``depth`` (1..4): 1/4, 1/8, 1/8, 1/8 of the input."""
        ops, s = self.ops, self.conv1
        x = ops.conv_bn(s[3], s[4], ops.conv_bn(s[0], s[1], x, relu=True), relu=True)
        x = self.maxpool(ops.conv_bn(s[6], self.bn1, x, relu=True))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4)[:depth]:
            x = layer(x)
        return x


class ConvBNReLU(nn.Module):
    """``conv_sub1.i``: upstream ``_ConvBNReLU(cin, cout, 3, 2)`` (conv, bn, relu)."""

    ops = REFERENCE_OPS

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.ops.conv_bn(self.conv, self.bn, x, relu=True)


def pyramid_pooling(x: torch.Tensor) -> torch.Tensor:
    """Upstream's ``PyramidPoolingModule``: x plus each bin's pooled map resized back, in order
    (pooled in fp32 at least, as the Flax side)."""
    feat = x
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    for b in PYRAMID_BINS:
        pooled = F.adaptive_avg_pool2d(xf, b).to(x.dtype)
        feat = feat + F.interpolate(pooled, size=x.shape[2:], mode="bilinear", align_corners=True)
    return feat


class CascadeFeatureFusion(nn.Module):
    """CFF: ``relu(BN(dil-2 3x3 conv(resize(x_low))) + BN(1x1 conv(x_high)))`` and the aux logits
    ``conv_low_cls`` of the low branch's BN output."""

    ops = REFERENCE_OPS

    def __init__(self, low: int, high: int, out: int, num_classes: int):
        super().__init__()
        self.conv_low = nn.Sequential(nn.Conv2d(low, out, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(out))
        self.conv_high = nn.Sequential(nn.Conv2d(high, out, 1, bias=False), nn.BatchNorm2d(out))
        self.conv_low_cls = nn.Conv2d(out, num_classes, 1, bias=False)

    def forward(self, x_low, x_high, aux: bool = True):
        ops = self.ops
        x_low = F.interpolate(x_low, size=x_high.shape[2:], mode="bilinear", align_corners=True)
        low = ops.conv_bn(self.conv_low[0], self.conv_low[1], x_low)
        high = ops.conv_bn(self.conv_high[0], self.conv_high[1], x_high)
        cls = ops.conv(self.conv_low_cls, low) if aux else None  # before the sum: low must stay intact
        return ops.add_relu(high, low), cls


class ICHead(nn.Module):
    """``head``: upstream ``_ICHead`` (cff_12 registered before cff_24, as there)."""

    ops = REFERENCE_OPS

    def __init__(self, num_classes: int):
        super().__init__()
        self.cff_12 = CascadeFeatureFusion(128, 64, 128, num_classes)
        self.cff_24 = CascadeFeatureFusion(2048, 512, 128, num_classes)
        self.conv_cls = nn.Conv2d(128, num_classes, 1, bias=False)

    def forward(self, x_sub1, x_sub2, x_sub4, aux: bool = True):
        """(logits at 1/4, cls12 at 1/8, cls24 at 1/16); the cls are None without ``aux``."""
        x24, cls24 = self.cff_24(x_sub4, x_sub2, aux)
        x12, cls12 = self.cff_12(x24, x_sub1, aux)
        x4 = F.interpolate(x12, scale_factor=2, mode="bilinear", align_corners=True)
        return self.ops.conv(self.conv_cls, x4), cls12, cls24


class ICNet(nn.Module):
    """ICNet on a dilated ResNet-50-v1s; (B, 3, H, W) normalised images -> (B, K, H, W) logits."""

    LOSS_WEIGHTS = (0.0, 1.0, 0.4, 0.4)

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.pretrained = ResNet50V1s()
        self.conv_sub1 = nn.Sequential(ConvBNReLU(3, 32), ConvBNReLU(32, 32), ConvBNReLU(32, 64))
        self.head = ICHead(num_classes)

    def _forward(self, x, aux: bool):
        x_sub1 = self.conv_sub1(x)
        # The 1/2 pass first, as upstream (order of the shared BNs' running-statistics updates).
        x_sub2 = self.pretrained.features(F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=True), 2)
        x_sub4 = self.pretrained.features(F.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=True), 4)
        logits4, cls12, cls24 = self.head(x_sub1, x_sub2, pyramid_pooling(x_sub4), aux)
        full = F.interpolate(logits4, size=x.shape[2:], mode="bilinear", align_corners=True)
        return full, logits4, cls12, cls24

    def outputs(self, x):
        """(full H x W logits, 1/4 logits, cls12 at 1/8, cls24 at 1/16), upstream's order."""
        return self._forward(x, aux=True)

    def forward(self, x):
        return self._forward(x, aux=False)[0]
