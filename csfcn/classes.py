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

# Which Cityscapes classes make up each CamVid class (by name; the first is the class a
# CamVid classifier row starts from when fine-tuning from a Cityscapes model).
CAMVID_FROM_CITYSCAPES = {
    "Sky": ("sky",),
    "Building": ("building", "wall"),
    "Pole": ("pole",),
    "Road": ("road",),
    "Pavement": ("sidewalk",),
    "Tree": ("vegetation", "terrain"),
    "SignSymbol": ("traffic sign", "traffic light"),
    "Fence": ("fence",),
    "Car": ("car", "truck", "bus", "train"),
    "Pedestrian": ("person",),
    "Bicyclist": ("rider", "bicycle", "motorcycle"),
}

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


def class_mapping(spec: str, new_k: int, old_k: int) -> dict[int, int]:
    """``{new class: old class}`` of an ``init_from_classes`` setting (fine-tuning a classifier).

    ``"NEW:OLD,NEW:OLD"`` pairs of train ids, or ``"cityscapes"``: the 11 CamVid classes from
    a 19-class Cityscapes model by :data:`CAMVID_FROM_CITYSCAPES`.  Classes not listed start
    fresh.  Raises ValueError naming the bad entry.
    """
    spec = str(spec).strip()
    if not spec:
        return {}
    if spec == "cityscapes":
        if (new_k, old_k) != (len(CAMVID_NAMES), len(CITYSCAPES_NAMES)):
            raise ValueError(
                f"init_from_classes='cityscapes' maps the {len(CAMVID_NAMES)} CamVid classes from a "
                f"{len(CITYSCAPES_NAMES)}-class Cityscapes model; this is {old_k} -> {new_k} classes. "
                "Give explicit pairs 'NEW:OLD,...'"
            )
        return {i: CITYSCAPES_NAMES.index(CAMVID_FROM_CITYSCAPES[n][0]) for i, n in enumerate(CAMVID_NAMES)}
    out: dict[int, int] = {}
    for pair in spec.split(","):
        try:
            new, old = (int(t) for t in pair.split(":"))
        except ValueError:
            raise ValueError(
                f"init_from_classes: {pair.strip()!r} is not NEW:OLD (two train ids), in {spec!r}"
            ) from None
        if not (0 <= new < new_k and 0 <= old < old_k):
            raise ValueError(
                f"init_from_classes: {pair.strip()!r} is out of range (new classes 0..{new_k - 1}, old 0..{old_k - 1})"
            )
        if new in out:
            raise ValueError(f"init_from_classes: new class {new} is mapped twice in {spec!r}")
        out[new] = old
    return out
