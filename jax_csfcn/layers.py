"""Building blocks shared by the backbone and the CSFCN modules (Flax NNX, NHWC).

Leaf names follow Flax conventions (``kernel``, ``bias``, ``scale``, ``mean``, ``var``);
the module *paths* follow the upstream PyTorch ``state_dict`` so that the converter is a
path join plus the leaf rules in :mod:`convert.table`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jax_csfcn.ops import at_least_f32


def kaiming_fan_out(key, shape, dtype=jnp.float32):
    """torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out) with
    fan_out = out_channels * kh * kw (plain normal, not truncated), for kernels [..., in, out].

    The values are Flax's ``variance_scaling(2.0, "fan_out", "normal")`` bit for bit (JAX draws
    the same bits for a shape and for its flattening); drawn flat, every kernel of one size shares
    a compiled sampler, which makes building a model several times faster on CPU.
    """
    fan_out = int(shape[-1]) * math.prod(shape[:-2])
    flat = jax.random.normal(key, (math.prod(shape),), dtype)
    return (flat * jnp.sqrt(jnp.asarray(2.0 / fan_out, dtype))).reshape(shape)


def kaiming_a1(key, shape, dtype=jnp.float32):
    """``torch.nn.init.kaiming_normal_(w, a=1)``: N(0, 1 / fan_in), fan_in = in * kh * kw (the
    init of the BiSeNet and SFANet/MGSeg code); drawn flat like :func:`kaiming_fan_out`."""
    fan_in = math.prod(shape[:-1])
    return (jax.random.normal(key, (math.prod(shape),), dtype) * fan_in**-0.5).reshape(shape)


def torch_default_kernel(key, shape, dtype=jnp.float32):
    """PyTorch's default conv kernel init (``kaiming_uniform_(a=sqrt(5))``): U(+-1 / sqrt(fan_in)),
    fan_in = in * kh * kw; drawn flat."""
    return uniform_init(math.prod(shape[:-1]) ** -0.5)(key, shape, dtype)


def uniform_init(bound: float):
    """U(-bound, bound), drawn flat: PyTorch's default ``nn.Conv2d`` / ``nn.Linear`` init with
    bound = 1 / sqrt(fan_in of the weight), for the weight and the bias alike."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound).reshape(shape)

    return init


def conv2d(
    cin: int,
    cout: int,
    k: int,
    *,
    stride: int = 1,
    groups: int = 1,
    dilation: int = 1,
    bias: bool = False,
    zero_init: bool = False,
    kernel_init=None,
    bias_init=None,
    dtype=None,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A k x k conv with PyTorch's symmetric padding k // 2 (not XLA's "SAME", which pads
    stride-2 convs asymmetrically and would shift every feature map by half a pixel).

    ``groups`` is ``nn.Conv2d``'s: input and output channels split into that many contiguous
    blocks, block g of the output seeing only block g of the input; the kernel is then
    [k, k, cin / groups, cout] (PyTorch: [cout, cin / groups, k, k]).  ``dilation`` d spaces the
    taps d apart with padding d * (k // 2), ``nn.Conv2d(..., padding=d * (k // 2), dilation=d)``.
    Initialisation: :func:`kaiming_fan_out` kernels (zeros with ``zero_init``) and zero biases,
    unless ``kernel_init`` / ``bias_init`` say otherwise (a zoo model's upstream init).
    """
    if cin % groups or cout % groups:
        raise ValueError(f"conv2d: channels {cin} -> {cout} do not split into {groups} groups")
    p = dilation * (k // 2)
    return nnx.Conv(
        cin,
        cout,
        kernel_size=(k, k),
        strides=(stride, stride),
        padding=((p, p), (p, p)),
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        use_bias=bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init or (nnx.initializers.zeros if zero_init else kaiming_fan_out),
        bias_init=bias_init or nnx.initializers.zeros,
        rngs=rngs,
    )


def depthwise_conv2d(
    channels: int, k: int, *, stride: int = 1, dilation: int = 1, bias: bool = False, dtype=None, rngs: nnx.Rngs
) -> nnx.Conv:
    """``nn.Conv2d(channels, channels, k, stride, k // 2, groups=channels)``: one k x k filter per
    channel; kernel [k, k, 1, channels] (PyTorch: [channels, 1, k, k])."""
    return conv2d(
        channels, channels, k, stride=stride, groups=channels, dilation=dilation, bias=bias, dtype=dtype, rngs=rngs
    )


class SeparableConv2d(nnx.Module):
    """Depthwise k x k conv (one filter per input channel, stride here) then pointwise 1 x 1 conv,
    nothing in between: the separable conv of Xception-style blocks.

    PyTorch names: ``<name>.depthwise.weight`` [cin, 1, k, k] and ``<name>.pointwise.weight``
    [cout, cin, 1, 1], plus ``.bias`` on each with ``bias=True``.  A block that puts a norm
    between the two is built from :func:`depthwise_conv2d` and :func:`conv2d` under its own names.
    """

    def __init__(
        self, cin: int, cout: int, k: int = 3, *, stride: int = 1, bias: bool = False, dtype=None, rngs: nnx.Rngs
    ):
        self.depthwise = depthwise_conv2d(cin, k, stride=stride, bias=bias, dtype=dtype, rngs=rngs)
        self.pointwise = conv2d(cin, cout, 1, bias=bias, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.pointwise(self.depthwise(x))


def conv1d(
    cin: int, cout: int, k: int, *, padding: int | None = None, bias: bool = False, dtype=None, rngs: nnx.Rngs
) -> nnx.Conv:
    """``nn.Conv1d(cin, cout, k, padding=padding)`` on (N, L, C): ``padding`` zeros on both ends,
    (k - 1) // 2 by default (ECA's, which keeps L for odd k); kernel [k, cin, cout] (PyTorch:
    [cout, cin, k])."""
    p = (k - 1) // 2 if padding is None else padding
    return nnx.Conv(
        cin,
        cout,
        kernel_size=(k,),
        padding=((p, p),),
        use_bias=bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kaiming_fan_out,
        bias_init=nnx.initializers.zeros,
        rngs=rngs,
    )


def linear(cin: int, cout: int, *, bias: bool = True, dtype=None, rngs: nnx.Rngs) -> nnx.Linear:
    """``nn.Linear(cin, cout)`` on the last axis: kernel [cin, cout] (PyTorch weight [cout, cin]),
    initialised as PyTorch does, weight and bias U(-1/sqrt(cin), 1/sqrt(cin))."""
    uniform = uniform_init(cin**-0.5)
    return nnx.Linear(
        cin,
        cout,
        use_bias=bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=uniform,
        bias_init=uniform,
        rngs=rngs,
    )


class ECA(nnx.Module):
    """Efficient channel attention: ``x * sigmoid(conv1d(mean over H, W))``, the Conv1d (one
    channel in and out, odd kernel k, no bias) sliding along the channel axis.

    PyTorch name: ``<name>.conv.weight`` [1, 1, k], i.e. ``nn.Conv1d(1, 1, k, padding=(k - 1) // 2,
    bias=False)`` applied to the pooled (N, 1, C) vector.
    """

    def __init__(self, k: int = 3, *, dtype=None, rngs: nnx.Rngs):
        if k < 1 or k % 2 == 0:
            raise ValueError(f"ECA: kernel size must be odd, got {k}")
        self.conv = conv1d(1, 1, k, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, _, _, c = x.shape
        pooled = jnp.mean(at_least_f32(x), axis=(1, 2)).astype(x.dtype)
        gate = jax.nn.sigmoid(self.conv(pooled.reshape(n, c, 1)))  # channels as the length axis
        return x * gate.reshape(n, 1, 1, c).astype(x.dtype)


class BatchNorm2d(nnx.Module):
    """BatchNorm with PyTorch's semantics over the channel (last) axis.

    * momentum is PyTorch's (new = (1 - m) * old + m * batch), 0.1 by default;
    * normalisation uses the biased batch variance, the running variance is updated with
      the unbiased one (n / (n - 1)), as ``torch.nn.BatchNorm2d`` does;
    * ``num_batches_tracked`` is kept so that an upstream ``state_dict`` round-trips exactly.

    Statistics are computed in fp32 whatever the compute dtype.  Under ``jax.jit`` with the
    batch sharded over a mesh, the means are over the global batch (synchronised BN).
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5, dtype=None):
        self.num_features = num_features
        self.momentum = momentum
        self.eps = eps
        self.dtype = dtype
        self.use_running_average = False
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array) -> jax.Array:
        out_dtype = self.dtype or x.dtype
        xf = at_least_f32(x)
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axis=axes)
            var = jnp.mean(jnp.square(xf - mean), axis=axes)
            n = x.size // x.shape[-1]
            m = self.momentum
            unbiased = var * (n / max(n - 1, 1))
            self.mean[...] = (1.0 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            self.var[...] = (1.0 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased)
            self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
        inv = jax.lax.rsqrt(var + self.eps) * self.scale[...]
        y = (xf - mean) * inv + self.bias[...]
        return y.astype(out_dtype)


class ConvBNReLU(nnx.Module):
    """conv k x k (no bias) -> BatchNorm -> ReLU; paths ``.conv`` and ``.bn`` as upstream."""

    def __init__(self, cin: int, cout: int, k: int = 3, *, dtype=None, rngs: nnx.Rngs):
        self.conv = conv2d(cin, cout, k, dtype=dtype, rngs=rngs)
        self.bn = BatchNorm2d(cout, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))
