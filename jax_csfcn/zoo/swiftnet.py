"""SwiftNet-RN18, single scale, in Flax NNX (NHWC).

Orsic, Kreso, Bevandic, Segvic, "In Defense of Pre-trained ImageNet Architectures for Real-time
Semantic Segmentation of Road-driving Images", CVPR 2019.  Upstream: orsic/swiftnet
``models/semseg.py`` (``SemsegModel``), ``models/resnet/resnet_single_scale.py`` (``ResNet``,
``BasicBlock``, ``resnet18``), ``models/util.py`` (``_BNReluConv``, ``_Upsample``,
``SpatialPyramidPooling``), built as ``configs/rn18_single_scale.py`` does:
``SemsegModel(resnet18(efficient=False, mean, std), num_classes)``.  The PyTorch twin is
:mod:`torch_deploy.zoo.swiftnet`; the module paths below are the upstream ``state_dict``'s.

Network (upstream names):

* ``backbone``: torchvision ResNet-18 (``conv1``, ``bn1``, ``layer1``..``layer4``; 7x7/2 stem,
  BN, ReLU, max-pool) -- :class:`jax_csfcn.backbone.ResNet18` -- plus the input statistics
  ``img_mean`` / ``img_std`` ([1, 3, 1, 1], never trained), ``spp`` and ``upsample.{0,1,2}``.
* Every decoder unit is a pre-activation ``_BNReluConv``: BN(in) -> ReLU -> conv (k // 2 padding,
  no bias except the logits').
* ``backbone.spp.spp``: ``spp_bn`` (1x1, 512 -> 128) on the 1/32 map; for g in (8, 4, 2) an
  adaptive average pool to (g, max(1, round(g * W / H))) bins of that map (PyTorch's uneven bins,
  Python's round), ``spp{i}`` (1x1, 128 -> 42) and a bilinear resize back; ``spp_fuse`` (1x1,
  254 -> 128) on the concatenation.  These five BNs have momentum 0.005, all others 0.1.
* ``backbone.upsample.{0,1,2}`` on the 1/16, 1/8, 1/4 skips (256, 128, 64 channels):
  ``blend_conv`` (3x3, 128 -> 128) of (the decoder map resized to the skip's size +
  ``bottleneck`` (1x1, C -> 128) of the skip).
* ``logits``: ``_BNReluConv`` 1x1, 128 -> K with bias, at 1/4, resized to the input size.
* Every resize is bilinear, align_corners=False, to a target size: any input size works.

Input: like every csfcn model, ImageNet-normalised images x_n = (x / 255 - m) / s with
``csfcn.model_config.IMAGENET_MEAN/STD``.  SwiftNet normalises inside the model, on 0..255
images, with its own statistics, so the model first maps back, x255 = 255 * (x_n * s + m), then
computes (x255 - img_mean) / img_std as upstream (mean (73.15, 82.90, 72.3), std (47.67, 48.49,
47.73), ``configs/rn18_single_scale.py``).

Output: ``model(x)`` the logits (N, H, W, K); ``outputs(x)`` = (logits,) and ``LOSS_WEIGHTS`` =
(1.0,): upstream has no auxiliary heads and trains with plain cross-entropy.

Upstream quirks and what we do instead:

* The constructor downloads the torchvision ImageNet weights (``resnet18(pretrained=True)``);
  here nothing is downloaded: :meth:`SwiftNet.imagenet_key` maps those keys for the loader.
* ``forward_down`` normalises the caller's image tensor in place; here the input is not touched.
* ``BasicBlock`` returns ``(relu, out)`` for a pre-activation skip, but its ReLU is in place,
  so ``out`` is the ReLU'd tensor: the skips and the SPP input are post-ReLU.  We reproduce that
  (the skips are the standard ResNet stage outputs).
* The upstream forward returns (logits, dict of features); here only the logits.
* ``logits.conv`` keeps PyTorch's default conv initialisation (it is built outside the
  ``ResNet`` whose constructor re-initialises its convs kaiming fan-out); every other conv is
  kaiming fan-out, every BN weight 1 and bias 0, as upstream.

Folding: a pre-activation BN sits before a ReLU, so it never folds into the conv after it.
Folding it into the conv before it is possible only for ``logits.norm``, which reads
``backbone.upsample.2.blend_conv.conv``'s output and nothing else (the twin routes that pair
through ``ops.conv_bn``).  The other eleven decoder BNs read the backbone's post-ReLU maps,
pooled maps that other units also read, or sums and concatenations; they stay per-channel
affine maps at inference (docs in :mod:`torch_deploy.zoo.swiftnet`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from csfcn.model_config import IMAGENET_MEAN, IMAGENET_STD
from jax_csfcn.backbone import ResNet18
from jax_csfcn.layers import BatchNorm2d, conv2d, uniform_init
from jax_csfcn.ops import adaptive_avg_pool, at_least_f32, resize_bilinear

# configs/rn18_single_scale.py: statistics of Cityscapes images on the 0..255 scale.
SWIFTNET_MEAN = (73.15, 82.90, 72.3)
SWIFTNET_STD = (47.67, 48.49, 47.73)
SPP_GRIDS = (8, 4, 2)  # upstream spp_grids=(8, 4, 2, 1) with num_levels=3: the first three
SPP_MOMENTUM = 0.005  # models/util.py batchnorm_momentum = 0.01 / 2
NUM_FEATURES = 128
SPP_LEVEL = NUM_FEATURES // len(SPP_GRIDS)  # 42


def _torch_default_conv(cin: int, cout: int, *, dtype=None, rngs: nnx.Rngs) -> nnx.Conv:
    """1x1 conv with bias initialised as ``nn.Conv2d``'s default: weight and bias
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5))."""
    uniform = uniform_init(cin**-0.5)
    return conv2d(cin, cout, 1, bias=True, kernel_init=uniform, bias_init=uniform, dtype=dtype, rngs=rngs)


class BNReluConv(nnx.Module):
    """Upstream ``_BNReluConv``: ``norm`` (BN over the input) -> ReLU -> ``conv`` (k x k)."""

    def __init__(
        self, cin: int, cout: int, k: int, *, momentum: float = 0.1, logits: bool = False, dtype=None, rngs: nnx.Rngs
    ):
        self.norm = BatchNorm2d(cin, momentum=momentum, dtype=dtype)
        if logits:  # the classifier: 1x1 with bias, PyTorch's default initialisation
            self.conv = _torch_default_conv(cin, cout, dtype=dtype, rngs=rngs)
        else:
            self.conv = conv2d(cin, cout, k, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jax.nn.relu(self.norm(x)))


class SpatialPyramidPooling(nnx.Module):
    """``backbone.spp``: the pyramid modules live in ``.spp`` (an ``nn.Sequential`` upstream)."""

    def __init__(self, cin: int = 512, *, dtype=None, rngs: nnx.Rngs):
        units = {"spp_bn": BNReluConv(cin, NUM_FEATURES, 1, momentum=SPP_MOMENTUM, dtype=dtype, rngs=rngs)}
        for i in range(len(SPP_GRIDS)):
            units[f"spp{i}"] = BNReluConv(NUM_FEATURES, SPP_LEVEL, 1, momentum=SPP_MOMENTUM, dtype=dtype, rngs=rngs)
        fused = NUM_FEATURES + len(SPP_GRIDS) * SPP_LEVEL  # 254
        units["spp_fuse"] = BNReluConv(fused, NUM_FEATURES, 1, momentum=SPP_MOMENTUM, dtype=dtype, rngs=rngs)
        self.spp = nnx.Dict(units)

    def __call__(self, x: jax.Array) -> jax.Array:
        _, h, w, _ = x.shape
        ar = w / h
        x = self.spp["spp_bn"](x)
        levels = [x]
        for i, g in enumerate(SPP_GRIDS):
            # Bin means in fp32 (the BN that reads them computes in fp32 anyway).
            pooled = adaptive_avg_pool(at_least_f32(x), (g, max(1, round(ar * g))))
            level = self.spp[f"spp{i}"](pooled)
            levels.append(resize_bilinear(level, size=(h, w), align_corners=False))
        return self.spp["spp_fuse"](jnp.concatenate(levels, axis=-1))


class Upsample(nnx.Module):
    """Upstream ``_Upsample``: ``blend_conv(resize(x, skip size) + bottleneck(skip))``."""

    def __init__(self, skip_channels: int, *, dtype=None, rngs: nnx.Rngs):
        self.bottleneck = BNReluConv(skip_channels, NUM_FEATURES, 1, dtype=dtype, rngs=rngs)
        self.blend_conv = BNReluConv(NUM_FEATURES, NUM_FEATURES, 3, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        skip = self.bottleneck(skip)
        x = resize_bilinear(x, size=skip.shape[1:3], align_corners=False)
        return self.blend_conv(x + skip)


class Backbone(ResNet18):
    """Upstream ``ResNet`` (``backbone``): the torchvision ResNet-18 plus the input statistics,
    the SPP and the three upsampling units (``upsample.0`` takes the 1/16 skip)."""

    def __init__(self, *, dtype=None, rngs: nnx.Rngs):
        super().__init__("torchvision", dtype=dtype, rngs=rngs)
        # Constant buffers, kept as BatchStat (not Param) so that no optimiser updates them.
        self.img_mean = nnx.BatchStat(jnp.asarray(SWIFTNET_MEAN, jnp.float32).reshape(1, 3, 1, 1))
        self.img_std = nnx.BatchStat(jnp.asarray(SWIFTNET_STD, jnp.float32).reshape(1, 3, 1, 1))
        self.spp = SpatialPyramidPooling(512, dtype=dtype, rngs=rngs)
        self.upsample = nnx.List([Upsample(c, dtype=dtype, rngs=rngs) for c in (256, 128, 64)])

    def normalize(self, x: jax.Array) -> jax.Array:
        """ImageNet-normalised x -> 0..255 -> SwiftNet's own normalisation (in fp32 or better)."""
        xf = at_least_f32(x)
        m = jnp.asarray(IMAGENET_MEAN, xf.dtype)
        s = jnp.asarray(IMAGENET_STD, xf.dtype)
        x255 = (xf * s + m) * 255.0
        mean = self.img_mean[...].reshape(1, 1, 1, 3).astype(xf.dtype)
        std = self.img_std[...].reshape(1, 1, 1, 3).astype(xf.dtype)
        return (x255 - mean) / std  # subtract then divide, as upstream's in-place ops

    def features(self, x: jax.Array) -> jax.Array:
        """Normalised images -> the decoder's 128-channel map at 1/4 (``forward_up``'s output)."""
        c1, c2, c3, c4 = self.stages(self.normalize(x))  # post-ReLU stage outputs (upstream quirk)
        y = self.spp(c4)
        for up, skip in zip(self.upsample, (c3, c2, c1), strict=True):
            y = up(y, skip)
        return y


class SwiftNet(nnx.Module):
    """SwiftNet-RN18 single scale: normalised NHWC images -> NHWC logits at the input size."""

    LOSS_WEIGHTS = (1.0,)
    IMAGENET = "resnet18"

    def __init__(self, num_classes: int, *, dtype=None, rngs: nnx.Rngs):
        self.num_classes = num_classes
        self.backbone = Backbone(dtype=dtype, rngs=rngs)
        self.logits = BNReluConv(NUM_FEATURES, num_classes, 1, logits=True, dtype=dtype, rngs=rngs)

    @staticmethod
    def imagenet_key(key: str) -> str | None:
        """torchvision ``resnet18`` key -> this model's PyTorch key (``fc.*``: unused)."""
        if key.startswith("fc."):
            return None
        return "backbone." + key

    def outputs(self, x: jax.Array) -> tuple[jax.Array]:
        return (self(x),)

    def __call__(self, x: jax.Array) -> jax.Array:
        _, h, w, _ = x.shape
        y = self.logits(self.backbone.features(x))
        return resize_bilinear(y, size=(h, w), align_corners=False)
