"""CSFCN-100 on Cityscapes: 19 classes, 1024x2048 evaluation.

python -m jax_csfcn.summary --config configs/cityscapes_csfcn.py
"""

from jax_csfcn.config import get_config as base


def get_config():
    c = base()
    c.model.variant = "csfcn"
    c.model.num_classes = 19
    c.data.image_size = (1024, 2048)
    return c
