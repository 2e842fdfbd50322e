"""Every default of a training run, and the ImageNet normalisation, as plain Python.

Standard library only: :mod:`jax_csfcn.config` builds its ``ml_collections.ConfigDict`` from
:data:`DEFAULTS` (files in configs/ change a few fields, the command line overrides any), the
grain pipeline (:mod:`jax_csfcn.data.pipeline`) and the train step (:mod:`jax_csfcn.step`) read
the constants from here, and :func:`default_settings` gives the same defaults as a
``types.SimpleNamespace`` for code that runs where ml_collections is not installed (the
benchmark of one train step, :func:`tools.benchmark_train.bench_train`).  Each default is written
once, here.
"""

from __future__ import annotations

import types

# The defaults are the upstream Cityscapes recipe (docs/architecture.md, "Training recipe") on the embedded
# synthetic dataset; configs/ hold the real datasets and sizes.
DEFAULTS: dict = {
    # Where the run lives: checkpoints/, logs (metrics.jsonl, TensorBoard events), curves.png.
    "workdir": "runs/default",
    "seed": 0,
    # The network (see csfcn.model_config.ModelConfig and docs/architecture.md).
    "model": {
        "name": "csfcn",  # csfcn.model_config.MODEL_NAMES: CSFCN, CSFCN-Tiny or a zoo model
        "num_classes": 19,
        # "torchvision" (7x7 conv), "deep" (timm resnet18d, ResNet-v1c) or "deep128" (the upstream's
        # 3->64->64->128 stem, its "deep-inplane128" ImageNet weights)
        "stem": "torchvision",
        # Optional ImageNet ResNet-18 state_dict (.pth / .safetensors, torchvision or timm names, or
        # the upstream's deep-inplane128) for the backbone; its stem must be model.stem. Nothing is
        # downloaded.
        "imagenet_init": "",
        # Optional segmentation checkpoint to fine-tune from (a run directory, .safetensors, an
        # upstream .pth): every tensor whose name and shape match is loaded; the classifier is
        # re-initialised when the class count differs (convert.formats.init_from_checkpoint).
        "init_from": "",
        # Which old class each new class's classifier starts from: "NEW:OLD,..." (indices), or
        # "cityscapes" for CamVid from a Cityscapes checkpoint (the CamVid table's own mapping).
        "init_from_classes": "",
    },
    # Data (jax_csfcn.data.sources, jax_csfcn.data.pipeline).
    "data": {
        "dataset": "synthetic",  # cityscapes | camvid | tfds_cityscapes | synthetic | folder
        "root": "data/synthetic",  # dataset folder (TFDS: the data_dir, "" = TFDS default)
        "classes": "",  # folder datasets: the class table file ("" = root/classes.json)
        "train_split": "train",  # "train+val" concatenates splits
        "val_split": "val",
        "image_size": (1024, 2048),  # full-resolution size of the dataset's images (H, W)
        "crop_size": (1024, 1024),  # training crop (H, W)
        "base_size": None,  # (H, W) or None: each image's own size
        # Evaluation input size (H, W): images are resized to it for the network and the logits
        # back to the label's full resolution (the upstream -50/-75 models).  None: each image's
        # own size.
        "eval_size": None,
        "scale_range": (0.125, 2.0),  # random scale factor range (x base size)
        "flip": True,
        # The upstream's photometric augmentation (its Cityscapes dataset code): Gaussian blur with
        # p = 0.5 and radius U(0, 1), then colour jitter 0.5 (brightness, contrast, saturation).
        "blur_prob": 0.5,
        "color_jitter": 0.5,
        "hue_jitter": 0.0,
        # Where blur and colour jitter run: "device" (inside the jitted train step, on the uint8
        # batch; the loader only draws their parameters) or "host" (in the loader's workers).
        # The same function either way, bit for bit (jax_csfcn/data/photometric.py); "device" frees
        # most of the loader's CPU.
        "photometric": "device",
        # Where the random scale, crop, pad and flip run: "host" (Pillow, in the loader's workers)
        # or "device" (the batch carries the whole sources and the train step resamples them:
        # the same bytes, jax_csfcn/data/geometry.py). "device" takes the loader's last large
        # cost off the host but needs every source image of one size (Cityscapes, CamVid: their
        # configs choose it); "host" takes any dataset.
        "geometry": "host",
        "ignore_index": 255,
        "workers": 2,  # grain worker processes per host (0 = in the main process)
        "worker_buffer_size": 2,
        # The synthetic dataset is generated into data.root when that folder does not exist.
        "synthetic": {"train": 40, "val": 10, "size": (256, 512), "seed": 0},
    },
    # Optimisation: the upstream recipe.
    "train": {
        "batch_size": 12,  # global batch, split over processes and devices
        "steps": 119040,
        "base_lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,  # conv/dense kernels only
        "clip_norm": 0.0,  # > 0: gradients scaled down to this global L2 norm (0 = none, the upstream recipe)
        "warmup_steps": 2480,
        "warmup_start_factor": 1 / 3,
        "poly_power": 0.9,
        "dtype": "float32",  # compute dtype: "float32" or "bfloat16" (params stay fp32)
        "log_every": 20,  # steps between scalar logs
    },
    "loss": {"ohem": True, "thresh": 0.9, "min_kept": 110000},
    # Checkpoints (Orbax CheckpointManager under workdir/checkpoints).
    "checkpoint": {
        "every": 1000,  # steps between saves (and at the end)
        # Also save when this many minutes have passed since the last save (0 = off): what a kill
        # without notice can lose (SIGINT/SIGTERM save at the next step; docs/architecture.md,
        # "Stopping and resuming").
        "every_minutes": 15.0,
        "keep": 3,  # last K kept, plus the best by val mIoU
        "async_save": True,
    },
    # Validation: during training every `every` steps (0 = only at the end) and by
    # python -m tools.evaluate.
    "eval": {
        "every": 5000,
        "batch_size": 1,  # global
        "scales": (1.0,),  # multi-scale: e.g. (0.75, 1.0, 1.25); probabilities are averaged
        "flip": False,
        "max_images": 0,  # 0 = the whole split
    },
}

# The type of each field whose default is None (config.py makes it an ml_collections
# placeholder of this type, so that a command-line override is parsed as one).
OPTIONAL_TYPES: dict[str, type] = {"data.base_size": tuple, "data.eval_size": tuple}


def default_settings() -> types.SimpleNamespace:
    """:data:`DEFAULTS` as a fresh nested ``SimpleNamespace`` (``s.train.batch_size``, ...).

    The fields and values of ``jax_csfcn.config.get_config()`` without ml_collections; set
    fields by assignment (``s.train.dtype = "bfloat16"``).
    """

    def ns(d: dict) -> types.SimpleNamespace:
        return types.SimpleNamespace(**{k: ns(v) if isinstance(v, dict) else v for k, v in d.items()})

    return ns(DEFAULTS)


__all__ = ["DEFAULTS", "OPTIONAL_TYPES", "default_settings"]
