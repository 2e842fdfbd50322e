"""Random weights that behave like a trained network, for the parity tests.

Plain random weights with random BatchNorm statistics make activations grow layer after
layer (SFC offsets of hundreds of pixels on a 45x60 map), a regime where any rounding in
the offsets is amplified by the sampling and no two implementations can agree.  Here:

* every kernel is drawn N(0, 2 / fan_in) -- including the two gate convs that start at zero,
  so SFC's sampling and CFC's local gate are really exercised;
* BN scale ~ U(0.5, 1.5), bias ~ N(0, 0.2);
* BN running statistics are calibrated on a random batch (one train-mode pass with momentum
  1) and then perturbed (mean + 0.1 sd noise, var x U(0.7, 1.4)), so they are random, differ
  per channel and exercise the BN conversion, while activations stay O(1).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_csfcn.checkpointing import model_flat, set_model_flat
from jax_csfcn.layers import BatchNorm2d


def randomize_like_trained(model, seed: int, calib_shape=(2, 128, 256, 3)) -> dict:
    """Randomise ``model`` in place (ends in eval mode); returns its flat params."""
    rng = np.random.default_rng(seed)
    flat = model_flat(model)
    for path, a in flat.items():
        leaf = path[-1]
        if leaf == "kernel":
            fan_in = int(np.prod(a.shape[:-1]))
            flat[path] = (rng.standard_normal(a.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        elif leaf == "scale":
            flat[path] = rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
        elif leaf == "bias":
            flat[path] = (0.2 * rng.standard_normal(a.shape)).astype(np.float32)
    set_model_flat(model, flat)

    bns = [m for _, m in model.iter_modules() if isinstance(m, BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]  # SwiftNet's SPP uses 0.005: put each one back
    for bn in bns:
        bn.momentum = 1.0
    model.train()
    nnx.jit(lambda m, x: m(x))(model, jnp.asarray(rng.standard_normal(calib_shape), jnp.float32))
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    model.eval()

    flat = model_flat(model)
    for path, a in flat.items():
        if path[-1] == "mean":
            sd = np.sqrt(flat[path[:-1] + ("var",)])
            flat[path] = (a + 0.1 * sd * rng.standard_normal(a.shape)).astype(np.float32)
        elif path[-1] == "var":
            flat[path] = (a * rng.uniform(0.7, 1.4, a.shape)).astype(np.float32)
        elif path[-1] == "num_batches_tracked":
            flat[path] = np.asarray(rng.integers(1, 10_000), np.int32)
    set_model_flat(model, flat)
    return flat
