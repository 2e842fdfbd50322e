"""SwiftNet-RN18, single scale, as plain ``torch.nn`` modules (NCHW): the twin of
:mod:`jax_csfcn.zoo.swiftnet` (see there for the paper, the network and the upstream quirks).

Module names, nesting and registration order are those of orsic/swiftnet's
``SemsegModel(resnet18(efficient=False, mean, std), num_classes)`` (``models/semseg.py``,
``models/resnet/resnet_single_scale.py``, ``models/util.py``), so its ``state_dict`` -- 195
entries with the non-BN buffers ``backbone.img_mean`` / ``backbone.img_std`` [1, 3, 1, 1] --
loads with ``strict=True`` and in the same key order.  Differences from upstream: no
ImageNet download in the constructor, no prints or warnings, the input tensor is never
modified (upstream normalises it in place), the input is ImageNet-normalised like every csfcn
model's (mapped back to 0..255 before SwiftNet's own normalisation), and ``forward`` returns
only the logits at the input size.  The skips are post-ReLU, as upstream's in-place ReLU makes
them (:class:`torch_deploy.model.BasicBlock` returns the ReLU'd sum).

Folding (deployment): the backbone's conv + BN pairs run through ``ops.conv_bn``
(:class:`torch_deploy.model.ResNet18`), and so does ``backbone.upsample.2.blend_conv.conv`` +
``logits.norm``: that BN reads only that conv's output, so it folds into it (an output affine,
the conv gaining a bias).  The other eleven BNs of the pre-activation units (BN -> ReLU ->
conv) are called directly and stay at inference, one per-channel scale + shift + ReLU pass
each: a BN before a ReLU cannot fold into the conv after it, and none of them reads one conv's
output alone -- ``spp_bn`` and the three ``bottleneck`` BNs read the backbone's post-ReLU maps,
``spp0..2`` pooled maps of a conv output that is also used raw, ``spp_fuse`` a concatenation,
``upsample.*.blend_conv.norm`` the sum of a resized map and a bottleneck output.  (The last two
kinds are affine in conv outputs only through linear resizes, so a two-conv fold would be
possible in principle; we do not do it.)  The upstream speed script
(kaigelee/CSFCN ``models/speed/swiftnet_speed.py``) drops all of these BNs instead, and the
input normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from csfcn.model_config import IMAGENET_MEAN, IMAGENET_STD
from torch_deploy.model import REFERENCE_OPS, ReferenceOps, ResNet18, use_ops

# configs/rn18_single_scale.py (jax_csfcn.zoo.swiftnet has the same constants).
SWIFTNET_MEAN = (73.15, 82.90, 72.3)
SWIFTNET_STD = (47.67, 48.49, 47.73)
SPP_GRIDS = (8, 4, 2)
SPP_MOMENTUM = 0.005
NUM_FEATURES = 128
SPP_LEVEL = NUM_FEATURES // len(SPP_GRIDS)  # 42


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class BNReluConv(nn.Sequential):
    """Upstream ``_BNReluConv``: ``norm`` -> ``relu`` -> ``conv``; the BN cannot fold into the conv."""

    ops = REFERENCE_OPS

    def __init__(self, cin: int, cout: int, k: int, *, momentum: float = 0.1, bias: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin, momentum=momentum)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        """The conv's input: relu(norm(x))."""
        return F.relu(self.norm(x), inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.conv(self.conv, self.act(x))


class SpatialPyramidPooling(nn.Module):
    """``backbone.spp`` with its units in ``.spp``: spp_bn, spp0..2, spp_fuse (BN momentum 0.005)."""

    def __init__(self, cin: int = 512):
        super().__init__()
        self.spp = nn.Sequential()
        self.spp.add_module("spp_bn", BNReluConv(cin, NUM_FEATURES, 1, momentum=SPP_MOMENTUM))
        for i in range(len(SPP_GRIDS)):
            self.spp.add_module(f"spp{i}", BNReluConv(NUM_FEATURES, SPP_LEVEL, 1, momentum=SPP_MOMENTUM))
        fused = NUM_FEATURES + len(SPP_GRIDS) * SPP_LEVEL
        self.spp.add_module("spp_fuse", BNReluConv(fused, NUM_FEATURES, 1, momentum=SPP_MOMENTUM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        ar = size[1] / size[0]
        x = self.spp.spp_bn(x)
        levels = [x]
        for i, g in enumerate(SPP_GRIDS):
            pooled = F.adaptive_avg_pool2d(x, (g, max(1, round(ar * g))))
            levels.append(_resize(getattr(self.spp, f"spp{i}")(pooled), size))
        return self.spp.spp_fuse(torch.cat(levels, 1))


class Upsample(nn.Module):
    """Upstream ``_Upsample``: ``blend_conv(resize(x, skip size) + bottleneck(skip))``."""

    ops = REFERENCE_OPS

    def __init__(self, skip_channels: int):
        super().__init__()
        self.bottleneck = BNReluConv(skip_channels, NUM_FEATURES, 1)
        self.blend_conv = BNReluConv(NUM_FEATURES, NUM_FEATURES, 3)

    def blend_input(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``blend_conv.conv``'s input: relu(norm(resize(x) + bottleneck(skip)))."""
        skip = self.bottleneck(skip)
        return self.blend_conv.act(_resize(x, skip.shape[2:]) + skip)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.ops.conv(self.blend_conv.conv, self.blend_input(x, skip))


class Backbone(ResNet18):
    """Upstream ``ResNet`` (``backbone``): buffers ``img_mean`` / ``img_std``, the torchvision
    ResNet-18, ``spp`` and ``upsample`` (``upsample.0`` takes the 1/16 skip)."""

    def __init__(self):
        super().__init__("torchvision")
        # state_dict lists a module's own buffers before its children: img_* come first, as upstream.
        self.register_buffer("img_mean", torch.tensor(SWIFTNET_MEAN).view(1, -1, 1, 1))
        self.register_buffer("img_std", torch.tensor(SWIFTNET_STD).view(1, -1, 1, 1))
        self.spp = SpatialPyramidPooling(512)
        self.upsample = nn.ModuleList([Upsample(c) for c in (256, 128, 64)])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised x -> 0..255 -> SwiftNet's normalisation (a new tensor)."""
        m = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x255 = (x * s + m) * 255.0
        return (x255 - self.img_mean) / self.img_std

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c1, c2, c3, spp(c4)): the skips at 1/4, 1/8, 1/16 and the SPP output at 1/32."""
        c1, c2, c3, c4 = self.stages(self.normalize(x))
        return c1, c2, c3, self.spp(c4)


class SwiftNet(nn.Module):
    """Normalised (B, 3, H, W) images -> logits (B, K, H, W)."""

    LOSS_WEIGHTS = (1.0,)
    IMAGENET = "resnet18"
    ops = REFERENCE_OPS

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = Backbone()
        self.logits = BNReluConv(NUM_FEATURES, num_classes, 1, bias=True)
        self.reset_parameters()

    def reset_parameters(self):
        """As upstream: kaiming fan-out convs and unit BNs in the backbone; ``logits.conv``
        keeps ``nn.Conv2d``'s default initialisation."""
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.logits.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def imagenet_key(key: str) -> str | None:
        """torchvision ``resnet18`` key -> this model's key (``fc.*``: unused)."""
        return None if key.startswith("fc.") else "backbone." + key

    def use_ops(self, ops: ReferenceOps) -> SwiftNet:
        """Run every module of this network through the backend ``ops`` (returns self)."""
        return use_ops(self, ops)

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.forward(x),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = self.ops
        c1, c2, c3, y = self.backbone.encode(x)
        up = self.backbone.upsample
        y = up[1](up[0](y, c3), c2)
        # upsample.2's blend conv and logits.norm: a foldable conv + BN pair.
        y = ops.conv_bn(up[2].blend_conv.conv, self.logits.norm, up[2].blend_input(y, c1), relu=True)
        y = ops.conv(self.logits.conv, y)
        return _resize(y, x.shape[2:])
