"""The model zoo in Flax NNX: the real-time networks CSFCN is compared with (docs/zoo.md).

Every zoo model is one class in one module of this package, built as ``Cls(num_classes, *,
dtype=None, rngs=nnx.Rngs(seed))``, with module paths that mirror its upstream PyTorch
``state_dict`` (so :mod:`convert.table` maps it with no per-model rule), and:

* ``model(x)``: normalised NHWC images -> NHWC logits of the main head at the input size;
* ``model.outputs(x)``: every output the training loss reads, main first, in the upstream
  order (each at the input size unless the model's loss is multi-scale, as ICNet's);
* ``Cls.LOSS_WEIGHTS``: one weight per entry of ``outputs`` (0: not in the loss).

:func:`zoo_class` imports a model's module on first use.
"""

from __future__ import annotations

import importlib

ZOO = {
    "sfanet": ("jax_csfcn.zoo.sfanet", "SFANet"),
    "mgseg": ("jax_csfcn.zoo.mgseg", "MGSeg"),
    "icnet": ("jax_csfcn.zoo.icnet", "ICNet"),
    "bisenetv1": ("jax_csfcn.zoo.bisenetv1", "BiSeNetV1"),
    "swiftnet": ("jax_csfcn.zoo.swiftnet", "SwiftNet"),
}


def zoo_class(name: str):
    """The Flax class of zoo model ``name`` (a key of :data:`ZOO`)."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; choose one of {tuple(ZOO)}")
    module, cls = ZOO[name]
    return getattr(importlib.import_module(module), cls)
