"""The model zoo in Flax NNX: the real-time networks CSFCN is compared with (docs/zoo.md).

Every zoo model is one class in one module of this package, built as ``Cls(num_classes, *,
dtype=None, rngs=nnx.Rngs(seed))``, with module paths that mirror its upstream PyTorch
``state_dict`` (so :mod:`convert.table` maps it with no per-model rule), and:

* ``model(x)``: normalised NHWC images -> NHWC logits of the main head at the input size;
* ``model.outputs(x)``: every output the training loss reads, main first, in the upstream
  order (each at the input size unless the model's loss is multi-scale, as ICNet's);
* ``Cls.LOSS_WEIGHTS``: one weight per entry of ``outputs`` (0: not in the loss).

:func:`zoo_class` imports a model's module on first use (csfcn.registry names it).
"""

from __future__ import annotations

import importlib

from csfcn.registry import names, spec


def zoo_class(name: str):
    """The Flax class of zoo model ``name``, as csfcn.registry names it (its module imported now)."""
    entry = spec(name)
    if not entry.zoo:
        raise ValueError(f"{name} is not a zoo model; the zoo models are {names(zoo=True)}")
    module, cls = entry.flax.split(":")
    return getattr(importlib.import_module(module), cls)
