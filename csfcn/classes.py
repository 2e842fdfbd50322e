"""The one registry of datasets' classes: train-id order, names and display colours.

    csfcn.classes.class_names("camvid")   # ('Sky', 'Building', ...)
    csfcn.classes.palette("cityscapes")   # uint8 (19, 3)

Cityscapes' 19 train ids, names, colours and label ids come from ``cityscapesscripts``' official
label table, never retyped. CamVid's 11 SegNet classes and colours are written here, once.
``synthetic`` and ``tfds_cityscapes`` use the Cityscapes label space. numpy only.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def _cityscapes_table():
    from cityscapesscripts.helpers.labels import labels

    train = sorted((lab for lab in labels if 0 <= lab.trainId < IGNORE_INDEX), key=lambda lab: lab.trainId)
    assert [lab.trainId for lab in train] == list(range(len(train))), "cityscapesscripts train ids are not 0..K-1"
    names = tuple(lab.name for lab in train)
    palette = np.array([lab.color for lab in train], np.uint8)
    label_ids = np.array([lab.id for lab in train], np.uint8)
    unlabeled = next(lab.id for lab in labels if lab.name == "unlabeled")
    return names, palette, label_ids, unlabeled


CITYSCAPES_NAMES, CITYSCAPES_PALETTE, CITYSCAPES_LABEL_IDS, CITYSCAPES_UNLABELED_ID = _cityscapes_table()

# CamVid (SegNet's 11-class version): class k of the label PNGs, and its SegNet colour.
CAMVID_NAMES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
# The SegNet colour of each class (row k = class k); void is drawn black.
CAMVID_PALETTE = np.array(
    [
        (128, 128, 128),  # Sky
        (128, 0, 0),  # Building
        (192, 192, 128),  # Pole
        (128, 64, 128),  # Road
        (60, 40, 222),  # Pavement
        (128, 128, 0),  # Tree
        (192, 128, 128),  # SignSymbol
        (64, 64, 128),  # Fence
        (64, 0, 128),  # Car
        (64, 64, 0),  # Pedestrian
        (0, 128, 192),  # Bicyclist
    ],
    np.uint8,
)

# dataset -> (names, palette); the datasets that share a label space share the table
_TABLES = {
    "cityscapes": (CITYSCAPES_NAMES, CITYSCAPES_PALETTE),
    "camvid": (CAMVID_NAMES, CAMVID_PALETTE),
    "tfds_cityscapes": (CITYSCAPES_NAMES, CITYSCAPES_PALETTE),
    "synthetic": (CITYSCAPES_NAMES, CITYSCAPES_PALETTE),
}
DATASETS = tuple(_TABLES)


def _table(dataset: str):
    key = str(dataset).lower()
    if key not in _TABLES:
        raise ValueError(f"unknown dataset/palette {dataset!r}; choose one of {', '.join(DATASETS)}")
    return _TABLES[key]


def class_names(dataset: str) -> tuple[str, ...]:
    """Class names in train-id order."""
    return tuple(_table(dataset)[0])


def palette(dataset: str) -> np.ndarray:
    """uint8 (K, 3): the display colour of each train id (a copy)."""
    return _table(dataset)[1].copy()


def num_classes(dataset: str) -> int:
    """Number of train classes (labels are 0..K-1, 255 = ignore)."""
    return len(_table(dataset)[0])
