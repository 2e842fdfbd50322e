"""python -m jax_csfcn.train --config configs/camvid.py:csfcn --config.data.root=/data/CamVid

CSFCN (``configs/camvid.py:csfcn``, the default), CSFCN-Tiny (``:csfcn_tiny``), CSFCN-P (``:csfcn_p``)
or a zoo model of docs/zoo.md (``:sfanet``, ``:mgseg``, ``:icnet``, ``:bisenetv1``, ``:swiftnet``) on CamVid, 11 classes (SegNet layout: train/ trainannot/ val/ valannot/ test/ testannot/,
void = ignore), 720x960.  The upstream's CamVid settings (its configs/fcn_camvid.yaml and
dataset/camvid.py): full-image 720x960 crops, random scale U(0.5, 2.0) of the image, flip,
Gaussian blur (p = 0.5, radius U(0, 1)) and colour jitter 0.3 with hue 0.1, batch 16, SGD lr 0.001, momentum 0.9, weight
decay 5e-4, 968 epochs.  As in the usual CamVid protocol (BiSeNet, STDC, PIDNet) the model
trains on train+val (468 images: 968 x ceil(468 / 16) = 29040 iterations) and is evaluated on
test (233 images).  The 720 side is a multiple of 8, not 32: the network's output still matches
the input exactly.

``configs/camvid.py:csfcn_p`` is the upstream's best CamVid model, CSFCN-P: the same recipe
started from a Cityscapes CSFCN instead of ImageNet -- every tensor of that checkpoint, with
each CamVid class's classifier rows copied from its Cityscapes counterpart (Car from car, Road
from road, ...; csfcn/classes.py, CAMVID_FROM_CITYSCAPES)::

    python -m jax_csfcn.train --config configs/camvid.py:csfcn_p --config.data.root=/data/CamVid \
        --config.model.init_from=runs/cityscapes_csfcn_100

(model.init_from defaults to that run directory: what configs/cityscapes.py:csfcn,100 trains;
any checkpoint we read works: a run, a .safetensors export, the upstream's .pth.)
"""

from csfcn.model_config import MODEL_NAMES
from jax_csfcn.config import get_config as base

VARIANTS = (*MODEL_NAMES, "csfcn_p")


def get_config(arg: str | None = None):
    variant = (arg or "csfcn").strip()
    if variant not in VARIANTS:
        raise ValueError(f"configs/camvid.py:{arg}: unknown model {variant!r}; choose one of {VARIANTS}")
    c = base()
    c.workdir = f"runs/camvid_{variant}"
    c.model.name = "csfcn" if variant == "csfcn_p" else variant
    if variant == "csfcn_p":
        c.model.init_from = "runs/cityscapes_csfcn_100"
        c.model.init_from_classes = "cityscapes"
    c.model.num_classes = 11
    c.data.dataset = "camvid"
    c.data.root = "data/CamVid"
    c.data.geometry = "device"  # every image has one size: resample on the device (defaults.py)
    c.data.train_split = "train+val"
    c.data.val_split = "test"
    c.data.image_size = (720, 960)
    c.data.crop_size = (720, 960)
    c.data.scale_range = (0.5, 2.0)
    c.data.blur_prob = 0.5
    c.data.color_jitter = 0.3
    c.data.hue_jitter = 0.1
    c.train.batch_size = 16
    c.train.base_lr = 0.001
    c.train.steps = 29040
    return c
