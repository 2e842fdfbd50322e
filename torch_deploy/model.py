"""CSFCN and CSFCN-Tiny as plain ``torch.nn`` modules (NCHW), the PyTorch twin.

Same structure and names as the upstream release (kaigelee/CSFCN ``models/csfcn.py`` and
``models/csfcn_tiny.py``) and as :mod:`jax_csfcn.model`: an upstream ``state_dict`` loads
with ``strict=True`` and this model's ``state_dict`` has exactly the upstream key set.
It is the reference that the parity tests compare against, and it runs on CPU.

This file is the only place the PyTorch forward pass is written. Its three hot spots (CFC's
pooled attention, SFC's sampling + gating, the head's 1x1 conv + pixel shuffle or argmax) and
its convolutions go through the module's ``ops`` backend (:class:`ReferenceOps` by default, the
plain PyTorch ops). The fast path (:mod:`torch_deploy.optimize`) and the shape-generic ONNX
export (:mod:`tools.export_onnx`) are transformations of this module tree -- BatchNorms
folded, SFC's offset 1x1s folded (:meth:`SFC.forward`'s folded branch) -- with another backend
installed by :meth:`CSFCN.use_ops`; parameters and names stay those of the twin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from csfcn.model_config import (
    DEEP_STEM_WIDTHS,
    HEAD_UPSAMPLE,
    PYRAMID_GRIDS,
    SFC_GROUPS,
    STEMS,
    ModelConfig,
    stem_width,
)
from kernels.sfc_fuse import offset_grid as kernel_offset_grid


def labels_dtype(k: int) -> torch.dtype:
    """The dtype of argmax labels over ``k`` classes: uint8 up to 256 classes, else int32."""
    return torch.uint8 if k <= 256 else torch.int32


class ReferenceOps:
    """The twin's ops in plain PyTorch: what every other backend must equal (docs/architecture.md).

    ``output``: "logits" (B, K, H, W) or "labels" (B, H, W) argmax. A backend overrides the ops
    it runs faster; the module tree calls only these methods for the parts that differ.
    """

    name = "reference"

    def __init__(self, output: str = "logits"):
        if output not in ("logits", "labels"):
            raise ValueError(f"ops: output={output!r}; choose 'logits' or 'labels'")
        self.output = output

    def __repr__(self) -> str:
        return f"{type(self).__name__}(output={self.output!r})"

    # --- convolutions
    def conv(self, conv: nn.Conv2d, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        y = conv(x)
        return F.relu(y, inplace=True) if relu else y  # in place, as upstream (autograd needs no conv output)

    def add_relu(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``relu(x + y)`` (a residual; fast backends may overwrite ``x``)."""
        return F.relu(x + y)

    def conv_bn(self, conv: nn.Conv2d, bn: nn.Module, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """``relu?(bn(conv(x)))``; one conv when the BN was folded into it (``bn`` is Identity)."""
        if isinstance(bn, nn.Identity):
            return self.conv(conv, x, relu)
        y = bn(self.conv(conv, x))
        return F.relu(y, inplace=True) if relu else y  # BN's backward needs its input, not its output

    # --- CFC (docs/architecture.md, CFC)
    def pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pooled (B, C, S), validity mask (S,) or None when every position is real)."""
        return pyramid_pool(x), None

    def attention(self, cfc: CFC, x: torch.Tensor, pooled: torch.Tensor, valid=None) -> torch.Tensor:
        """CFC steps 3-5: the context (B, C, H, W) of every position of ``x`` over ``pooled``."""
        b, c, h, w = x.shape
        query = self.conv(cfc.query_conv, x).reshape(b, cfc.query_conv.out_channels, -1).permute(0, 2, 1)
        scores = torch.matmul(query, cfc.key_conv(pooled))  # B N S
        if valid is not None:
            scores = scores.masked_fill(~valid, float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        return torch.bmm(cfc.value_conv(pooled), attn.permute(0, 2, 1)).reshape(b, c, h, w)

    # --- SFC (docs/architecture.md, SFC)
    def sfc_grid(self, n: int, h: int, w: int, offsets: torch.Tensor) -> torch.Tensor:
        return sfc_grid(n, h, w, offsets)

    def sample_and_gate(self, cp: torch.Tensor, sp: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """SFC steps 4-7 on cp and sp at 1/8."""
        return sfc_sample_and_gate(cp, sp, r, self.sfc_grid)

    def sfc_fuse(self, cp: torch.Tensor, sp32: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """SFC steps 4-7 with sp still at 1/32 (the folded SFC): resize, then sample and gate."""
        sp = F.interpolate(sp32, cp.shape[2:], mode="bilinear", align_corners=True)
        return self.sample_and_gate(cp, sp, r)

    # --- SFANet's feature alignment (docs/zoo.md, Deployment)
    def align_add(self, fh: torch.Tensor, fl: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """``fh + grid_sample(fl, base grid + offset / (W, H))`` (bilinear, zero padding, align
        corners): SFANet's FAA, the one-group case of SFC's sampling, on a 2-channel ``offset``."""
        return fh + F.grid_sample(fl, offset_grid(offset), mode="bilinear", padding_mode="zeros", align_corners=True)

    # --- head (docs/architecture.md, Head)
    def head(self, head: Head, x: torch.Tensor) -> torch.Tensor:
        """The head's 1x1 conv and x8 upsampling of the (already 3x3-convolved) ``x``."""
        y = self.conv(head.conv_out, x)
        if head.tiny:
            y = F.interpolate(y, scale_factor=HEAD_UPSAMPLE, mode="bilinear", align_corners=True)
        else:
            y = F.pixel_shuffle(y, HEAD_UPSAMPLE)
        return y if self.output == "logits" else y.argmax(1).to(labels_dtype(head.num_classes))


REFERENCE_OPS = ReferenceOps()


def use_ops(model: nn.Module, ops: ReferenceOps) -> nn.Module:
    """Run every module of ``model`` that calls a backend (class attribute ``ops``) through ``ops``."""
    for m in model.modules():
        if isinstance(getattr(type(m), "ops", None), ReferenceOps):
            m.ops = ops
    return model


class ConvBNReLU(nn.Sequential):
    ops = REFERENCE_OPS

    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.ops.conv_bn(self.conv, self.bn, x, relu=True)


class BasicBlock(nn.Module):
    ops = REFERENCE_OPS

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
        ops = self.ops
        out = ops.conv_bn(self.conv2, self.bn2, ops.conv_bn(self.conv1, self.bn1, x, relu=True))
        identity = x if self.downsample is None else ops.conv_bn(self.downsample[0], self.downsample[1], x)
        return ops.add_relu(out, identity)


class ResNet18(nn.Module):
    """torchvision-named ResNet-18 trunk returning (feat8, feat32)."""

    ops = REFERENCE_OPS

    def __init__(self, stem: str = "torchvision"):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
        if stem == "torchvision":
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        else:  # deep: timm resnet18d (ResNet-v1c), 32/32/64; deep128: the upstream's, 64/64/128
            a, b, c = DEEP_STEM_WIDTHS[stem]
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, a, 3, 2, 1, bias=False),
                nn.BatchNorm2d(a),
                nn.ReLU(inplace=True),
                nn.Conv2d(a, b, 3, 1, 1, bias=False),
                nn.BatchNorm2d(b),
                nn.ReLU(inplace=True),
                nn.Conv2d(b, c, 3, 1, 1, bias=False),
            )
        cin = stem_width(stem)  # deep128: 128, so layer1.0 gets a projection shortcut
        self.bn1 = nn.BatchNorm2d(cin)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (cout, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), start=1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout

    def stem(self, x):
        """conv1 + bn1 + ReLU + max-pool: the 1/4 map layer1 takes."""
        ops = self.ops
        if isinstance(self.conv1, nn.Conv2d):
            x = ops.conv_bn(self.conv1, self.bn1, x, relu=True)
        else:  # deep stem: (conv, bn, relu) x2, conv, then the trunk's bn1 + relu
            s = self.conv1
            x = ops.conv_bn(s[3], s[4], ops.conv_bn(s[0], s[1], x, relu=True), relu=True)
            x = ops.conv_bn(s[6], self.bn1, x, relu=True)
        return self.maxpool(x)

    def stages(self, x):
        """The four stage outputs (layer1..layer4: 1/4, 1/8, 1/16, 1/32 of the input)."""
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return c1, c2, c3, self.layer4(c3)

    def forward(self, x):
        feat8 = self.layer2(self.layer1(self.stem(x)))
        return feat8, self.layer4(self.layer3(feat8))


def pyramid_pool(x: torch.Tensor, grids=PYRAMID_GRIDS) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, S): the upstream PSPModule, pooled once for keys and values."""
    b, c, h, w = x.shape
    ar = w / h
    return torch.cat([F.adaptive_avg_pool2d(x, (g, max(1, round(ar * g)))).reshape(b, c, -1) for g in grids], dim=2)


class LocalAttention(nn.Module):
    ops = REFERENCE_OPS

    def __init__(self, channels: int, inter: int):
        super().__init__()
        self.conv = nn.Sequential(ConvBNReLU(channels, inter, 1), nn.Conv2d(inter, channels, 3, padding=1, bias=False))

    def forward(self, x):
        return x * torch.tanh(self.ops.conv(self.conv[1], self.conv[0](x))) + x


class CFC(nn.Module):
    ops = REFERENCE_OPS

    def __init__(self, cin: int = 512, inter: int = 256, local_inter: int = 64):
        super().__init__()
        self.reduce_channel = ConvBNReLU(cin, inter, 3)
        self.query_conv = nn.Conv2d(inter, 32, 1)
        self.key_conv = nn.Conv1d(inter, 32, 1)
        self.value_conv = nn.Conv1d(inter, inter, 1)
        self.local_attention = LocalAttention(inter, local_inter)

    def forward(self, x):
        """docs/architecture.md, CFC: reduce, pool (``valid`` masks padded positions out of the
        softmax when a backend pads S to a bound), attend, local attention, residual."""
        x = self.reduce_channel(x)
        pooled, valid = self.ops.pool(x)
        return x + self.local_attention(self.ops.attention(self, x, pooled, valid))


def torch_linspace(n: int, dtype, device) -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, n, dtype=dtype, device=device)


def offset_grid(offset: torch.Tensor) -> torch.Tensor:
    """The twin's sampling grid of a (B, 2, H, W) ``offset``: kernels.sfc_fuse.offset_grid (the one
    grid of every form) on ``torch.linspace``, as the upstream builds it."""
    return kernel_offset_grid(offset, 1, torch_linspace)


def sfc_grid(n: int, h: int, w: int, offsets: torch.Tensor) -> torch.Tensor:
    """SFC's sampling grid (n*G, H, W, 2) from the (n, 2G, H, W) offsets: one grid per group."""
    return offset_grid(offsets.reshape(n * SFC_GROUPS, 2, h, w))


def sfc_sample_and_gate(cp: torch.Tensor, sp: torch.Tensor, r: torch.Tensor, grid=None) -> torch.Tensor:
    """docs/architecture.md, SFC steps 4-7 (the op that ``kernels.sfc_fuse`` fuses). ``grid``:
    the function building the sampling grid (default :func:`sfc_grid`; the ONNX export's backend
    passes a shape-generic one)."""
    grid = sfc_grid if grid is None else grid  # not `grid or ...`: torch 2.11 dynamo breaks the graph on it
    n, c, h, w = cp.shape
    g = SFC_GROUPS
    cp = F.grid_sample(cp.reshape(n * g, -1, h, w), grid(n, h, w, r[:, 0 : 2 * g]), align_corners=True)
    sp = F.grid_sample(sp.reshape(n * g, -1, h, w), grid(n, h, w, r[:, 2 * g : 4 * g]), align_corners=True)
    att = 1 + torch.tanh(r[:, 4 * g : 4 * g + 2])
    return sp.reshape(n, c, h, w) * att[:, 0:1] + cp.reshape(n, c, h, w) * att[:, 1:2]


class SFC(nn.Module):
    ops = REFERENCE_OPS

    def __init__(self, tiny: bool = False):
        super().__init__()
        self.tiny = tiny
        self.folded = False  # set by torch_deploy.optimize.fold_sfc_offsets
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

    def forward(self, feat8, cfc_out):
        if self.folded:
            # docs/architecture.md, "The algebra the fast path relies on", SFC 1x1 folding: the offset branch's 1x1s are two 128 -> 64
            # maps (cp_proj, sp_proj), sp_proj applied at 1/32 before the (linear) resize, and sp
            # itself stays at 1/32 until the sampling op resizes it.
            ops = self.ops
            sp32 = self.conv_32(cfc_out)
            cp = self.conv_8(feat8)
            sp_off = F.interpolate(ops.conv(self.sp_proj, sp32), cp.shape[2:], mode="bilinear", align_corners=True)
            r = ops.conv(self.conv_offset[1], ops.add_relu(ops.conv(self.cp_proj, cp), sp_off))
            return ops.sfc_fuse(cp, sp32, r)
        cp, sp, r = self.offsets(feat8, cfc_out)
        return self.ops.sample_and_gate(cp, sp, r)

    def offsets(self, feat8, cfc_out):
        """docs/architecture.md, SFC steps 1-3: (cp, sp at 1/8, the offset/gate map r)."""
        sp = F.interpolate(self.conv_32(cfc_out), feat8.shape[2:], mode="bilinear", align_corners=True)
        cp = self.conv_8(feat8)
        cat = torch.cat([cp, sp], 1) if self.tiny else torch.cat([self.cp1x1(cp), self.sp1x1(sp)], 1)
        return cp, sp, self.ops.conv(self.conv_offset[1], self.conv_offset[0](cat))


class Head(nn.Module):
    ops = REFERENCE_OPS

    def __init__(self, num_classes: int, tiny: bool = False):
        super().__init__()
        self.tiny = tiny
        self.num_classes = num_classes
        self.conv = ConvBNReLU(128, 128, 3)
        self.conv_out = nn.Conv2d(128, num_classes if tiny else num_classes * HEAD_UPSAMPLE**2, 1, bias=True)

    def forward(self, x):
        return self.ops.head(self, self.conv(x))


class CSFCN(nn.Module):
    """NCHW normalised images -> NCHW logits (B, K, 8*H8, 8*W8)."""

    def __init__(self, config: ModelConfig | None = None, **kwargs):
        super().__init__()
        config = config or ModelConfig(**kwargs)
        self.config = config
        tiny = config.name == "csfcn_tiny"
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

    @property
    def ops(self) -> ReferenceOps:
        return self.conv_out32.ops

    def use_ops(self, ops: ReferenceOps) -> CSFCN:
        """Run every module of this network through the backend ``ops`` (returns self)."""
        return use_ops(self, ops)

    LOSS_WEIGHTS = (1.0,)

    def forward(self, x):
        """Normalised (B, 3, H, W) images -> logits (B, K, H, W), or labels (B, H, W) when the
        backend's output is "labels"."""
        feat8, feat32 = self.resnet(x)
        return self.conv_out32(self.sfc(feat8, self.cfc(feat32)))

    def outputs(self, x):
        """The outputs a training loss reads: the logits alone (the zoo models' have more)."""
        return (self(x),)


def build_twin(config: ModelConfig | None = None, **kwargs) -> nn.Module:
    """The PyTorch factory: CSFCN, CSFCN-Tiny or the zoo twin ``config.name``
    (:mod:`torch_deploy.zoo`), in train mode as any new module, with ``.config`` set."""
    config = config or ModelConfig(**kwargs)
    if not config.is_zoo:
        return CSFCN(config)
    from torch_deploy.zoo import zoo_class  # lazy: each zoo model's module loads on first use

    twin = zoo_class(config.name)(config.num_classes)
    twin.config = config
    return twin
