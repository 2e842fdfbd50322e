"""python -m jax_csfcn.train --config configs/cityscapes.py:csfcn,100 --config.data.root=/data/cityscapes

CSFCN, CSFCN-Tiny and the zoo models on Cityscapes (19 classes): one family, chosen by the
argument after the colon (passed to ``get_config``), a comma list of

    model     csfcn (default, pixel-shuffle head) | csfcn_tiny (bilinear head) | a zoo model of
              docs/zoo.md: sfanet | mgseg | icnet | bisenetv1 | swiftnet (same recipe, each
              with its auxiliary heads and their upstream loss weights)
    size      100 (default, 1024x2048) | 75 (768x1536) | 50 (512x1024)
    options   trainval: train on train+val for 139,200 steps (the upstream's test-server model)
              tfds: read the TFDS ``cityscapes`` builder (config ``semantic_segmentation``, prepared
              with python -m tools.tfds_prepare); data.root is then the TFDS data_dir

e.g. ``configs/cityscapes.py:csfcn_tiny,75`` or ``configs/cityscapes.py:csfcn,100,trainval``.

The upstream names the input size after the model: "-75" is 768x1536, the Cityscapes images
downscaled from 1024x2048. It publishes no separate recipe for -50/-75; these follow
STDC-Seg50/75: the random scale U(0.125, 2.0) is relative to that size (data.base_size), crops
are that size, and evaluation feeds the network the image resized to it (data.eval_size) and
scores the logits upsampled to the full-resolution labels. Everything else is the upstream
recipe (jax_csfcn/defaults.py). ImageNet backbone: --config.model.imagenet_init=resnet18.pth.
"""

from csfcn.model_config import MODEL_NAMES
from jax_csfcn.config import get_config as base

SIZES = {"100": None, "75": (768, 1536), "50": (512, 1024)}  # None: the full 1024x2048 recipe
OPTIONS = ("trainval", "tfds")


def parse(arg: str | None) -> tuple[str, str, set[str]]:
    """(model name, size, options) of a family argument such as ``"csfcn_tiny,75,trainval"``."""
    variant, size, options = "csfcn", "100", set()
    for tok in (t.strip() for t in (arg or "").split(",")):
        if not tok:
            continue
        if tok in MODEL_NAMES:
            variant = tok
        elif tok in SIZES:
            size = tok
        elif tok in OPTIONS:
            options.add(tok)
        else:
            raise ValueError(
                f"configs/cityscapes.py:{arg}: unknown token {tok!r}; choose a model {MODEL_NAMES}, a size "
                f"{tuple(SIZES)} and options {OPTIONS}, e.g. configs/cityscapes.py:csfcn_tiny,75"
            )
    return variant, size, options


def get_config(arg: str | None = None):
    variant, size, options = parse(arg)
    c = base()
    c.workdir = f"runs/cityscapes_{variant}_{size}" + "".join(f"_{o}" for o in sorted(options))
    c.model.name = variant
    c.data.dataset = "cityscapes"
    c.data.root = "data/cityscapes"
    c.data.geometry = "device"  # every image has one size: resample on the device (defaults.py)
    if SIZES[size] is not None:
        c.data.image_size = SIZES[size]  # the inference size (jax_csfcn.summary)
        c.data.eval_size = SIZES[size]
        c.data.base_size = SIZES[size]
        c.data.crop_size = SIZES[size]
    if "trainval" in options:
        c.data.train_split = "train+val"
        c.train.steps = 139200
    if "tfds" in options:
        c.data.dataset = "tfds_cityscapes"
        c.data.root = "~/tensorflow_datasets"
        c.data.val_split = "validation"  # TFDS split names: train, validation, test
    return c
