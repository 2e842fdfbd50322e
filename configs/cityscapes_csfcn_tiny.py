"""CSFCN-Tiny-100 on Cityscapes: bilinear head, 19 classes, 1024x2048 evaluation.

python -m jax_csfcn.summary --config configs/cityscapes_csfcn_tiny.py
"""

from jax_csfcn.config import get_config as base


def get_config():
    c = base()
    c.model.variant = "csfcn_tiny"
    c.data.image_size = (1024, 2048)
    return c
