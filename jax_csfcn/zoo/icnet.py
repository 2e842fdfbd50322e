"""ICNet (Zhao et al., "ICNet for Real-Time Semantic Segmentation on High-Resolution Images",
ECCV 2018) in Flax NNX (NHWC), as the CSFCN authors ran it: kaigelee/CSFCN ``models/icnet.py``,
byte-identical to liminn/ICNet-pytorch ``models/icnet.py``, on liminn's ``resnet50_v1s``.

The PyTorch twin is :mod:`torch_deploy.zoo.icnet`; module paths here are the upstream
``state_dict``'s (``pretrained.layer3.1.conv2``, ``head.cff_24.conv_low.0``, ...), so
:mod:`convert.table` maps them with no ICNet rule.

Network (normalised NHWC images ``x`` of H x W):

* ``pretrained``: ResNet-50-v1s, dilated to output stride 8 -- a deep stem ``conv1.{0,1,3,4,6}``
  (3x3 convs 3 -> 64 (stride 2) -> 64 -> 128, BN + ReLU between) then ``bn1`` (128), ReLU and a
  3x3/2 max-pool; bottlenecks with the stride on the 3x3 conv (v1b) and a plain 1x1 conv + BN
  projection; layer3 and layer4 keep stride 1 and dilate: layer3 block 0 dilation 1, blocks 1-5
  dilation 2; layer4 block 0 dilation 2, blocks 1-2 dilation 4 (liminn ``resnetv1b.py``).
  Written here, as nothing else in the project uses a bottleneck ResNet.
* sub1: ``conv_sub1``, three [3x3 stride-2 conv, BN, ReLU] (3 -> 32 -> 32 -> 64) on ``x``: 1/8.
* sub2: ``x`` resized by 0.5 (bilinear, align_corners=True, no antialiasing; floor(H / 2) rows
  as ``F.interpolate(scale_factor=0.5)``) through the backbone up to layer2 (512 ch, 1/16).
* sub4: ``x`` resized by 0.25 the same way through the whole backbone (2048 ch, 1/32), then the
  pyramid pooling: ``c4 + sum over b in (1, 2, 3, 6) of resize(adaptive_avg_pool(c4, b))``
  (bilinear AC=True back to c4's size; no parameters; the pooling runs in fp32 at least).
* ``head``: cascade feature fusion ``cff_24(ppm, c2)`` then ``cff_12(that, sub1)``; each resizes
  its low-resolution input to the other's size (bilinear AC=True), ``low = BN(3x3 dil-2 conv)``,
  ``high = BN(1x1 conv)``, returns ``relu(low + high)`` and the aux logits ``conv_low_cls(low)``
  (1x1, no bias, on the BN output before the sum).  Then x2 (bilinear AC=True) and ``conv_cls``
  (1x1, no bias): logits at 1/4.

Outputs, as upstream: ``outputs(x)`` = (full, 1/4 logits, ``cls12`` at 1/8, ``cls24`` at 1/16),
the full one being the 1/4 logits resized bilinearly (AC=True) to H x W; ``model(x)`` = full.
``LOSS_WEIGHTS`` = (0, 1, 0.4, 0.4): upstream's ``ICNetLoss`` (aux_weight 0.4) reads the 1/4,
1/8 and 1/16 logits against labels resized to each, never the full-size output (the paper's
lambda 1 / 0.4 / 0.4).  The loss is multi-scale, so those three outputs stay at their scales.

Upstream bugs and quirks, and what this port does:

* CSFCN's ``segbase.py`` imports ``resnet50_v1s``, which its ``base_models`` lacks (the package
  does not import); the function meant is liminn's, built here.
* The sub2 pass runs the whole backbone and keeps only layer2: layer3 + layer4 on the 1/2 input
  are 61% of the model's MACs (180 of 295 GMAC at 1024x2048), thrown away.  Here that pass stops
  at layer2: the same function in eval mode and the same outputs in train mode.  In train mode
  upstream also updates layer3/layer4's BN running statistics with the discarded pass (twice
  per forward, the sub2 pass first); here they see only the sub4 pass, the one the model uses.
  The stem, layer1 and layer2 BNs run twice per forward (sub2 then sub4) on both sides.
* The full output: upstream upsamples the 1/4 logits by a fixed x4, giving 8 * ceil(H / 8) rows
  (728 x 968 for a 721 x 961 input).  Here it is resized to exactly H x W -- identical whenever
  H and W are multiples of 8 (align_corners=True maps by size whatever the factor).
* ``ICNetLoss`` resizes the integer labels *bilinearly* as floats and truncates them, inventing
  class ids (and mixing the ignore label into classes) at every boundary.  Not part of the model;
  our training resizes the labels by nearest neighbour for the 1/4, 1/8 and 1/16 outputs.
* ``pretrained.fc`` (Linear 2048 -> 1000, 2,049,000 parameters) is never called; it is kept so
  that an upstream ``state_dict`` loads strictly.  It gets no gradient (only weight decay, if
  the optimiser applies it to every parameter, moves it).
* ``head.cff_24.conv_low`` is a 3x3 conv straight from the 2048-channel PPM output (2.36 M
  parameters); the paper reduces the channels first.  Kept, as upstream.
* Upstream trains ``conv_sub1`` and ``head`` at 10x the backbone's learning rate (liminn).

BatchNorm folding (the twin's ``ops.conv_bn``): every BN here reads only the conv before it
(stem ``conv1.0/1``, ``conv1.3/4``, ``conv1.6`` + ``bn1``, every bottleneck conv and projection,
``conv_sub1``, both CFF branches), so all of them fold; none is left standalone.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_csfcn.backbone import max_pool_3x3s2
from jax_csfcn.layers import BatchNorm2d, conv2d
from jax_csfcn.ops import adaptive_avg_pool, at_least_f32, resize_bilinear

# (planes, blocks, stride, dilation of block 0, dilation of the other blocks): liminn's
# ResNetV1b(dilated=True) -- a stage "dilated d" starts at d / 2 (4 -> 2; 2 -> 1).
STAGES = ((64, 3, 1, 1, 1), (128, 4, 2, 1, 1), (256, 6, 1, 1, 2), (512, 3, 1, 2, 4))
EXPANSION = 4
PYRAMID_BINS = (1, 2, 3, 6)

# The submodules are built with zero kernels; ICNet draws every weight at once (ICNet._draw_weights).
_conv = functools.partial(conv2d, zero_init=True)
_zeros = nnx.initializers.zeros


class Bottleneck(nnx.Module):
    """ResNet-v1b bottleneck: 1x1 -> 3x3 (stride, dilation) -> 1x1 (x4), BN after each,
    projection ``downsample.0/1`` (1x1 conv with the stride + BN) when the shape changes."""

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, *, dtype=None, rngs: nnx.Rngs):
        cout = planes * EXPANSION
        self.conv1 = _conv(cin, planes, 1, dtype=dtype, rngs=rngs)
        self.bn1 = BatchNorm2d(planes, dtype=dtype)
        self.conv2 = _conv(planes, planes, 3, stride=stride, dilation=dilation, dtype=dtype, rngs=rngs)
        self.bn2 = BatchNorm2d(planes, dtype=dtype)
        self.conv3 = _conv(planes, cout, 1, dtype=dtype, rngs=rngs)
        self.bn3 = BatchNorm2d(cout, dtype=dtype)
        if stride != 1 or cin != cout:
            self.downsample = nnx.List(
                [_conv(cin, cout, 1, stride=stride, dtype=dtype, rngs=rngs), BatchNorm2d(cout, dtype=dtype)]
            )
        else:
            self.downsample = None

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = jax.nn.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return jax.nn.relu(out + identity)


class ResNet50V1s(nnx.Module):
    """liminn's ``resnet50_v1s(dilated=True)``: deep stem 64/64/128, output stride 8, unused ``fc``."""

    def __init__(self, *, dtype=None, rngs: nnx.Rngs):
        # Sequential indices 2 and 5 are ReLUs (no parameters) in the PyTorch layout.
        self.conv1 = nnx.Dict(
            {
                "0": _conv(3, 64, 3, stride=2, dtype=dtype, rngs=rngs),
                "1": BatchNorm2d(64, dtype=dtype),
                "3": _conv(64, 64, 3, dtype=dtype, rngs=rngs),
                "4": BatchNorm2d(64, dtype=dtype),
                "6": _conv(64, 128, 3, dtype=dtype, rngs=rngs),
            }
        )
        self.bn1 = BatchNorm2d(128, dtype=dtype)
        cin = 128
        for i, (planes, n, stride, first_dil, dil) in enumerate(STAGES, start=1):
            blocks = [Bottleneck(cin, planes, stride, first_dil, dtype=dtype, rngs=rngs)]
            cin = planes * EXPANSION
            blocks += [Bottleneck(cin, planes, 1, dil, dtype=dtype, rngs=rngs) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nnx.List(blocks))
        # nn.Linear(2048, 1000), never called (module docstring); jax_csfcn.layers.linear's layout
        self.fc = nnx.Linear(
            cin, 1000, dtype=dtype, param_dtype=jnp.float32, kernel_init=_zeros, bias_init=_zeros, rngs=rngs
        )

    def features(self, x: jax.Array, depth: int) -> jax.Array:
        """The output of layer ``depth`` (1..4): 1/4, 1/8, 1/8, 1/8 of the input."""
        c = self.conv1
        x = jax.nn.relu(c["1"](c["0"](x)))
        x = jax.nn.relu(c["4"](c["3"](x)))
        x = max_pool_3x3s2(jax.nn.relu(self.bn1(c["6"](x))))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4)[:depth]:
            for block in layer:
                x = block(x)
        return x


class ConvBNReLU(nnx.Module):
    """``conv_sub1.i``: 3x3 stride-2 conv (no bias), BN, ReLU; paths ``.conv``/``.bn``."""

    def __init__(self, cin: int, cout: int, *, dtype=None, rngs: nnx.Rngs):
        self.conv = _conv(cin, cout, 3, stride=2, dtype=dtype, rngs=rngs)
        self.bn = BatchNorm2d(cout, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


def _initial_weights(key, conv_shapes, fc_shape):
    """HWIO kernels N(0, 2 / (kh kw cout)) and the Linear's U(+-1 / sqrt(cin)) weight and bias,
    sliced from one draw of each law (on the host when concrete: XLA takes seconds to compile
    a program with one output per kernel, and a second to draw the lot in one)."""
    sizes = [math.prod(s) for s in conv_shapes]
    cin, cout = fc_shape
    normal, uniform = _draw(key, sum(sizes), cin * cout + cout, cin**-0.5)
    with contextlib.suppress(jax.errors.TracerArrayConversionError):  # traced (nnx.eval_shape): slice those
        normal, uniform = np.asarray(normal), np.asarray(uniform)
    kernels, start = [], 0
    for shape, n in zip(conv_shapes, sizes):
        fan_out = math.prod(shape[:2]) * shape[3]
        kernels.append(normal[start : start + n].reshape(shape) * np.float32(math.sqrt(2.0 / fan_out)))
        start += n
    return kernels, uniform[: cin * cout].reshape(fc_shape), uniform[cin * cout :]


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _draw(key, n_normal: int, n_uniform: int, bound: float):
    knorm, kunif = jax.random.split(key)
    return (
        jax.random.normal(knorm, (n_normal,), jnp.float32),
        jax.random.uniform(kunif, (n_uniform,), jnp.float32, -bound, bound),
    )


def pyramid_pooling(x: jax.Array) -> jax.Array:
    """Upstream's ``PyramidPoolingModule``: x plus each bin's pooled map resized back, in order."""
    _, h, w, _ = x.shape
    feat = x
    for b in PYRAMID_BINS:
        pooled = adaptive_avg_pool(at_least_f32(x), (b, b)).astype(x.dtype)
        feat = feat + resize_bilinear(pooled, (h, w), align_corners=True)
    return feat


class CascadeFeatureFusion(nnx.Module):
    """CFF: ``relu(BN(dil-2 3x3 conv(resize(x_low))) + BN(1x1 conv(x_high)))`` and the aux
    logits of the low branch (``conv_low_cls`` on its BN output)."""

    def __init__(self, low: int, high: int, out: int, num_classes: int, *, dtype=None, rngs: nnx.Rngs):
        self.conv_low = nnx.List(
            [_conv(low, out, 3, dilation=2, dtype=dtype, rngs=rngs), BatchNorm2d(out, dtype=dtype)]
        )
        self.conv_high = nnx.List([_conv(high, out, 1, dtype=dtype, rngs=rngs), BatchNorm2d(out, dtype=dtype)])
        self.conv_low_cls = _conv(out, num_classes, 1, dtype=dtype, rngs=rngs)

    def __call__(self, x_low: jax.Array, x_high: jax.Array) -> tuple[jax.Array, jax.Array]:
        x_low = resize_bilinear(x_low, x_high.shape[1:3], align_corners=True)
        low = self.conv_low[1](self.conv_low[0](x_low))
        high = self.conv_high[1](self.conv_high[0](x_high))
        return jax.nn.relu(low + high), self.conv_low_cls(low)


class ICHead(nnx.Module):
    """``head``: ``cff_24`` (PPM output with c2), ``cff_12`` (that with sub1), x2, ``conv_cls``."""

    def __init__(self, num_classes: int, *, dtype=None, rngs: nnx.Rngs):
        self.cff_12 = CascadeFeatureFusion(128, 64, 128, num_classes, dtype=dtype, rngs=rngs)
        self.cff_24 = CascadeFeatureFusion(2048, 512, 128, num_classes, dtype=dtype, rngs=rngs)
        self.conv_cls = _conv(128, num_classes, 1, dtype=dtype, rngs=rngs)

    def __call__(self, x_sub1, x_sub2, x_sub4) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(logits at 1/4, cls12 at 1/8, cls24 at 1/16)."""
        x24, cls24 = self.cff_24(x_sub4, x_sub2)
        x12, cls12 = self.cff_12(x24, x_sub1)
        x4 = resize_bilinear(x12, scale_factor=2, align_corners=True)
        return self.conv_cls(x4), cls12, cls24


class ICNet(nnx.Module):
    """ICNet on a dilated ResNet-50-v1s (module docstring); NHWC in, NHWC logits out."""

    LOSS_WEIGHTS = (0.0, 1.0, 0.4, 0.4)
    IMAGENET = "resnet50s"

    def __init__(self, num_classes: int, *, dtype=None, rngs: nnx.Rngs):
        self.num_classes = num_classes
        self.pretrained = ResNet50V1s(dtype=dtype, rngs=rngs)
        self.conv_sub1 = nnx.List(
            [
                ConvBNReLU(3, 32, dtype=dtype, rngs=rngs),
                ConvBNReLU(32, 32, dtype=dtype, rngs=rngs),
                ConvBNReLU(32, 64, dtype=dtype, rngs=rngs),
            ]
        )
        self.head = ICHead(num_classes, dtype=dtype, rngs=rngs)
        self._draw_weights(rngs)

    def _draw_weights(self, rngs: nnx.Rngs) -> None:
        """Every conv kernel kaiming-normal (fan-out, :data:`jax_csfcn.layers.kaiming_fan_out`'s
        law) and ``pretrained.fc`` as ``nn.Linear``, drawn by one compiled program: the modules are
        built with zero kernels first, because drawing each of ResNet-50's 28 kernel shapes on its
        own compiles 28 random-number programs (about 14 s of CPU before the model exists)."""
        convs = [m for _, m in nnx.iter_modules(self) if isinstance(m, nnx.Conv)]
        kernels, fc_kernel, fc_bias = _initial_weights(
            rngs.params(), tuple(tuple(c.kernel.shape) for c in convs), tuple(self.pretrained.fc.kernel.shape)
        )
        for conv, k in zip(convs, kernels):
            conv.kernel[...] = jnp.asarray(k)
        self.pretrained.fc.kernel[...] = jnp.asarray(fc_kernel)
        self.pretrained.fc.bias[...] = jnp.asarray(fc_bias)

    def outputs(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """(full H x W logits, 1/4 logits, cls12 at 1/8, cls24 at 1/16), upstream's order."""
        x_sub1 = x
        for unit in self.conv_sub1:
            x_sub1 = unit(x_sub1)
        # Upstream order: the 1/2 pass runs before the 1/4 pass (the shared BNs' running statistics).
        x_sub2 = self.pretrained.features(resize_bilinear(x, scale_factor=0.5, align_corners=True), 2)
        x_sub4 = self.pretrained.features(resize_bilinear(x, scale_factor=0.25, align_corners=True), 4)
        logits4, cls12, cls24 = self.head(x_sub1, x_sub2, pyramid_pooling(x_sub4))
        full = resize_bilinear(logits4, x.shape[1:3], align_corners=True)
        return full, logits4, cls12, cls24

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.outputs(x)[0]  # the aux 1x1 convs are dead code under jit

    @staticmethod
    def imagenet_key(key: str) -> str | None:
        """A timm ``resnet50s`` (``gluon_resnet50_v1s``) / PyTorch-Encoding ResNet-50-s key -> ours.

        The names map one to one under ``pretrained.``, ``fc.*`` included (to the unused
        ``pretrained.fc``, as upstream's ``strict=False`` load does, so no backbone tensor is left
        at its random init).  torchvision's ``resnet50`` (7x7 stem ``conv1.weight``) and timm's
        ``resnet50d`` (avg-pool projection ``downsample.1`` conv / ``downsample.2`` BN, 32-wide
        stem) are other networks: ValueError.
        """
        if re.fullmatch(r"conv1\.(weight|bias)", key):
            raise ValueError(
                f"ImageNet key {key!r}: ICNet needs a ResNet-50-v1s (deep stem) checkpoint such as timm "
                "resnet50s (gluon_resnet50_v1s); torchvision's resnet50 has a 7x7 stem"
            )
        if re.fullmatch(r"layer\d\.\d+\.downsample\.2\.\w+", key):
            raise ValueError(
                f"ImageNet key {key!r}: an avg-pool projection (timm resnet50d, whose stem is also 32 wide); "
                "ICNet needs a ResNet-50-v1s checkpoint such as timm resnet50s (gluon_resnet50_v1s)"
            )
        if re.fullmatch(r"(conv1\.[0134]|conv1\.6|bn1|fc)\.\w+", key):
            return "pretrained." + key
        m = re.fullmatch(r"layer([1-4])\.(\d+)\.((conv|bn)[123]|downsample\.[01])\.\w+", key)
        if m and int(m[2]) < STAGES[int(m[1]) - 1][1]:
            return "pretrained." + key
        raise ValueError(f"ImageNet key {key!r} is not a ResNet-50-v1s key")
