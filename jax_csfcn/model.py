"""CSFCN and CSFCN-Tiny in Flax NNX (NHWC in, NHWC logits out).

The network is specified in ``docs/architecture.md``; comments below cite its steps.
Attribute names and nesting mirror the upstream PyTorch ``state_dict``
(``resnet.``, ``cfc.``, ``sfc.``, ``conv_out32.``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from csfcn.model_config import HEAD_UPSAMPLE, PYRAMID_GRIDS, SFC_GROUPS, ModelConfig
from jax_csfcn import ops
from jax_csfcn.backbone import ResNet18
from jax_csfcn.layers import ConvBNReLU, conv2d, kaiming_fan_out


class LocalAttention(nnx.Module):
    """docs/architecture.md, CFC step 5: ``x * tanh(conv3x3(ConvBNReLU1x1(x))) + x``."""

    def __init__(self, channels: int, inter: int, *, dtype=None, rngs: nnx.Rngs):
        # conv.1 starts at zero so the gate starts neutral (tanh(0) = 0).
        self.conv = nnx.List(
            [
                ConvBNReLU(channels, inter, 1, dtype=dtype, rngs=rngs),
                conv2d(inter, channels, 3, zero_init=True, dtype=dtype, rngs=rngs),
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        mask = jnp.tanh(self.conv[1](self.conv[0](x)))
        return x * mask + x


class CFC(nnx.Module):
    """Context feature calibration: pooled attention over S pyramid bins + local gate."""

    def __init__(self, cin: int = 512, inter: int = 256, local_inter: int = 64, *, dtype=None, rngs: nnx.Rngs):
        self.reduce_channel = ConvBNReLU(cin, inter, 3, dtype=dtype, rngs=rngs)
        self.query_conv = conv2d(inter, 32, 1, bias=True, dtype=dtype, rngs=rngs)

        # Upstream key/value convs are nn.Conv1d(kernel 1) over the S pooled positions: dense.
        def dense(o):
            return nnx.Linear(
                inter, o, dtype=dtype, kernel_init=kaiming_fan_out, bias_init=nnx.initializers.zeros, rngs=rngs
            )

        self.key_conv = dense(32)
        self.value_conv = dense(inter)
        self.local_attention = LocalAttention(inter, local_inter, dtype=dtype, rngs=rngs)

    def __call__(self, feat32: jax.Array) -> jax.Array:
        x = self.reduce_channel(feat32)  # step 1
        n, h, w, c = x.shape
        pooled = ops.pyramid_pool(x, PYRAMID_GRIDS)  # step 2: pooled once for keys and values
        query = self.query_conv(x).reshape(n, h * w, -1)  # step 3
        key = self.key_conv(pooled)
        value = self.value_conv(pooled)
        attn = jax.nn.softmax(ops.at_least_f32(jnp.einsum("bnd,bsd->bns", query, key)), axis=-1)  # step 4
        context = jnp.einsum("bns,bsc->bnc", attn.astype(value.dtype), value).reshape(n, h, w, c)
        context = self.local_attention(context)  # step 5
        return x + context  # step 6


def _split_groups(t: jax.Array, groups: int) -> jax.Array:
    """(N, H, W, G*C) -> (N*G, H, W, C), group-major like torch's reshape(n*G, -1, h, w)."""
    n, h, w, c = t.shape
    return t.reshape(n, h, w, groups, c // groups).transpose(0, 3, 1, 2, 4).reshape(n * groups, h, w, c // groups)


def _merge_groups(t: jax.Array, groups: int) -> jax.Array:
    ng, h, w, c = t.shape
    return t.reshape(ng // groups, groups, h, w, c).transpose(0, 2, 3, 1, 4).reshape(ng // groups, h, w, groups * c)


def sfc_sample_and_gate(cp: jax.Array, sp: jax.Array, r: jax.Array, groups: int = SFC_GROUPS) -> jax.Array:
    """docs/architecture.md, SFC steps 4-7 given cp, sp (N, H, W, 128) and the 10-channel map r."""
    n, h, w, _ = cp.shape
    # Upstream samples at grid = (linspace(-1, 1, W), linspace(-1, 1, H)) + offsets / (W, H)
    # with align_corners=True, i.e. at pixel (i, j) displaced by offsets * ((W - 1) / (2 W),
    # (H - 1) / (2 H)); sampling at the displacement directly keeps it exact (ops.sample_displaced).
    to_pixels = jnp.array([(w - 1) / (2 * w), (h - 1) / (2 * h)], ops.at_least_f32(r).dtype)

    def sample(t, off):
        d = ops.at_least_f32(_split_groups(off, groups)) * to_pixels
        return _merge_groups(ops.sample_displaced(_split_groups(t, groups), d[..., 0], d[..., 1]), groups)

    with jax.named_scope(ops.INTERP_SCOPE):
        cp_s = sample(cp, r[..., 0 : 2 * groups])
        sp_s = sample(sp, r[..., 2 * groups : 4 * groups])
    gates = 1.0 + jnp.tanh(r[..., 4 * groups : 4 * groups + 2])
    return sp_s * gates[..., 0:1] + cp_s * gates[..., 1:2]


class SFC(nnx.Module):
    """Spatial feature calibration with G = 2 groups (CSFCN: with cp1x1/sp1x1; Tiny: without)."""

    def __init__(self, tiny: bool = False, *, dtype=None, rngs: nnx.Rngs):
        self.tiny = tiny
        self.conv_8 = ConvBNReLU(128, 128, 3, dtype=dtype, rngs=rngs)
        self.conv_32 = ConvBNReLU(256, 128, 3, dtype=dtype, rngs=rngs)
        if tiny:
            self.cp1x1 = self.sp1x1 = None
            offset_in = 256
        else:
            self.cp1x1 = conv2d(128, 32, 1, dtype=dtype, rngs=rngs)
            self.sp1x1 = conv2d(128, 32, 1, dtype=dtype, rngs=rngs)
            offset_in = 64
        # conv_offset.1 starts at zero: SFC starts as an identity resampling with unit gates.
        self.conv_offset = nnx.List(
            [
                ConvBNReLU(offset_in, 64, 1, dtype=dtype, rngs=rngs),
                conv2d(64, SFC_GROUPS * 4 + 2, 3, zero_init=True, dtype=dtype, rngs=rngs),
            ]
        )

    def __call__(self, feat8: jax.Array, cfc_out: jax.Array) -> jax.Array:
        _, h, w, _ = feat8.shape
        sp = ops.resize_bilinear(self.conv_32(cfc_out), (h, w))  # step 1
        cp = self.conv_8(feat8)  # step 2
        if self.tiny:
            cat = jnp.concatenate([cp, sp], axis=-1)
        else:
            cat = jnp.concatenate([self.cp1x1(cp), self.sp1x1(sp)], axis=-1)
        r = self.conv_offset[1](self.conv_offset[0](cat))  # step 3
        return sfc_sample_and_gate(cp, sp, r)


class Head(nnx.Module):
    """``conv_out32``: ConvBNReLU then 1x1 conv; pixel shuffle x8 (CSFCN) or bilinear x8 (Tiny)."""

    def __init__(self, num_classes: int, tiny: bool = False, *, dtype=None, rngs: nnx.Rngs):
        self.tiny = tiny
        out = num_classes if tiny else num_classes * HEAD_UPSAMPLE**2
        self.conv = ConvBNReLU(128, 128, 3, dtype=dtype, rngs=rngs)
        self.conv_out = conv2d(128, out, 1, bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_out(self.conv(x))
        if self.tiny:
            n, h, w, _ = x.shape
            return ops.resize_bilinear(x, (h * HEAD_UPSAMPLE, w * HEAD_UPSAMPLE))
        return ops.pixel_shuffle(x, HEAD_UPSAMPLE)


class CSFCN(nnx.Module):
    """The whole network.  Input: normalised NHWC images; output: NHWC logits at 8x feat8."""

    def __init__(self, config: ModelConfig, *, dtype=None, rngs: nnx.Rngs):
        self.config = config
        tiny = config.name == "csfcn_tiny"
        self.resnet = ResNet18(config.stem, dtype=dtype, rngs=rngs)
        self.cfc = CFC(local_inter=32 if tiny else 64, dtype=dtype, rngs=rngs)
        self.sfc = SFC(tiny, dtype=dtype, rngs=rngs)
        self.conv_out32 = Head(config.num_classes, tiny, dtype=dtype, rngs=rngs)

    LOSS_WEIGHTS = (1.0,)  # one output, no auxiliary heads

    def __call__(self, x: jax.Array) -> jax.Array:
        feat8, feat32 = self.resnet(x)
        f = self.cfc(feat32)
        f = self.sfc(feat8, f)
        return self.conv_out32(f)

    def outputs(self, x: jax.Array) -> tuple[jax.Array]:
        """The outputs the training loss reads: the logits alone."""
        return (self(x),)


def build_model(config, *, seed: int = 0, dtype=None) -> nnx.Module:
    """The one factory: a :class:`ModelConfig` (or a mapping / ConfigDict of its fields) -> CSFCN,
    CSFCN-Tiny or the zoo model ``config.name`` (:mod:`jax_csfcn.zoo`), with ``.config`` set.

    Every model maps normalised NHWC images to NHWC logits at the input size; ``outputs(x)``
    gives every output its training loss reads and ``LOSS_WEIGHTS`` their weights."""
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_mapping(dict(config))
    if not config.is_zoo:
        return CSFCN(config, dtype=dtype, rngs=nnx.Rngs(seed))
    from jax_csfcn.zoo import zoo_class  # lazy: each zoo model's module loads on first use

    model = zoo_class(config.name)(config.num_classes, dtype=dtype, rngs=nnx.Rngs(seed))
    model.config = config
    return model


def count_params(model: nnx.Module) -> int:
    """Trainable parameters (BN statistics excluded), as ``sum(p.numel() for p in parameters())``."""
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
