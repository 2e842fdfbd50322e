"""CSFCN on CamVid: 11 classes, 720x960.

python -m jax_csfcn.summary --config configs/camvid_csfcn.py
"""

from jax_csfcn.config import get_config as base


def get_config():
    c = base()
    c.model.num_classes = 11
    c.data.image_size = (720, 960)
    return c
