"""Building blocks shared by the backbone and the CSFCN modules (Flax NNX, NHWC).

Leaf names follow Flax conventions (``kernel``, ``bias``, ``scale``, ``mean``, ``var``);
the module *paths* follow the upstream PyTorch ``state_dict`` so that the converter is a
path join plus the leaf rules in :mod:`convert.table`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_csfcn.ops import at_least_f32

# torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / fan_out),
# fan_out = out_channels * kh * kw (plain normal, not truncated).
kaiming_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv2d(
    cin: int,
    cout: int,
    k: int,
    *,
    stride: int = 1,
    bias: bool = False,
    zero_init: bool = False,
    dtype=None,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A k x k conv with PyTorch's symmetric padding k // 2 (not XLA's "SAME", which pads
    stride-2 convs asymmetrically and would shift every feature map by half a pixel)."""
    p = k // 2
    return nnx.Conv(
        cin,
        cout,
        kernel_size=(k, k),
        strides=(stride, stride),
        padding=((p, p), (p, p)),
        use_bias=bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nnx.initializers.zeros if zero_init else kaiming_fan_out,
        bias_init=nnx.initializers.zeros,
        rngs=rngs,
    )


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
