"""Checkpoint conversion between the Flax model, the PyTorch twin and the upstream release.

Public API::

    config, flat = convert.read_checkpoint(path)          # any supported checkpoint
    convert.write_checkpoint(path, config, flat)          # format from the path
    flat, n = convert.load_imagenet_backbone(config, flat, "resnet18.pth")

and the CLI ``python -m convert SRC DST``.  See :mod:`convert.table` for the one rule table.
"""

from convert.formats import (
    infer_config,
    kind_of,
    load_imagenet_backbone,
    model_flat,
    model_template,
    read_checkpoint,
    read_torch_file,
    save_flax_model,
    set_model_flat,
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
    "infer_config",
    "kind_of",
    "load_imagenet_backbone",
    "model_flat",
    "model_template",
    "read_checkpoint",
    "read_torch_file",
    "save_flax_model",
    "set_model_flat",
    "torch_key",
    "torch_to_flax",
    "write_checkpoint",
]
