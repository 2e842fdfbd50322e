"""Default configuration: every field has its default here; files in configs/ change a few.

Override any field on the command line with ml_collections' config flags (the one override
form used everywhere in this project)::

    python -m jax_csfcn.train --config configs/cityscapes_csfcn.py --config.train.batch_size=4 \\
        --config.data.root=/data/cityscapes --config.workdir=runs/cs50

A key that does not exist is an error naming it.  The defaults are the upstream Cityscapes
recipe (shared/spec/TRAINING.md) on the embedded synthetic dataset; ``configs/`` hold the
real datasets and sizes.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # Where the run lives: checkpoints/, logs (metrics.jsonl, TensorBoard events), curves.png.
    c.workdir = "runs/default"
    c.seed = 0

    # The network (see jax_csfcn.model_config.ModelConfig and shared/spec/MODEL.md).
    c.model = ml_collections.ConfigDict()
    c.model.variant = "csfcn"  # "csfcn" (pixel-shuffle head) or "csfcn_tiny"
    c.model.num_classes = 19
    c.model.stem = "torchvision"  # "torchvision" (7x7 conv) or "deep" (ResNet-v1c)
    # Optional ImageNet ResNet-18 state_dict (.pth / .safetensors, torchvision or timm names)
    # for the backbone; nothing is downloaded.
    c.model.imagenet_init = ""

    # Data (jax_csfcn.data.sources, jax_csfcn.data.pipeline).
    c.data = ml_collections.ConfigDict()
    c.data.dataset = "synthetic"  # cityscapes | camvid | tfds_cityscapes | synthetic
    c.data.root = "data/synthetic"  # dataset folder (TFDS: the data_dir, "" = TFDS default)
    c.data.train_split = "train"  # "train+val" concatenates splits
    c.data.val_split = "val"
    c.data.image_size = (1024, 2048)  # full-resolution size of the dataset's images (H, W)
    c.data.crop_size = (1024, 1024)  # training crop (H, W)
    c.data.base_size = ml_collections.config_dict.placeholder(tuple)  # None: each image's own size
    # Evaluation input size (H, W): images are resized to it for the network and the logits back
    # to the label's full resolution (the upstream -50/-75 models).  None: each image's own size.
    c.data.eval_size = ml_collections.config_dict.placeholder(tuple)
    c.data.scale_range = (0.125, 2.0)  # random scale factor range (x base size)
    c.data.flip = True
    c.data.blur_prob = 0.0
    c.data.color_jitter = 0.0
    c.data.ignore_index = 255
    c.data.workers = 2  # grain worker processes per host (0 = in the main process)
    c.data.worker_buffer_size = 2
    # The synthetic dataset is generated into data.root when that folder does not exist.
    c.data.synthetic = ml_collections.ConfigDict()
    c.data.synthetic.train = 40
    c.data.synthetic.val = 10
    c.data.synthetic.size = (256, 512)
    c.data.synthetic.seed = 0

    # Optimisation: the upstream recipe.
    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 12  # global batch, split over processes and devices
    c.train.steps = 119040
    c.train.base_lr = 0.01
    c.train.momentum = 0.9
    c.train.weight_decay = 5e-4  # conv/dense kernels only
    c.train.warmup_steps = 2480
    c.train.warmup_start_factor = 1 / 3
    c.train.poly_power = 0.9
    c.train.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (params stay fp32)
    c.train.log_every = 20  # steps between scalar logs

    c.loss = ml_collections.ConfigDict()
    c.loss.ohem = True
    c.loss.thresh = 0.9
    c.loss.min_kept = 110000

    # Checkpoints (Orbax CheckpointManager under workdir/checkpoints).
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 1000  # steps between saves (and at the end)
    c.checkpoint.keep = 3  # last K kept, plus the best by val mIoU
    c.checkpoint.async_save = True

    # Validation: during training every `every` steps (0 = only at the end) and by
    # python -m jax_csfcn.evaluate.
    c.eval = ml_collections.ConfigDict()
    c.eval.every = 5000
    c.eval.batch_size = 1  # global
    c.eval.scales = (1.0,)  # multi-scale: e.g. (0.75, 1.0, 1.25); probabilities are averaged
    c.eval.flip = False
    c.eval.max_images = 0  # 0 = the whole split

    return c
