"""Checkpoint conversion between the Flax model, the PyTorch twin and the upstream release.

Public API::

    config, flat = convert.read_checkpoint(path)          # any supported checkpoint -> Flax params
    convert.write_checkpoint(path, config, flat)          # format from the path
    flax_model = convert.load_flax_model(path)            # any checkpoint -> the nnx model
    torch_model = convert.load_torch_model(path)          # any checkpoint -> the PyTorch twin
    flat, n = convert.load_imagenet_backbone(config, flat, "resnet18.pth")

and the CLI ``python -m convert SRC DST``.  See :mod:`convert.table` for the one rule table.
The Flax side (JAX, Flax, Orbax) is needed only for the Flax formats and models.
"""

from convert.formats import (
    imagenet_initialised,
    infer_config,
    init_backbone,
    kind_of,
    load_flax_model,
    load_imagenet_backbone,
    load_torch_model,
    read_checkpoint,
    read_torch_file,
    save_flax_model,
    write_checkpoint,
)
from convert.table import (
    LEAF_RULES,
    ConversionError,
    flax_to_torch,
    torch_key,
    torch_to_flax,
)

__all__ = [
    "LEAF_RULES",
    "ConversionError",
    "flax_to_torch",
    "imagenet_initialised",
    "infer_config",
    "init_backbone",
    "kind_of",
    "load_flax_model",
    "load_imagenet_backbone",
    "load_torch_model",
    "read_checkpoint",
    "read_torch_file",
    "save_flax_model",
    "torch_key",
    "torch_to_flax",
    "write_checkpoint",
]
