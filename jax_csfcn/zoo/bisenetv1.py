"""BiSeNet V1 in Flax NNX (NHWC): the trainable model of CoinCheung/BiSeNet.

BiSeNet: Bilateral Segmentation Network for Real-time Semantic Segmentation (Yu et al., ECCV
2018). Upstream: CoinCheung/BiSeNet ``lib/models/bisenetv1.py`` (``BiSeNetV1(n_classes,
aux_mode='train')``) with the ResNet-18 of ``lib/models/resnet.py``. The PyTorch twin is
:mod:`torch_deploy.zoo.bisenetv1`; module paths mirror the upstream ``state_dict``
(``cp.resnet.*``, ``cp.arm16/arm32/conv_head32/conv_head16/conv_avg``, ``sp.*``, ``ffm.*``,
``conv_out``, ``conv_out16``, ``conv_out32``), 222 entries with the auxiliary heads.

Network (ConvBNReLU = conv without bias -> BN -> ReLU):

* context path ``cp``: torchvision ResNet-18 (:class:`jax_csfcn.backbone.ResNet18`, stem
  "torchvision") gives feat8/feat16/feat32 (layer2..layer4). ``conv_avg`` = ConvBNReLU 1x1
  512 -> 128 of the global mean of feat32; ``arm32``/``arm16`` (attention refinement:
  ConvBNReLU 3x3 to 128, gated by sigmoid(BN(1x1 conv(global mean)))); then
  ``s32 = arm32(feat32) + avg`` -> nearest up to feat16's size -> ``conv_head32`` (the 1/16
  output "cp16"), ``s16 = arm16(feat16) + cp16`` -> nearest up to feat8's size -> ``conv_head16``
  (the 1/8 output "cp8");
* spatial path ``sp``: ConvBNReLU 7x7/2, 3x3/2, 3x3/2 (64 ch), 1x1 to 128, at 1/8;
* ``ffm``: ``f = convblk(cat[sp, cp8])`` (ConvBNReLU 1x1 256 -> 256), then
  ``f * sigmoid(bn(conv(mean f))) + f``;
* heads (ConvBNReLU 3x3 then 1x1 conv with bias, then bilinear ``align_corners=False`` up to the
  input size): ``conv_out`` (256 -> 256 -> K, on the FFM output), ``conv_out16`` (128 -> 64 -> K,
  on cp8, despite its name) and ``conv_out32`` (128 -> 64 -> K, on cp16).

Input: normalised NHWC images. CoinCheung normalises with Cityscapes statistics (mean
0.3257/0.3690/0.3223, std 0.2112/0.2148/0.2115 on [0, 1] RGB); here, as every model of the
csfcn zoo, it gets the project's one input recipe (ImageNet mean/std), so all models see the
same pixels. ``model(x)`` -> main logits (N, H, W, K); ``model.outputs(x)`` -> (main, aux16,
aux32), all at the input size, the order of upstream ``aux_mode='train'``. Upstream trains all
three with OHEM cross-entropy at weight 1 (``tools/train_amp.py``), hence ``LOSS_WEIGHTS``.

Differences from upstream (said plainly):

* Upstream's ``Resnet18.__init__`` always downloads the torchvision ImageNet checkpoint
  (``init_weight``); this constructor downloads nothing. ImageNet weights are loaded by the
  caller through :meth:`BiSeNetV1.imagenet_key` (torchvision key -> ``cp.resnet.`` + key).
* The context path's ``nn.Upsample(scale_factor=2)`` (nearest) is a nearest resize *to the
  skip's size* here. Upstream crashes unless H and W are multiples of 32 (at 720x960 the x2 of
  the 23-row 1/32 map has 46 rows against 45); where it works the two are the same pixels.
* The heads' fixed ``scale_factor`` (x8, x8, x16; bilinear, ``align_corners=False``) is a resize
  to the input size: identical where upstream works (multiples of 32: the exact multiple), and
  every output is at the input size for any H, W (at 720x960 the 1/16 map is 45x60, x16).
* ``aux_mode`` is gone: the auxiliary heads always exist (``__call__`` skips them); 'pred'
  (int32 argmax) is not reproduced.
* Initialisation: the non-backbone convs get upstream's ``kaiming_normal_(a=1)`` (N(0, 1/fan_in)),
  head biases 0; the backbone gets the project's ResNet-18 init (upstream: ImageNet weights).

BatchNorm notes: every BN reads only the output of the conv just before it, so all of them fold
into that conv for inference (the attention BNs ``arm*.bn_atten`` and ``ffm.bn`` and
``cp.conv_avg.bn`` included: each follows a 1x1 conv of the global mean, conv -> BN is affine
per channel). But ``conv_avg``, ``bn_atten`` and ``ffm.bn`` normalise 1x1 maps: in training
their batch statistics are over the N images only. PyTorch refuses batch 1 there; this Flax BN
does not raise and with batch 1 normalises every value to its bias (zero variance), so train
with batch >= 2 per BN group (synchronised over the mesh, the global batch counts).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import nnx

from jax_csfcn import ops
from jax_csfcn.backbone import ResNet18
from jax_csfcn.layers import BatchNorm2d, conv2d, kaiming_a1

_TORCHVISION_TRUNK = re.compile(r"(conv1|bn1|layer[1-4])\.")


def _conv(cin: int, cout: int, k: int, *, stride: int = 1, bias: bool = False, dtype=None, rngs: nnx.Rngs):
    """``nn.Conv2d(cin, cout, k, stride, k // 2, bias=bias)`` with upstream's init,
    ``kaiming_normal_(a=1)`` kernels (:func:`jax_csfcn.layers.kaiming_a1`) and zero biases."""
    return conv2d(cin, cout, k, stride=stride, bias=bias, kernel_init=kaiming_a1, dtype=dtype, rngs=rngs)


def _global_mean(x: jax.Array) -> jax.Array:
    """``torch.mean(x, dim=(2, 3), keepdim=True)`` in NHWC, accumulated in at least fp32."""
    return jnp.mean(ops.at_least_f32(x), axis=(1, 2), keepdims=True).astype(x.dtype)


class ConvBNReLU(nnx.Module):
    """Upstream ``ConvBNReLU(cin, cout, ks, stride, padding=ks // 2)``: paths ``.conv``, ``.bn``."""

    def __init__(self, cin: int, cout: int, k: int = 3, *, stride: int = 1, dtype=None, rngs: nnx.Rngs):
        self.conv = _conv(cin, cout, k, stride=stride, dtype=dtype, rngs=rngs)
        self.bn = BatchNorm2d(cout, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


class AttentionRefinementModule(nnx.Module):
    """``f = conv(x)``; ``f * sigmoid(bn_atten(conv_atten(mean_HW f)))`` (ARM)."""

    def __init__(self, cin: int, cout: int, *, dtype=None, rngs: nnx.Rngs):
        self.conv = ConvBNReLU(cin, cout, 3, dtype=dtype, rngs=rngs)
        self.conv_atten = _conv(cout, cout, 1, dtype=dtype, rngs=rngs)
        self.bn_atten = BatchNorm2d(cout, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        feat = self.conv(x)
        atten = jax.nn.sigmoid(self.bn_atten(self.conv_atten(_global_mean(feat))))
        return feat * atten.astype(feat.dtype)


class ContextPath(nnx.Module):
    """ResNet-18 + two ARMs + global context; returns (cp8, cp16) = (conv_head16, conv_head32) outputs."""

    def __init__(self, *, dtype=None, rngs: nnx.Rngs):
        self.resnet = ResNet18("torchvision", dtype=dtype, rngs=rngs)
        self.arm16 = AttentionRefinementModule(256, 128, dtype=dtype, rngs=rngs)
        self.arm32 = AttentionRefinementModule(512, 128, dtype=dtype, rngs=rngs)
        self.conv_head32 = ConvBNReLU(128, 128, 3, dtype=dtype, rngs=rngs)
        self.conv_head16 = ConvBNReLU(128, 128, 3, dtype=dtype, rngs=rngs)
        self.conv_avg = ConvBNReLU(512, 128, 1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        _, feat8, feat16, feat32 = self.resnet.stages(x)
        avg = self.conv_avg(_global_mean(feat32))  # (N, 1, 1, 128), broadcast over 1/32
        s32 = self.arm32(feat32) + avg
        # Upstream: nearest x2 (nn.Upsample's default mode); to the skip's size here (module docstring).
        cp16 = self.conv_head32(ops.resize_nearest(s32, feat16.shape[1:3]))
        s16 = self.arm16(feat16) + cp16
        cp8 = self.conv_head16(ops.resize_nearest(s16, feat8.shape[1:3]))
        return cp8, cp16


class SpatialPath(nnx.Module):
    """Three stride-2 ConvBNReLUs (7x7, 3x3, 3x3; 64 ch) and a 1x1 to 128: 1/8 of the input."""

    def __init__(self, *, dtype=None, rngs: nnx.Rngs):
        self.conv1 = ConvBNReLU(3, 64, 7, stride=2, dtype=dtype, rngs=rngs)
        self.conv2 = ConvBNReLU(64, 64, 3, stride=2, dtype=dtype, rngs=rngs)
        self.conv3 = ConvBNReLU(64, 64, 3, stride=2, dtype=dtype, rngs=rngs)
        self.conv_out = ConvBNReLU(64, 128, 1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv_out(self.conv3(self.conv2(self.conv1(x))))


class FeatureFusionModule(nnx.Module):
    """``f = convblk(cat[sp, cp])``; ``f * sigmoid(bn(conv(mean_HW f))) + f``."""

    def __init__(self, cin: int, cout: int, *, dtype=None, rngs: nnx.Rngs):
        self.convblk = ConvBNReLU(cin, cout, 1, dtype=dtype, rngs=rngs)
        self.conv = _conv(cout, cout, 1, dtype=dtype, rngs=rngs)
        self.bn = BatchNorm2d(cout, dtype=dtype)

    def __call__(self, fsp: jax.Array, fcp: jax.Array) -> jax.Array:
        feat = self.convblk(jnp.concatenate([fsp, fcp], axis=-1))
        atten = jax.nn.sigmoid(self.bn(self.conv(_global_mean(feat))))
        return feat * atten.astype(feat.dtype) + feat


class BiSeNetOutput(nnx.Module):
    """ConvBNReLU 3x3 -> 1x1 conv (bias) -> bilinear (align_corners=False) to ``size``."""

    def __init__(self, cin: int, mid: int, num_classes: int, *, dtype=None, rngs: nnx.Rngs):
        self.conv = ConvBNReLU(cin, mid, 3, dtype=dtype, rngs=rngs)
        self.conv_out = _conv(mid, num_classes, 1, bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, size: tuple[int, int]) -> jax.Array:
        # Upstream: nn.Upsample(scale_factor=8 or 16); by the input size here (module docstring).
        return ops.resize_bilinear(self.conv_out(self.conv(x)), size, align_corners=False)


class BiSeNetV1(nnx.Module):
    """BiSeNet V1 (ResNet-18) with its two auxiliary heads; see the module docstring."""

    LOSS_WEIGHTS = (1.0, 1.0, 1.0)  # main, conv_out16, conv_out32: OHEM-CE each at weight 1 upstream
    IMAGENET = "resnet18"

    def __init__(self, num_classes: int, *, dtype=None, rngs: nnx.Rngs):
        self.num_classes = num_classes
        self.cp = ContextPath(dtype=dtype, rngs=rngs)
        self.sp = SpatialPath(dtype=dtype, rngs=rngs)
        self.ffm = FeatureFusionModule(256, 256, dtype=dtype, rngs=rngs)
        self.conv_out = BiSeNetOutput(256, 256, num_classes, dtype=dtype, rngs=rngs)
        self.conv_out16 = BiSeNetOutput(128, 64, num_classes, dtype=dtype, rngs=rngs)
        self.conv_out32 = BiSeNetOutput(128, 64, num_classes, dtype=dtype, rngs=rngs)

    @staticmethod
    def imagenet_key(key: str) -> str | None:
        """torchvision/timm ResNet-18 key -> this model's PyTorch key (``fc.*`` unused: None)."""
        return "cp.resnet." + key if _TORCHVISION_TRUNK.match(key) else None

    def _features(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        cp8, cp16 = self.cp(x)
        return self.ffm(self.sp(x), cp8), cp8, cp16

    def __call__(self, x: jax.Array) -> jax.Array:
        fused, _, _ = self._features(x)
        return self.conv_out(fused, x.shape[1:3])

    def outputs(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(main, aux16, aux32) logits at the input size, upstream ``aux_mode='train'`` order."""
        size = x.shape[1:3]
        fused, cp8, cp16 = self._features(x)
        return self.conv_out(fused, size), self.conv_out16(cp8, size), self.conv_out32(cp16, size)
