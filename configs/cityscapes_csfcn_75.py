"""python -m jax_csfcn.train --config configs/cityscapes_csfcn_75.py --config.data.root=/data/cityscapes

CSFCN-75 on Cityscapes (19 classes, 768x1536 input).

The upstream names the input size after the model: "-75" = 768x1536, the Cityscapes images
downscaled from 1024x2048.  The upstream publishes no separate recipe for it; this follows the
practice of STDC-Seg50/75: the random scale U(0.125, 2.0) is relative to 768x1536
(data.base_size), crops are 768x1536, and evaluation feeds the network the image resized to
768x1536 (data.eval_size) and scores the logits upsampled to the full-resolution labels.
Everything else is the upstream recipe (jax_csfcn/config.py).  ImageNet backbone:
--config.model.imagenet_init=resnet18.pth.
"""

from jax_csfcn.config import get_config as base


def get_config():
    c = base()
    c.workdir = "runs/cityscapes_csfcn_75"
    c.data.dataset = "cityscapes"
    c.data.root = "data/cityscapes"
    c.data.image_size = (768, 1536)  # the inference size (jax_csfcn.summary)
    c.data.eval_size = (768, 1536)
    c.data.base_size = (768, 1536)
    c.data.crop_size = (768, 1536)
    return c
