"""CSFCN and CSFCN-Tiny as plain ``torch.nn`` modules (NCHW), the PyTorch twin.

Same structure and names as the upstream release (kaigelee/CSFCN ``models/csfcn.py`` and
``models/csfcn_tiny.py``) and as :mod:`jax_csfcn.model`: an upstream ``state_dict`` loads
with ``strict=True`` and this model's ``state_dict`` has exactly the upstream key set.
It is the reference that the fast path (:mod:`torch_deploy.optimize`) and the parity
tests compare against, and it runs on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from csfcn.model_config import HEAD_UPSAMPLE, PYRAMID_GRIDS, SFC_GROUPS, ModelConfig


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision-named ResNet-18 trunk returning (feat8, feat32)."""

    def __init__(self, stem: str = "torchvision"):
        super().__init__()
        if stem == "torchvision":
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        else:  # timm resnet18d / ResNet-v1c deep stem
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, 32, 3, 2, 1, bias=False),
                nn.BatchNorm2d(32),
                nn.ReLU(inplace=True),
                nn.Conv2d(32, 32, 3, 1, 1, bias=False),
                nn.BatchNorm2d(32),
                nn.ReLU(inplace=True),
                nn.Conv2d(32, 64, 3, 1, 1, bias=False),
            )
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (cout, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), start=1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        return feat8, self.layer4(self.layer3(feat8))


def pyramid_pool(x: torch.Tensor, grids=PYRAMID_GRIDS) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, S): the upstream PSPModule, pooled once for keys and values."""
    b, c, h, w = x.shape
    ar = w / h
    return torch.cat([F.adaptive_avg_pool2d(x, (g, max(1, round(ar * g)))).reshape(b, c, -1) for g in grids], dim=2)


class LocalAttention(nn.Module):
    def __init__(self, channels: int, inter: int):
        super().__init__()
        self.conv = nn.Sequential(ConvBNReLU(channels, inter, 1), nn.Conv2d(inter, channels, 3, padding=1, bias=False))

    def forward(self, x):
        return x * torch.tanh(self.conv(x)) + x


class CFC(nn.Module):
    def __init__(self, cin: int = 512, inter: int = 256, local_inter: int = 64):
        super().__init__()
        self.reduce_channel = ConvBNReLU(cin, inter, 3)
        self.query_conv = nn.Conv2d(inter, 32, 1)
        self.key_conv = nn.Conv1d(inter, 32, 1)
        self.value_conv = nn.Conv1d(inter, inter, 1)
        self.local_attention = LocalAttention(inter, local_inter)

    def forward(self, x):
        x = self.reduce_channel(x)
        return self.attend(x, pyramid_pool(x))

    def attend(self, x, pooled, valid=None):
        """docs/architecture.md, CFC steps 3-6 on the reduced map ``x`` and its pooled positions
        (B, C, S). ``valid`` (S,) bool masks padded positions out of the softmax (the ONNX
        export's shape-generic pooling pads S to a bound)."""
        b, c, h, w = x.shape
        query = self.query_conv(x).reshape(b, 32, -1).permute(0, 2, 1)  # B N d
        scores = torch.matmul(query, self.key_conv(pooled))  # B N S
        if valid is not None:
            scores = scores.masked_fill(~valid, float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        context = torch.bmm(self.value_conv(pooled), attn.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.local_attention(context)


def sfc_grid(n: int, h: int, w: int, offsets: torch.Tensor) -> torch.Tensor:
    """Sampling grid (n*G, H, W, 2) from the (n, 2G, H, W) offsets, as upstream."""
    norm = torch.tensor([w, h], dtype=offsets.dtype, device=offsets.device)
    kw = {"dtype": offsets.dtype, "device": offsets.device}
    ys = torch.linspace(-1.0, 1.0, h, **kw).view(-1, 1).expand(h, w)
    xs = torch.linspace(-1.0, 1.0, w, **kw).view(1, -1).expand(h, w)
    grid = torch.stack((xs, ys), dim=2)
    return grid + offsets.reshape(n * SFC_GROUPS, 2, h, w).permute(0, 2, 3, 1) / norm


def sfc_sample_and_gate(cp: torch.Tensor, sp: torch.Tensor, r: torch.Tensor, grid=None) -> torch.Tensor:
    """docs/architecture.md, SFC steps 4-7 (the op that ``kernels.sfc_fuse`` fuses). ``grid``:
    the function building the sampling grid (default :func:`sfc_grid`; the ONNX export passes a
    shape-generic one)."""
    grid = grid or sfc_grid
    n, c, h, w = cp.shape
    g = SFC_GROUPS
    cp = F.grid_sample(cp.reshape(n * g, -1, h, w), grid(n, h, w, r[:, 0 : 2 * g]), align_corners=True)
    sp = F.grid_sample(sp.reshape(n * g, -1, h, w), grid(n, h, w, r[:, 2 * g : 4 * g]), align_corners=True)
    att = 1 + torch.tanh(r[:, 4 * g : 4 * g + 2])
    return sp.reshape(n, c, h, w) * att[:, 0:1] + cp.reshape(n, c, h, w) * att[:, 1:2]


class SFC(nn.Module):
    def __init__(self, tiny: bool = False):
        super().__init__()
        self.tiny = tiny
        # Registration order as upstream, so state_dict keys come out in the same order.
        self.conv_8 = ConvBNReLU(128, 128, 3)
        if not tiny:
            self.cp1x1 = nn.Conv2d(128, 32, 1, bias=False)
        self.conv_32 = ConvBNReLU(256, 128, 3)
        if not tiny:
            self.sp1x1 = nn.Conv2d(128, 32, 1, bias=False)
        self.conv_offset = nn.Sequential(
            ConvBNReLU(256 if tiny else 64, 64, 1), nn.Conv2d(64, SFC_GROUPS * 4 + 2, 3, padding=1, bias=False)
        )

    def forward(self, cp, sp, grid=None):
        cp, sp, r = self.offsets(cp, sp)
        return sfc_sample_and_gate(cp, sp, r, grid)

    def offsets(self, feat8, cfc_out):
        """docs/architecture.md, SFC steps 1-3: (cp, sp at 1/8, the offset/gate map r)."""
        sp = F.interpolate(self.conv_32(cfc_out), feat8.shape[2:], mode="bilinear", align_corners=True)
        cp = self.conv_8(feat8)
        cat = torch.cat([cp, sp], 1) if self.tiny else torch.cat([self.cp1x1(cp), self.sp1x1(sp)], 1)
        return cp, sp, self.conv_offset(cat)


class Head(nn.Module):
    def __init__(self, num_classes: int, tiny: bool = False):
        super().__init__()
        self.tiny = tiny
        self.conv = ConvBNReLU(128, 128, 3)
        self.conv_out = nn.Conv2d(128, num_classes if tiny else num_classes * HEAD_UPSAMPLE**2, 1, bias=True)

    def forward(self, x):
        x = self.conv_out(self.conv(x))
        if self.tiny:
            return F.interpolate(x, scale_factor=HEAD_UPSAMPLE, mode="bilinear", align_corners=True)
        return F.pixel_shuffle(x, HEAD_UPSAMPLE)


class CSFCN(nn.Module):
    """NCHW normalised images -> NCHW logits (B, K, 8*H8, 8*W8)."""

    def __init__(self, config: ModelConfig | None = None, **kwargs):
        super().__init__()
        config = config or ModelConfig(**kwargs)
        self.config = config
        tiny = config.variant == "csfcn_tiny"
        self.resnet = ResNet18(config.stem)
        self.cfc = CFC(local_inter=32 if tiny else 64)
        self.sfc = SFC(tiny)
        self.conv_out32 = Head(config.num_classes, tiny)
        self.reset_parameters()

    def reset_parameters(self):
        """docs/architecture.md, Initialisation: kaiming fan_out convs, unit BN, zero biases and gates."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv1d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.cfc.local_attention.conv[1].weight)
        nn.init.zeros_(self.sfc.conv_offset[1].weight)

    def forward(self, x):
        feat8, feat32 = self.resnet(x)
        return self.conv_out32(self.sfc(feat8, self.cfc(feat32)))
