"""python -m jax_csfcn.train --config configs/cityscapes_csfcn.py --config.data.root=/data/cityscapes

CSFCN on Cityscapes: the same as configs/cityscapes_csfcn_100.py (CSFCN-100,
1024x2048), kept under its older name (tests/test_configs.py checks they agree).
"""

from jax_csfcn.config import get_config as base


def get_config():
    c = base()
    c.workdir = "runs/cityscapes_csfcn_100"
    c.data.dataset = "cityscapes"
    c.data.root = "data/cityscapes"
    return c
