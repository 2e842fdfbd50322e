"""One entry point for the training data sources: ``build_source(dataset, root, split)``.

    dataset            source                                        root
    "cityscapes"       cityscapes.CityscapesSource (folder layout)    the folder with leftImg8bit/, gtFine/
    "synthetic"        the same, over write_synthetic_cityscapes'      the folder it wrote
    "camvid"           camvid.CamVidSource (SegNet 11 classes)        the folder with train/, trainannot/...
    "tfds_cityscapes"  tfds_cityscapes.TfdsCityscapesSource           the TFDS data_dir (None: TFDS's default)
    "folder"           folder.FolderSource (your own classes)          the folder with images/, masks/, classes.json
    "prepared"         prepared.PreparedSource (any of the above,     the folder python -m tools.prepare wrote
                       decoded once into ArrayRecord shards)

Every source has ``len(src)`` and ``src[i] -> {"image": uint8 HxWx3, "label": uint8 HxW train
ids (255 = ignore), "name": str}``.  ``num_classes``, ``class_names`` and ``palette`` give the
label space of a dataset, from the one class registry (csfcn/classes.py), or for "folder" from
the dataset's class table (``classes``: its path; default ``root/classes.json``). A "prepared"
dataset has the label space of the dataset it was prepared from (its manifest names it; a folder
dataset's table is copied beside the shards): :func:`family` resolves it.
The TFDS module is imported only when that source is asked for.
"""

from __future__ import annotations

import numpy as np

from csfcn import classes as classes_registry
from jax_csfcn.data import camvid, folder, prepared
from jax_csfcn.data.cityscapes import CityscapesSource, DataError

# one registry: every fixed label space is in csfcn/classes.py; "folder" brings its own table
DATASETS = (*classes_registry.DATASETS, "folder", "prepared")


def family(dataset: str, root=None) -> str:
    """The dataset whose label space ``dataset`` has: itself, or for "prepared" the origin its
    manifest names."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(DATASETS)}")
    if dataset == "prepared":
        if root is None:
            raise DataError(
                'dataset "prepared" needs a root folder (data.root): the folder python -m tools.prepare wrote'
            )
        return prepared.origin(root)
    return dataset


def build_source(dataset: str, root: str | None, split: str, classes: str | None = None):
    """The random-access source of ``split`` of ``dataset`` stored at ``root`` (see the module table);
    ``classes``: the class table of a "folder" dataset (default ``root/classes.json``)."""
    family(dataset, root)
    if dataset == "tfds_cityscapes":
        from jax_csfcn.data.tfds_cityscapes import TfdsCityscapesSource

        return TfdsCityscapesSource(split, data_dir=root)
    if root is None:
        hint = (
            "python -m tools.synthetic_data --root DIR writes one"
            if dataset == "synthetic"
            else "point it at the unpacked dataset"
        )
        raise DataError(f"dataset {dataset!r} needs a root folder (data.root); {hint}")
    if dataset == "camvid":
        return camvid.CamVidSource(root, split)
    if dataset == "folder":
        return folder.FolderSource(root, split, classes)
    if dataset == "prepared":
        return prepared.PreparedSource(root, split)
    return CityscapesSource(root, split)


def num_classes(dataset: str, root=None, classes: str | None = None) -> int:
    """Number of train classes (labels are 0..K-1, 255 = ignore)."""
    return len(class_names(dataset, root, classes))


def class_names(dataset: str, root=None, classes: str | None = None) -> tuple[str, ...]:
    """Class names in train-id order."""
    fam = family(dataset, root)
    if fam == "folder":
        return folder.read_table(root, classes).names
    return classes_registry.class_names(fam)


def palette(dataset: str, root=None, classes: str | None = None) -> np.ndarray:
    """uint8 (K, 3): the display colour of each train id."""
    fam = family(dataset, root)
    if fam == "folder":
        return folder.read_table(root, classes).colors.copy()
    return classes_registry.palette(fam)


def model_classes(dataset: str, root=None, classes: str | None = None) -> tuple:
    """What a checkpoint carries of the label space (``ModelConfig.classes``): the table of a
    "folder" dataset; nothing for the fixed ones, which the class count names."""
    if family(dataset, root) == "folder":
        return folder.read_table(root, classes).model_classes()
    return ()
