"""The embedded synthetic street scenes (what `make demo` trains): CSFCN, 19 classes, on CPU.

python -m jax_csfcn.train --config configs/synthetic.py

The dataset (40 train / 10 val scenes at 256x512 in the Cityscapes layout) is generated into
data.root on first use.  Short-run settings: 128x256 crops, batch 4, a higher learning rate
and a short warm-up; the loss, optimizer and pipeline are the Cityscapes recipe's.  Any other
model of docs/zoo.md trains on the same settings with ``configs/synthetic.py:<name>``, e.g.
``configs/synthetic.py:swiftnet`` (what python -m tools.accuracy_speed runs for each).
"""

from csfcn.model_config import MODEL_NAMES
from jax_csfcn.config import get_config as base


def get_config(arg: str | None = None):
    name = (arg or "csfcn").strip()
    if name not in MODEL_NAMES:
        raise ValueError(f"configs/synthetic.py:{arg}: unknown model {name!r}; choose one of {MODEL_NAMES}")
    c = base()
    c.model.name = name
    c.workdir = "runs/synthetic" if name == "csfcn" else f"runs/synthetic_{name}"
    c.data.dataset = "synthetic"
    c.data.root = "data/synthetic"
    c.data.image_size = (256, 512)
    c.data.crop_size = (128, 256)
    c.data.scale_range = (0.75, 1.5)
    c.data.workers = 1
    # The demo's choice: no photometric augmentation. 900 steps on 40 flat-shaded scenes learn the
    # shapes; blur and colour jitter (the Cityscapes recipe's defaults) would slow that short run.
    c.data.blur_prob = 0.0
    c.data.color_jitter = 0.0
    c.train.batch_size = 4
    c.train.steps = 900
    c.train.base_lr = 0.1
    c.train.warmup_steps = 50
    c.train.log_every = 10
    c.loss.min_kept = 16384  # 1/8 of a batch's pixels
    if name == "mgseg":
        # MGSeg has no normalisation in its HAFA chain and multiplies two learned maps in FGR: from
        # scratch its first steps grow the loss a hundredfold at any learning rate tried
        # (0.1 .. 0.002) and it stops at the NaN guard. Clipped to a global norm of 1 it trains
        # (docs/zoo.md, "Training": MGSeg and gradient clipping).
        c.train.clip_norm = 1.0
    c.checkpoint.every = 300
    c.eval.every = 300
    c.eval.batch_size = 2
    return c
