"""The model zoo as plain ``torch.nn`` modules (NCHW): the PyTorch twins of :mod:`jax_csfcn.zoo`.

Each twin has its upstream class's module names and nesting, auxiliary heads included, so an
upstream ``state_dict`` loads with ``strict=True``; it is built as ``Cls(num_classes)`` and has

* ``forward(x)``: normalised (B, 3, H, W) images -> (B, K, H, W) logits of the main head;
* ``outputs(x)``: every training output, main first, in the upstream order;
* ``LOSS_WEIGHTS``: one weight per output (0: not in the loss).

Every conv followed by a BatchNorm that reads only that conv's output runs through
``self.ops.conv_bn`` (:class:`torch_deploy.model.ReferenceOps`), so that deployment folds
exactly those pairs (docs/zoo.md, "Deployment").
"""

from __future__ import annotations

import importlib

from csfcn.registry import names, spec


def zoo_class(name: str):
    """The PyTorch class of zoo model ``name``, as csfcn.registry names it (its module imported now)."""
    entry = spec(name)
    if not entry.zoo:
        raise ValueError(f"{name} is not a zoo model; the zoo models are {names(zoo=True)}")
    module, cls = entry.torch.split(":")
    return getattr(importlib.import_module(module), cls)
