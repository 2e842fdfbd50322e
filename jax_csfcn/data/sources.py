"""One entry point for the training data sources: ``build_source(dataset, root, split)``.

    dataset            source                                        root
    "cityscapes"       cityscapes.CityscapesSource (folder layout)    the folder with leftImg8bit/, gtFine/
    "synthetic"        the same, over write_synthetic_cityscapes'      the folder it wrote
    "camvid"           camvid.CamVidSource (SegNet 11 classes)        the folder with train/, trainannot/...
    "tfds_cityscapes"  tfds_cityscapes.TfdsCityscapesSource           the TFDS data_dir (None: TFDS's default)

Every source has ``len(src)`` and ``src[i] -> {"image": uint8 HxWx3, "label": uint8 HxW train
ids (255 = ignore), "name": str}``.  ``num_classes``, ``class_names`` and ``palette`` give the
label space of a dataset, from the one class registry (csfcn/classes.py).
The TFDS module is imported only when that source is asked for.
"""

from __future__ import annotations

import numpy as np

from csfcn import classes
from jax_csfcn.data import camvid
from jax_csfcn.data.cityscapes import CityscapesSource, DataError

DATASETS = classes.DATASETS  # one registry: every source's label space is in csfcn/classes.py


def _family(dataset: str) -> str:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(DATASETS)}")
    return dataset


def build_source(dataset: str, root: str | None, split: str):
    """The random-access source of ``split`` of ``dataset`` stored at ``root`` (see the module table)."""
    _family(dataset)
    if dataset == "tfds_cityscapes":
        from jax_csfcn.data.tfds_cityscapes import TfdsCityscapesSource

        return TfdsCityscapesSource(split, data_dir=root)
    if root is None:
        hint = (
            "python -m jax_csfcn.data.synthetic --root DIR writes one"
            if dataset == "synthetic"
            else "point it at the unpacked dataset"
        )
        raise DataError(f"dataset {dataset!r} needs a root folder (data.root); {hint}")
    if dataset == "camvid":
        return camvid.CamVidSource(root, split)
    return CityscapesSource(root, split)


def num_classes(dataset: str) -> int:
    """Number of train classes (labels are 0..K-1, 255 = ignore)."""
    return classes.num_classes(_family(dataset))


def class_names(dataset: str) -> tuple[str, ...]:
    """Class names in train-id order."""
    return classes.class_names(_family(dataset))


def palette(dataset: str) -> np.ndarray:
    """uint8 (K, 3): the display colour of each train id."""
    return classes.palette(_family(dataset))
