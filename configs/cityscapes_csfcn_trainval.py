"""python -m jax_csfcn.train --config configs/cityscapes_csfcn_trainval.py --config.data.root=/data/cityscapes

CSFCN-100 trained on Cityscapes train+val (3475 images), as the upstream model it submits to the
test server (its CSFCN_cityscapes_trainval.yaml).  The upstream recipe, with the iteration
count kept at 480 epochs: 480 x ceil(3475 / 12) = 139200.  Validation still runs on val (now
part of training, so its mIoU is not a held-out figure).  Test-server files (the test labels
are not public: ignore the scores this prints)::

    python -m jax_csfcn.evaluate --config configs/cityscapes_csfcn_trainval.py \\
        --checkpoint runs/cityscapes_csfcn_trainval --split test --dump_dir submission/ --dump_format cityscapes
"""

from jax_csfcn.config import get_config as base


def get_config():
    c = base()
    c.workdir = "runs/cityscapes_csfcn_trainval"
    c.data.dataset = "cityscapes"
    c.data.root = "data/cityscapes"
    c.data.train_split = "train+val"
    c.train.steps = 139200
    return c
