"""MGSeg in Flax NNX (NHWC): "MGSeg: Multiple Granularity-Based Real-Time Semantic Segmentation
Network" (IEEE Transactions on Image Processing, 2021), as released in kaigelee/CSFCN
``models/MGSeg.py`` (the ``MGSeg(n_classes, output_aux=True)`` constructor, aux head built).

Network (module paths = the upstream ``state_dict``'s, so :mod:`convert.table` maps them as is):

* ``resnet``: ResNet-18 trunk whose stem is ``resnet.stem`` = conv 7x7/2 and max-pool 3x3/2,
  **no BN and no ReLU in between** (as upstream; a torchvision checkpoint's ``bn1`` is dropped),
  then torchvision's ``layer1..4`` (BasicBlocks, same names).  It yields c2 (1/8, 128 ch),
  c3 (1/16, 256 ch) and c4 (1/32, 512 ch).
* ``hafa``: f3 = S_LWA(c4) (CBR 3x3 512->128, then ``x * sigmoid(Linear(GAP x)) + x``),
  f2 = S_LWA(c3), f1 = LWA(cat[c2, p2]) (CBR 1x1 and a two-Linear SE gate), and a chain of plain
  3x3 convs (``q5/q4/q3_conv``, ``p1/p2/p3(_1)_conv``) across 1/16 and 1/8 ending in
  ``predictor`` (32 -> K) = ``pred`` at 1/8.  The chain has **no BN and no activation**: it is
  linear apart from the gates, as upstream (kept).
* ``fgr``: GWL predicts 4 mixing weights per class and pixel from c4 (conv 3x3 512->128,
  conv 1x1 128->8K, up to 1/16, grouped conv 3x3 8K->4K with K groups, up to 1/8); three
  conv 3x3 128->1 turn f3, f2, f1 (at 1/8) into one map each; the main logits at 1/8 are, per
  class k, ``sum_m w[k, m] * [a1, a2, a3, pred_k][m]``.
* ``conv_out16`` (aux): CBR 3x3 256->64 on c3, conv 1x1 64->256K (+bias), PixelShuffle(16).

Inputs: ImageNet-normalised NHWC images, any H, W (multiples of 8 and others).
``outputs(x)`` = ``(main, pred, aux)``, each (B, H, W, K) at the input size, upstream's order;
:attr:`MGSeg.LOSS_WEIGHTS` = (1, 0.4, 0.4), the CSFCN repo's ``MixSoftmaxCrossEntropyOHEMLoss``
with aux weight 0.4 (the upstream ships no MGSeg training script).  ``pred`` is part of the main
path (FGR reads it), not a removable head.  ``model(x)`` = main only (the aux head is skipped).

Upstream bugs and quirks, and what we do instead:

* **19 classes hard-coded** in ``hafa.predictor`` (32->19), ``fgr.gwl.conv_1.1`` (128->152 = 8*19),
  ``fgr.gwl.GC_conv`` (152->76, groups=19) and FGR's repeat/reshape; only the aux head follows
  ``n_classes``, so an 11-class upstream model emits (19, 19, 11) channels.  Here all of them are
  K (8K, 4K, groups=K): identical shapes to upstream at K=19 (13,811,840 parameters), but at K=11
  this model has 13,665,920 parameters, not the upstream constructor's 13,678,720 (a broken
  19-class model with an 11-class aux head).  The K-dependent part is 18,240 * K parameters
  (predictor 288K, gwl.conv_1.1 1024K, GC_conv 288K, aux conv_out 16,640K).
* **Fixed-factor resizes** (x2 three times, x0.5 for ``p2_down``, x8 for both outputs) need H and
  W to be multiples of 32 (720x960 and 360x480 crash upstream with a broadcast error).  Each is a
  bilinear align_corners=True resize *to the size of the tensor it is added to* (to the input
  size for the outputs): the same numbers as upstream wherever upstream runs, since PyTorch's
  align_corners=True mapping depends only on the two sizes.
* The aux PixelShuffle(16) output is 16*ceil(H/16) x 16*ceil(W/16); where that is not the input
  size it is resized (bilinear, align_corners=True) to it.  Upstream has no such step.
* ``output_aux=False`` upstream returns an int64 argmax; here the aux head is always built and
  ``__call__`` returns the main logits.
* Initialisation follows the upstream's effective one: the trunk's convs kaiming-normal fan-out;
  HAFA's and FGR's direct convs, ``GC_conv`` and the aux ``conv_out`` kaiming-normal with a=1
  (std 1/sqrt(fan_in), bias 0); the CBR convs and ``fgr.gwl.conv_1`` keep PyTorch's default
  (uniform +-1/sqrt(fan_in)), because upstream ``init_weight`` visits only direct children and
  those convs sit inside an ``nn.Sequential``; Linears PyTorch's default (:func:`layers.linear`).
* Upstream ``get_params`` gives HAFA and FGR a 10x learning rate (not the aux head); that is a
  training-recipe matter and is not encoded here.

Every BatchNorm directly follows its conv (trunk pairs, the three CBRs, the aux CBR), so every one
folds at deployment; see :mod:`torch_deploy.zoo.mgseg`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_csfcn.backbone import BasicBlock, max_pool_3x3s2
from jax_csfcn.layers import BatchNorm2d, conv2d, kaiming_a1, linear, torch_default_kernel
from jax_csfcn.ops import at_least_f32, pixel_shuffle, resize_bilinear

AUX_UPSAMPLE = 16


def _conv(cin: int, cout: int, k: int, init, *, groups: int = 1, bias: bool = False, dtype=None, rngs: nnx.Rngs):
    """:func:`layers.conv2d` (stride 1, padding k // 2) with the upstream's initialiser ``init``."""
    return conv2d(cin, cout, k, groups=groups, bias=bias, kernel_init=init, dtype=dtype, rngs=rngs)


def _resize(x: jax.Array, like: jax.Array | tuple[int, int]) -> jax.Array:
    """Bilinear align_corners=True resize to ``like``'s (H, W) (or to that size)."""
    size = like if isinstance(like, tuple) else like.shape[1:3]
    return resize_bilinear(x, size, align_corners=True)


def _gap(x: jax.Array) -> jax.Array:
    """Global average pool (N, H, W, C) -> (N, C), summed in fp32 at least."""
    return jnp.mean(at_least_f32(x), axis=(1, 2)).astype(x.dtype)


class Backbone(nnx.Module):
    """Upstream ``Backbone``: ``stem`` conv 7x7/2 (no BN, no ReLU), max-pool, layer1..4."""

    def __init__(self, *, dtype=None, rngs: nnx.Rngs):
        self.stem = conv2d(3, 64, 7, stride=2, dtype=dtype, rngs=rngs)
        cin = 64
        for i, (cout, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), start=1):
            blocks = [
                BasicBlock(cin, cout, stride, dtype=dtype, rngs=rngs),
                BasicBlock(cout, cout, 1, dtype=dtype, rngs=rngs),
            ]
            setattr(self, f"layer{i}", nnx.List(blocks))
            cin = cout

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        x = max_pool_3x3s2(self.stem(x))
        out = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x)
            out.append(x)
        return out[1], out[2], out[3]  # c2 (1/8), c3 (1/16), c4 (1/32)


class CBR(nnx.Module):
    """conv k x k (no bias) -> BN -> ReLU at paths ``conv.0`` / ``conv.1`` (upstream ``CBR``)."""

    def __init__(self, cin: int, cout: int, k: int, *, dtype=None, rngs: nnx.Rngs):
        conv = _conv(cin, cout, k, torch_default_kernel, dtype=dtype, rngs=rngs)
        self.conv = nnx.List([conv, BatchNorm2d(cout, dtype=dtype)])

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.conv[1](self.conv[0](x)))


class SLWA(nnx.Module):
    """Upstream ``S_LWA``: x = CBR3x3(in); x * sigmoid(Linear(GAP x)) + x (no bias)."""

    def __init__(self, cin: int, cout: int, *, dtype=None, rngs: nnx.Rngs):
        self.reduce = CBR(cin, cout, 3, dtype=dtype, rngs=rngs)
        self.fc = nnx.List([linear(cout, cout, bias=False, dtype=dtype, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.reduce(x)
        y = jax.nn.sigmoid(self.fc[0](_gap(x)))
        return x * y[:, None, None, :].astype(x.dtype) + x


class LWA(nnx.Module):
    """Upstream ``LWA``: x = CBR1x1(in); x * sigmoid(L2(relu(L1(GAP x)))) + x (no biases)."""

    def __init__(self, cin: int, cout: int, reduction: int = 2, *, dtype=None, rngs: nnx.Rngs):
        self.reduce = CBR(cin, cout, 1, dtype=dtype, rngs=rngs)
        mid = cout // reduction
        self.fc = nnx.Dict(
            {
                "0": linear(cout, mid, bias=False, dtype=dtype, rngs=rngs),
                "2": linear(mid, cout, bias=False, dtype=dtype, rngs=rngs),
            }
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.reduce(x)
        y = jax.nn.sigmoid(self.fc["2"](jax.nn.relu(self.fc["0"](_gap(x)))))
        return x * y[:, None, None, :].astype(x.dtype) + x


class HAFA(nnx.Module):
    """Upstream ``HAFA`` with ``predictor`` 32 -> K; returns (f3 1/16, f2 1/16, f1 1/8, pred 1/8)."""

    def __init__(self, num_classes: int, *, dtype=None, rngs: nnx.Rngs):
        def conv(cin, cout):
            return _conv(cin, cout, 3, kaiming_a1, dtype=dtype, rngs=rngs)

        self.q5_slwa = SLWA(512, 128, dtype=dtype, rngs=rngs)
        self.q5_conv = conv(128, 128)
        self.q4_slwa = SLWA(256, 128, dtype=dtype, rngs=rngs)
        self.q4_conv = conv(128, 128)
        self.q3_lwa = LWA(256, 128, dtype=dtype, rngs=rngs)
        self.q3_conv = conv(128, 128)
        self.p1_conv = conv(128, 32)
        self.p1_1_conv = conv(32, 32)
        self.p2_conv = conv(128, 32)
        self.p2_1_conv = conv(32, 32)
        self.p3_conv = conv(128, 32)
        self.p3_1_conv = conv(32, 32)
        self.predictor = conv(32, num_classes)

    def __call__(self, q3: jax.Array, q4: jax.Array, q5: jax.Array):
        f3 = _resize(self.q5_slwa(q5), q4)  # upstream: x2 (1/32 -> 1/16)
        p3 = self.q5_conv(f3)
        f2 = self.q4_slwa(q4)
        p2 = self.q4_conv(_resize(p3 + f2, q3))  # upstream: x2 (1/16 -> 1/8)
        f1 = self.q3_lwa(jnp.concatenate([q3, p2], axis=-1))
        p1 = self.q3_conv(f1 + p2)
        p3 = self.p3_conv(p3)
        p2 = self.p2_conv(p2)
        p1 = self.p1_1_conv(self.p1_conv(p1))
        p2 = self.p2_1_conv(p1 + p2)
        p3 = self.p3_1_conv(_resize(p2, p3) + p3)  # upstream: x0.5 (1/8 -> 1/16)
        p3 = _resize(p3, p2)  # upstream: x2
        return f3, f2, f1, self.predictor(p3 + p2 + p1)


class GWL(nnx.Module):
    """Upstream ``GWL`` with K: conv 3x3 512->128, conv 1x1 128->8K, up, grouped 3x3 8K->4K, up."""

    def __init__(self, num_classes: int, *, dtype=None, rngs: nnx.Rngs):
        k = num_classes
        self.conv_1 = nnx.List(
            [
                _conv(512, 128, 3, torch_default_kernel, dtype=dtype, rngs=rngs),
                _conv(128, 8 * k, 1, torch_default_kernel, dtype=dtype, rngs=rngs),
            ]
        )
        self.GC_conv = _conv(8 * k, 4 * k, 3, kaiming_a1, groups=k, dtype=dtype, rngs=rngs)

    def __call__(self, q5: jax.Array, size16: tuple[int, int], size8: tuple[int, int]) -> jax.Array:
        x = self.conv_1[1](self.conv_1[0](q5))
        x = self.GC_conv(_resize(x, size16))  # upstream: x2
        return _resize(x, size8)  # upstream: x2; (B, h8, w8, 4K), channel k * 4 + m


class FGR(nnx.Module):
    """Upstream ``FGR``: per class k and pixel, sum_m w[k, m] * [a1, a2, a3, pred_k][m] at 1/8."""

    def __init__(self, num_classes: int, *, dtype=None, rngs: nnx.Rngs):
        self.num_classes = num_classes
        self.gwl = GWL(num_classes, dtype=dtype, rngs=rngs)

        def conv():
            return _conv(128, 1, 3, kaiming_a1, dtype=dtype, rngs=rngs)

        self.conv_1 = conv()
        self.conv_2 = conv()
        self.conv_3 = conv()

    def __call__(self, q5, f3, f2, f1, pred):
        weight = self.gwl(q5, f2.shape[1:3], f1.shape[1:3])
        b, h, w, _ = weight.shape
        a = jnp.concatenate([self.conv_1(_resize(f3, f1)), self.conv_2(_resize(f2, f1)), self.conv_3(f1)], axis=-1)
        k = self.num_classes
        g = jnp.concatenate([jnp.broadcast_to(a[:, :, :, None, :], (b, h, w, k, 3)), pred[..., None]], axis=-1)
        return jnp.sum(g * weight.reshape(b, h, w, k, 4), axis=-1)


class SegHead(nnx.Module):
    """Upstream ``SegHead(256, 64, K, up_factor=16)``: CBR 3x3, conv 1x1 (+bias), PixelShuffle(16)."""

    def __init__(self, cin: int, mid: int, num_classes: int, *, dtype=None, rngs: nnx.Rngs):
        self.conv = CBR(cin, mid, 3, dtype=dtype, rngs=rngs)
        out = num_classes * AUX_UPSAMPLE**2
        self.conv_out = _conv(mid, out, 1, kaiming_a1, bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return pixel_shuffle(self.conv_out(self.conv(x)), AUX_UPSAMPLE)


class MGSeg(nnx.Module):
    """MGSeg (TIP 2021) for ``num_classes`` classes; see the module docstring."""

    LOSS_WEIGHTS = (1.0, 0.4, 0.4)
    IMAGENET = "resnet18"

    def __init__(self, num_classes: int, *, dtype=None, rngs: nnx.Rngs):
        self.num_classes = num_classes
        self.resnet = Backbone(dtype=dtype, rngs=rngs)
        self.hafa = HAFA(num_classes, dtype=dtype, rngs=rngs)
        self.fgr = FGR(num_classes, dtype=dtype, rngs=rngs)
        self.conv_out16 = SegHead(256, 64, num_classes, dtype=dtype, rngs=rngs)

    @staticmethod
    def imagenet_key(key: str) -> str | None:
        """torchvision/timm ``resnet18`` key -> this model's PyTorch key (None: unused).

        ``conv1.weight`` is the stem; ``bn1.*`` has no counterpart (the stem has no BN) and
        ``fc.*`` none either; ``layerX.Y.*`` keep their names under ``resnet.``.
        """
        if key == "conv1.weight":
            return "resnet.stem.weight"
        if key.startswith("layer"):
            return "resnet." + key
        return None

    def _main(self, x: jax.Array):
        c2, c3, c4 = self.resnet(x)
        f3, f2, f1, pred = self.hafa(c2, c3, c4)
        return self.fgr(c4, f3, f2, f1, pred), pred, c3

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalised (B, H, W, 3) images -> main logits (B, H, W, K)."""
        h, _, _ = self._main(x)
        return _resize(h, x.shape[1:3])  # upstream: x8

    def outputs(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(main, pred, aux), each (B, H, W, K) at the input size."""
        size = x.shape[1:3]
        h, pred, c3 = self._main(x)
        aux = self.conv_out16(c3)
        return _resize(h, size), _resize(pred, size), _resize(aux, size)
