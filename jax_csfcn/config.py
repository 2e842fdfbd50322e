"""Default configuration: every field has its default here; files in configs/ change a few.

Override any field on the command line with ml_collections' config flags, e.g.::

    python -m jax_csfcn.summary --config configs/cityscapes_csfcn.py --config.model.num_classes=11
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # The network (see jax_csfcn.model_config.ModelConfig and shared/spec/MODEL.md).
    c.model = ml_collections.ConfigDict()
    c.model.variant = "csfcn"  # "csfcn" (pixel-shuffle head) or "csfcn_tiny"
    c.model.num_classes = 19
    c.model.stem = "torchvision"  # "torchvision" (7x7 conv) or "deep" (ResNet-v1c)

    # Data.
    c.data = ml_collections.ConfigDict()
    c.data.image_size = (1024, 2048)  # full-resolution evaluation size (H, W)

    return c
