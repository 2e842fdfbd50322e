"""python -m jax_csfcn.train --config configs/folder.py:data/folder

Your own dataset (README, "Your own data"): the argument after the colon is its folder
(data.root), laid out as jax_csfcn/data/folder.py describes -- images/{split}/ and
masks/{split}/ (or {split}.txt lists of pairs) and the class table classes.json, which gives the
class count (model.num_classes), names and colours.  Any image size: training crops are 512x512
of the image randomly scaled by U(0.5, 2.0) (pad with ignore where the image is smaller), and
evaluation runs on whole images.  Everything else is the Cityscapes recipe (OHEM, SGD, poly),
shortened to 20,000 steps of batch 8 with a 1,000-step warm-up; override any of it, e.g.
--config.data.crop_size='(384, 384)' --config.train.steps=5000.  Fine-tune from a segmentation
checkpoint with --config.model.init_from=CKPT (and --config.model.init_from_classes=NEW:OLD,...).
"""

from pathlib import Path

from csfcn.class_table import TABLE_NAME, read_class_table
from jax_csfcn.config import get_config as base


def get_config(arg: str | None = None):
    root = (arg or "data/folder").strip()
    c = base()
    c.workdir = f"runs/folder_{Path(root).name or 'dataset'}"
    c.data.dataset = "folder"
    c.data.root = root
    table = Path(root) / TABLE_NAME
    if table.is_file():  # the class count from the table (train checks it again, with the fix)
        c.model.num_classes = read_class_table(table).num_classes
    c.data.image_size = (512, 512)  # the size summary and benchmarks assume; images may differ
    c.data.crop_size = (512, 512)
    c.data.scale_range = (0.5, 2.0)
    c.train.batch_size = 8
    c.train.steps = 20000
    c.train.warmup_steps = 1000
    c.loss.min_kept = 8 * 512 * 512 // 16  # 1/16 of a batch's pixels, as the Cityscapes recipe
    c.checkpoint.every = 1000
    c.eval.every = 2000
    return c
