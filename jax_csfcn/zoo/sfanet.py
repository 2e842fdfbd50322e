"""SFANet in Flax NNX (NHWC): the stage-aware feature alignment network.

Paper: "Stage-Aware Feature Alignment Network for Real-Time Semantic Segmentation of Street
Scenes", IEEE T-ITS 2021.  Upstream: kaigelee/CSFCN ``models/SFANet.py`` (``SFANet(n_classes,
output_aux=True)``); the PyTorch twin is :mod:`torch_deploy.zoo.sfanet`.  Module paths follow the
upstream ``state_dict`` (254 entries with the aux heads, 12,793,438 parameters at 19 classes).

Structure (the numbers are the upstream's):

* backbone ``resnet``: a ResNet-18 whose stem is the bare 7x7/2 conv ``resnet.stem`` followed by
  the 3x3/2 max-pool -- no BN and no ReLU in between (upstream has no ``bn1``).  In layers 2-4 an
  SCA module sits at index 1 between the two BasicBlocks (the second block is index 2).  Then
  ``cbr1..3`` (3x3 conv-BN-ReLU to 128 channels) on the 1/8, 1/16 and 1/32 maps, and the global
  average of the raw 1/32 map (512 channels, 1 x 1);
* SCA(x) = x * sigmoid(conv1x1_C->1(x)) + x * ECA-gate(x);
* four SFA stages, SFA(fh, fl) = FAA(FEB(fh), resize(CBR1x1(fl)) to fh's size): ``sfa4`` (fh the
  1/32 CBR map, fl the global average), ``sfa3`` (1/16), ``sfa2`` (1/8), ``sfa1`` (fh the raw
  64-channel 1/4 map, FEB the identity);
* FEB_4 / FEB_3: depthwise 3x3 (dilation 2 / 1), its BN, depthwise 3x3 (dilation 5 / 1); the
  first depthwise output *before* its BN concatenated with the second's, 1x1 conv, BN, ReLU of the
  residual sum, SCA.  FEB_2: 3x3 conv, BN, 3x3 conv, BN (no ReLU between), ReLU of the residual
  sum, SCA;
* FAA(fh, fl): offset = 3x3 conv (2C -> 2, no BN, no activation) of cat[fh, fl]; fl sampled
  bilinearly with zero padding at the identity grid + offset / (W, H) in align-corners
  coordinates (``F.grid_sample(align_corners=True)``); out = SCA(fh + sampled fl);
* heads (``SegHead``): 1x1 CBR to 64 then a 3x3 conv to K classes (no bias), bilinear
  (align_corners=True) up to the input: main ``conv_out`` on cat[1/4 map, sfa1], aux ``conv_out1``
  (sfa1), ``conv_out2`` (sfa2), ``conv_out3`` (sfa3), ``conv_out4`` (sfa4).

Input: ImageNet-normalised NHWC images, any size (multiples of 8 and others).  ``model(x)``: main
logits (N, H, W, K); ``model.outputs(x)``: (main, aux1, aux2, aux3, aux4), all at the input
size; the upstream recipe weighs them 1 + 0.4 * each aux (``LOSS_WEIGHTS``).

Upstream quirks and what this port does:

* The heads upsample by a fixed ``scale_factor`` (4, 4, 8, 16, 32).  That is right only when the
  input is a multiple of 4 * the factor: at 720 x 960 upstream's aux4 is 736 x 960 (and at
  360 x 480 aux3 is 368 x 480, aux4 384 x 480), which its loss cannot take.  Here every head is
  resized *to the input size*; with align_corners=True the source mapping is (in - 1) / (out - 1)
  whatever the call gave, so this equals upstream wherever upstream's size is right.
* ECA kernel size: SCA means k = 3 below 512 channels and 5 at 512, but passes k as ECA's
  ``channel`` argument, so every ECA conv is the default k = 3 (the state_dict has [1, 1, 3]).
  We keep k = 3: it is what upstream builds and trains.
* ``output_aux=False`` upstream returns ``argmax`` labels (int64) and drops the aux heads; here
  the aux heads always exist (so the upstream checkpoint loads) and ``__call__`` returns the main
  logits without computing the aux heads.
* ``sfa4``'s CBR (1x1 conv + BN + ReLU) runs on the 1 x 1 global-average map: in training its BN
  normalises over the N values of the batch.  PyTorch refuses batch 1 there; this BN does not,
  but with one value per channel the batch variance is zero, the normalised value is 0 and the
  CBR outputs ReLU(BN bias) for every image -- train with batch >= 2.
* The 1x1 global average (and the upsampling of it) is a broadcast; it is kept as the resize
  upstream does (exact: weight 1 on the single source pixel).
* Initialisation follows upstream: backbone convs (SCA 1x1s included) kaiming-normal fan_out;
  FEB and FAA-offset convs kaiming-normal with a=1 (std 1/sqrt(fan_in)); every other conv
  (CBRs, SCA gates outside the backbone, ECA convs, heads) PyTorch's default U(+-1/sqrt(fan_in)).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_csfcn import ops
from jax_csfcn.backbone import BasicBlock, max_pool_3x3s2
from jax_csfcn.layers import ECA, BatchNorm2d, conv2d


class CBR(nnx.Module):
    """Conv k x k (no bias) -> BN -> ReLU; paths ``conv.0`` / ``conv.1`` (an nn.Sequential)."""

    def __init__(self, cin: int, cout: int, k: int = 1, *, dtype=None, rngs: nnx.Rngs):
        self.conv = nnx.List([conv2d(cin, cout, k, dtype=dtype, rngs=rngs), BatchNorm2d(cout, dtype=dtype)])

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.conv[1](self.conv[0](x)))


class SCA(nnx.Module):
    """x * sigmoid(spatial 1x1 conv C -> 1) + x * ECA gate (k = 3, see the module docstring)."""

    def __init__(self, channels: int, *, dtype=None, rngs: nnx.Rngs):
        self.spatial = nnx.List([conv2d(channels, 1, 1, dtype=dtype, rngs=rngs)])
        self.channel = ECA(3, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * jax.nn.sigmoid(self.spatial[0](x)) + self.channel(x)


class Backbone(nnx.Module):
    """``resnet``: stem conv (no BN/ReLU), max-pool, layer1..4 (SCA inside 2-4), cbr1..3, GAP."""

    def __init__(self, *, dtype=None, rngs: nnx.Rngs):
        self.stem = conv2d(3, 64, 7, stride=2, dtype=dtype, rngs=rngs)
        self.layer1 = nnx.List([BasicBlock(64, 64, 1, dtype=dtype, rngs=rngs) for _ in range(2)])
        cin = 64
        for i, cout in ((2, 128), (3, 256), (4, 512)):
            blocks = [
                BasicBlock(cin, cout, 2, dtype=dtype, rngs=rngs),
                SCA(cout, dtype=dtype, rngs=rngs),
                BasicBlock(cout, cout, 1, dtype=dtype, rngs=rngs),
            ]
            setattr(self, f"layer{i}", nnx.List(blocks))
            cin = cout
        self.cbr1 = CBR(128, 128, 3, dtype=dtype, rngs=rngs)
        self.cbr2 = CBR(256, 128, 3, dtype=dtype, rngs=rngs)
        self.cbr3 = CBR(512, 128, 3, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array):
        """(c1 [64, 1/4], cbr1(c2) [128, 1/8], cbr2(c3) [128, 1/16], cbr3(c4) [128, 1/32], GAP(c4) [512, 1x1])."""
        x = max_pool_3x3s2(self.stem(x))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x)
            feats.append(x)
        c1, c2, c3, c4 = feats
        gap = jnp.mean(ops.at_least_f32(c4), axis=(1, 2), keepdims=True).astype(c4.dtype)
        return c1, self.cbr1(c2), self.cbr2(c3), self.cbr3(c4), gap


class FEBDepthwise(nnx.Module):
    """FEB_4 (dilations 2 and 5) and FEB_3 (1 and 1) of upstream, 128 channels."""

    def __init__(self, channels: int, d1: int, d2: int, *, dtype=None, rngs: nnx.Rngs):
        c = channels
        self.dw_conv_1 = conv2d(c, c, 3, groups=c, dilation=d1, dtype=dtype, rngs=rngs)
        self.bn_1 = BatchNorm2d(c, dtype=dtype)
        self.dw_conv_2 = conv2d(c, c, 3, groups=c, dilation=d2, dtype=dtype, rngs=rngs)
        self.conv_1x1 = conv2d(2 * c, c, 1, dtype=dtype, rngs=rngs)
        self.bn_2 = BatchNorm2d(c, dtype=dtype)
        self.sca = SCA(c, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x1 = self.dw_conv_1(x)
        x2 = self.dw_conv_2(self.bn_1(x1))  # the concat takes x1 before its BN
        y = self.bn_2(self.conv_1x1(jnp.concatenate([x1, x2], axis=-1)))
        return self.sca(jax.nn.relu(x + y))


class FEB2(nnx.Module):
    """FEB_2 of upstream: 3x3 conv, BN, 3x3 conv, BN, ReLU(residual sum), SCA."""

    def __init__(self, channels: int, *, dtype=None, rngs: nnx.Rngs):
        c = channels
        self.conv_1 = conv2d(c, c, 3, dtype=dtype, rngs=rngs)
        self.bn_1 = BatchNorm2d(c, dtype=dtype)
        self.conv_2 = conv2d(c, c, 3, dtype=dtype, rngs=rngs)
        self.bn_2 = BatchNorm2d(c, dtype=dtype)
        self.sca = SCA(c, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.bn_2(self.conv_2(self.bn_1(self.conv_1(x))))
        return self.sca(jax.nn.relu(x + y))


class FEB1(nnx.Module):
    """FEB_1 of upstream: the identity (no parameters)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class FAA(nnx.Module):
    """Feature alignment: fl sampled at offsets predicted from cat[fh, fl], added to fh, SCA."""

    def __init__(self, channels: int, *, dtype=None, rngs: nnx.Rngs):
        self.offset = conv2d(2 * channels, 2, 3, dtype=dtype, rngs=rngs)
        self.sca = SCA(channels, dtype=dtype, rngs=rngs)

    def __call__(self, fh: jax.Array, fl: jax.Array) -> jax.Array:
        return self.sca(fh + faa_sample(fl, self.offset(jnp.concatenate([fh, fl], axis=-1))))


@jax.jit  # one program per shape when run eagerly (else ~25 small ones); inlined under an outer jit
def faa_sample(fl: jax.Array, offset: jax.Array) -> jax.Array:
    """FAA's sampling of NHWC ``fl`` at the (N, H, W, 2) offsets (x, y) of its offset conv.

    Upstream samples at grid = (linspace(-1, 1, W), linspace(-1, 1, H)) + offset / (W, H) with
    ``grid_sample(align_corners=True)``, i.e. at pixel (i, j) displaced by offset * ((W - 1) / (2 W),
    (H - 1) / (2 H)); sampling at the displacement keeps it exact (:func:`ops.sample_displaced`;
    jax_csfcn/model.py ``sfc_sample_and_gate`` with one group).
    """
    _, h, w, _ = fl.shape
    off = ops.at_least_f32(offset)
    with jax.named_scope(ops.INTERP_SCOPE):
        return ops.sample_displaced(fl, off[..., 0] * ((w - 1) / (2 * w)), off[..., 1] * ((h - 1) / (2 * h)))


class SFA(nnx.Module):
    """fl -> 1x1 CBR -> bilinear (align_corners) to fh's size; fh -> FEB; FAA(fh, fl)."""

    def __init__(self, cbr_in: int, channels: int, feb: nnx.Module, *, dtype=None, rngs: nnx.Rngs):
        self.cbr = CBR(cbr_in, channels, 1, dtype=dtype, rngs=rngs)
        self.feb = feb
        self.faa = FAA(channels, dtype=dtype, rngs=rngs)

    def __call__(self, fh: jax.Array, fl: jax.Array) -> jax.Array:
        fl = ops.resize_bilinear(self.cbr(fl), fh.shape[1:3], align_corners=True)
        return self.faa(self.feb(fh), fl)


class SegHead(nnx.Module):
    """``block.0`` 1x1 CBR to 64, ``block.1`` 3x3 conv to K (no bias); bilinear to ``size``."""

    def __init__(self, cin: int, num_classes: int, *, dtype=None, rngs: nnx.Rngs):
        cls = conv2d(64, num_classes, 3, dtype=dtype, rngs=rngs)
        self.block = nnx.List([CBR(cin, 64, 1, dtype=dtype, rngs=rngs), cls])

    def __call__(self, x: jax.Array, size: tuple[int, int]) -> jax.Array:
        return ops.resize_bilinear(self.block[1](self.block[0](x)), size, align_corners=True)


# Convs whose kernels upstream draws with kaiming_normal_(a=1): FEB_2/3/4's and FAA's offset.
_KAIMING_A1 = frozenset({"dw_conv_1", "dw_conv_2", "conv_1x1", "conv_1", "conv_2", "offset"})


def _initial_kernel(path: tuple, shape: tuple[int, ...], normal, uniform):
    """Upstream's initial value of the conv kernel at ``path`` (Flax layout [..., in, out])."""
    fan_in = math.prod(shape[:-1])
    if path[0] == "resnet" and not str(path[1]).startswith("cbr") and "channel" not in path:
        # upstream's ResNet loop: every Conv2d of the trunk (its SCA 1x1s too), kaiming fan_out
        return normal(shape) * math.sqrt(2.0 / (math.prod(shape[:-2]) * shape[-1]))
    if path[-2] in _KAIMING_A1:
        return normal(shape) / math.sqrt(fan_in)
    return uniform(shape) / math.sqrt(fan_in)  # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))


def init_like_upstream(model: nnx.Module, key: jax.Array) -> None:
    """Give every variable of ``model`` (built abstract or not) upstream's initial value.

    Upstream's initialisation is by module: its ResNet's convs (the SCA 1x1s inside it included,
    not the ECA Conv1d) kaiming-normal fan_out; FEB and FAA-offset convs kaiming-normal with a=1,
    i.e. N(0, 1/fan_in); every other conv (the CBRs, cbr1..3, SCA gates outside the backbone, ECA
    Conv1d, heads) PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BN (1, 0), statistics
    (0, 1).  The values are drawn on the host from a generator seeded by ``key`` (drawing them
    with ``jax.random`` compiles one program per kernel shape, ~15 s on a small CPU); when the
    model is built under a trace (``nnx.jit``, ``nnx.eval_shape``) they are drawn with
    ``jax.random`` from ``key`` instead.
    """
    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)
    try:
        words = np.asarray(jax.random.key_data(key)).ravel().tolist()
    except jax.errors.TracerArrayConversionError:
        words = None
    if words is not None:
        gen = np.random.default_rng(words)

        def normal(shape):
            return gen.standard_normal(shape)

        def uniform(shape):
            return gen.uniform(-1.0, 1.0, shape)

    else:
        count = itertools.count()

        def normal(shape):
            return jax.random.normal(jax.random.fold_in(key, next(count)), shape)

        def uniform(shape):
            return jax.random.uniform(jax.random.fold_in(key, next(count)), shape, minval=-1.0, maxval=1.0)

    def fill(node, path):
        for name, leaf in node.items():
            p = (*path, name)
            if isinstance(leaf, dict):
                fill(leaf, p)
                continue
            shape, dtype = tuple(leaf.shape), leaf.dtype
            if name == "kernel":
                value = _initial_kernel(p, shape, normal, uniform)
            elif name in ("scale", "var"):
                value = np.ones(shape)
            elif name in ("bias", "mean", "num_batches_tracked"):
                value = np.zeros(shape)
            else:
                raise ValueError(f"init_like_upstream: no rule for {'.'.join(map(str, p))}")
            node[name] = jnp.asarray(value, dtype)

    fill(pure, ())
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


class SFANet(nnx.Module):
    """SFANet (T-ITS 2021); see the module docstring."""

    LOSS_WEIGHTS = (1.0, 0.4, 0.4, 0.4, 0.4)
    IMAGENET = "resnet18"

    def __init__(self, num_classes: int, *, dtype=None, rngs: nnx.Rngs):
        self.num_classes = num_classes
        key = rngs.params()

        def build():  # the module tree only (abstract: no initialiser runs, nothing compiles)
            kw = {"dtype": dtype, "rngs": nnx.Rngs(0)}
            return {
                "resnet": Backbone(**kw),
                "sfa4": SFA(512, 128, FEBDepthwise(128, 2, 5, **kw), **kw),
                "sfa3": SFA(128, 128, FEBDepthwise(128, 1, 1, **kw), **kw),
                "sfa2": SFA(128, 128, FEB2(128, **kw), **kw),
                "sfa1": SFA(128, 64, FEB1(), **kw),
                "conv_out": SegHead(128, num_classes, **kw),
                "conv_out1": SegHead(64, num_classes, **kw),
                "conv_out2": SegHead(128, num_classes, **kw),
                "conv_out3": SegHead(128, num_classes, **kw),
                "conv_out4": SegHead(128, num_classes, **kw),
            }

        for name, module in nnx.eval_shape(build).items():
            setattr(self, name, module)
        init_like_upstream(self, key)

    def _features(self, x: jax.Array):
        feat4, feat8, feat16, feat32, gap = self.resnet(x)
        sfa4 = self.sfa4(feat32, gap)
        sfa3 = self.sfa3(feat16, sfa4)
        sfa2 = self.sfa2(feat8, sfa3)
        sfa1 = self.sfa1(feat4, sfa2)
        return feat4, sfa1, sfa2, sfa3, sfa4

    def __call__(self, x: jax.Array) -> jax.Array:
        """Main logits (N, H, W, K) at the input size (the aux heads are not computed)."""
        feat4, sfa1, *_ = self._features(x)
        return self.conv_out(jnp.concatenate([feat4, sfa1], axis=-1), x.shape[1:3])

    def outputs(self, x: jax.Array) -> tuple[jax.Array, ...]:
        """(main, aux1, aux2, aux3, aux4), every one at the input size (upstream order)."""
        size = x.shape[1:3]
        feat4, sfa1, sfa2, sfa3, sfa4 = self._features(x)
        main = self.conv_out(jnp.concatenate([feat4, sfa1], axis=-1), size)
        heads = (self.conv_out1, self.conv_out2, self.conv_out3, self.conv_out4)
        return (main, *(head(f, size) for head, f in zip(heads, (sfa1, sfa2, sfa3, sfa4))))

    @staticmethod
    def imagenet_key(key: str) -> str | None:
        """torchvision/timm ``resnet18`` key -> this model's PyTorch key (None: unused).

        ``conv1`` is the stem; there is no stem BN (``bn1.*`` and ``fc.*`` are dropped); the SCA at
        index 1 of layers 2-4 moves their second block to index 2.  The SCA and everything after
        the backbone keep their initialisation.
        """
        head, _, rest = key.partition(".")
        if key == "conv1.weight":
            return "resnet.stem.weight"
        if head in ("bn1", "fc"):
            return None
        if head == "layer1":
            return f"resnet.{key}"
        if head in ("layer2", "layer3", "layer4"):
            block, _, leaf = rest.partition(".")
            if block == "0":
                return f"resnet.{key}"
            if block == "1":
                return f"resnet.{head}.2.{leaf}"
        raise ValueError(f"SFANet.imagenet_key: {key!r} is not a ResNet-18 ImageNet key")
