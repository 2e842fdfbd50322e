"""python -m jax_csfcn.train --config configs/cityscapes_csfcn_100.py --config.data.root=/data/cityscapes

CSFCN-100 on Cityscapes (19 classes, 1024x2048 input).

The upstream recipe as jax_csfcn/config.py's defaults hold it: 1024x1024 crops of images scaled
by U(0.125, 2.0), flip, batch 12, SGD lr 0.01 (warm-up, poly), OHEM cross-entropy, 119040
iterations; evaluation at the full 1024x2048.  The upstream starts from an ImageNet ResNet-18:
add --config.model.imagenet_init=resnet18.pth (a torchvision/timm state_dict you provide).
"""

from jax_csfcn.config import get_config as base


def get_config():
    c = base()
    c.workdir = "runs/cityscapes_csfcn_100"
    c.data.dataset = "cityscapes"
    c.data.root = "data/cityscapes"
    return c
