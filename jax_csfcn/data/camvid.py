"""CamVid, 11-class SegNet version, as a random-access grain data source.

Two layouts are supported.  The list file of a split wins when both are present.

1. Folders (the ``CamVid/`` directory of the SegNet tutorial)::

       root/{split}/{stem}.png            RGB images (.png, .jpg or .jpeg)
       root/{split}annot/{stem}.png       labels: one uint8 class index per pixel

   e.g. ``train/`` + ``trainannot/``, ``val/`` + ``valannot/``, ``test/`` + ``testannot/``.
   A split is any ``root/{split}`` folder that has a ``root/{split}annot`` folder beside it.

2. List files ``root/{split}.txt``, one ``image_path label_path`` pair per line, separated
   by whitespace; blank lines and lines starting with ``#`` are skipped.  Each path is resolved
   in this order, the first file that exists wins:

   - an absolute path as written; a relative one under ``root`` (``train/0001TP_006690.png``);
   - the last two parts of the path under ``root``: the SegNet tutorial's lists name
     ``/SegNet/CamVid/train/0001TP_006690.png``, which becomes
     ``root/train/0001TP_006690.png`` wherever the folder is unpacked.

Labels hold class indices 0..10 (:data:`CLASS_NAMES`, in the SegNet order) and 11 = void,
which becomes 255 (ignore).  Single-channel PNGs only ("L", "P" or 16-bit): the colour-coded
32-class ``*_L.png`` labels of the original CamVid release are not this format and are
rejected with a message saying so.

    src = CamVidSource("/data/CamVid", "train")
    item = src[0]   # {"image": uint8 HxWx3, "label": uint8 HxW (255 = ignore), "name": stem}

Bad data fails loudly with the offending file in the message: layout problems when the source
is built, decoding problems when the item is read.  :func:`write_synthetic_camvid` writes
synthetic street scenes in both layouts (tests, demos).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from csfcn.classes import CAMVID_FROM_CITYSCAPES, CAMVID_NAMES, CAMVID_PALETTE
from jax_csfcn.data.cityscapes import IGNORE_INDEX, DataError, PairSource
from jax_csfcn.data.folder import read_pair_list
from jax_csfcn.data.synthetic import generate_scene

NUM_CLASSES = 11
VOID_INDEX = 11  # the void / "Unlabelled" index stored in the label PNGs
# The 11 class names and SegNet colours live in the one class registry (csfcn/classes.py).
CLASS_NAMES = CAMVID_NAMES
PALETTE = CAMVID_PALETTE
VOID_COLOR = (0, 0, 0)

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
LABEL_EXT = ".png"
ANNOT_SUFFIX = "annot"
LIST_SUFFIX = ".txt"

# Stored index -> train id: 0..10 unchanged, 11 (void) -> 255.  Anything above 11 is an error.
_LUT = np.full(256, IGNORE_INDEX, np.uint8)
_LUT[:NUM_CLASSES] = np.arange(NUM_CLASSES, dtype=np.uint8)
assert len(CLASS_NAMES) == NUM_CLASSES and PALETTE.shape == (NUM_CLASSES, 3)


def _splits_present(root: Path) -> list[str]:
    """Split names under ``root`` in either layout, for error messages."""
    names = {p.stem for p in root.glob(f"*{LIST_SUFFIX}") if p.is_file()}
    names |= {p.name for p in root.iterdir() if p.is_dir() and (root / (p.name + ANNOT_SUFFIX)).is_dir()}
    return sorted(names)


class CamVidSource(PairSource):
    """``grain`` RandomAccessDataSource over one split of a CamVid (SegNet 11-class) directory.

    Holds only file paths, so it pickles cheaply into grain worker processes.
    """

    def __init__(self, root, split: str):
        self.root, self.split = Path(root), str(split)
        if not self.root.is_dir():
            raise DataError(
                f"CamVid root {self.root} does not exist or is not a directory; set data.root to the folder "
                f"holding train/ + trainannot/ (or train.txt)"
            )
        list_file = self.root / (self.split + LIST_SUFFIX)
        if list_file.is_file():
            self.layout = "list"
            pairs = read_pair_list(list_file, self.root)
            where = f"list file {list_file}"
        else:
            self.layout = "folders"
            pairs = self._scan_folders()
            where = f"{self.root / self.split}"
        if not pairs:
            raise DataError(f"split {self.split!r} of CamVid at {self.root} is empty: no images in {where}")
        # Strings, not Paths: smaller pickles for grain workers.
        self._images = [os.fspath(img) for img, _ in pairs]
        self._labels = [os.fspath(lab) for _, lab in pairs]

    def _scan_folders(self) -> list[tuple[Path, Path]]:
        image_dir, label_dir = self.root / self.split, self.root / (self.split + ANNOT_SUFFIX)
        if not image_dir.is_dir():
            raise DataError(
                f"CamVid split {self.split!r} not found: neither {self.root / (self.split + LIST_SUFFIX)} nor "
                f"{image_dir}/ exists (splits present under {self.root}: {_splits_present(self.root) or 'none'})"
            )
        if not label_dir.is_dir():
            raise DataError(
                f"CamVid label folder {label_dir} is missing: the images of {image_dir} need their labels there "
                f"(same file names, .png), or list the pairs in {self.root / (self.split + LIST_SUFFIX)}"
            )
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        labels = [label_dir / (p.stem + LABEL_EXT) for p in images]
        missing = [(img, lab) for img, lab in zip(images, labels) if not lab.is_file()]
        if missing:
            img, lab = missing[0]
            raise DataError(
                f"image {img} has no label file {lab} ({len(missing)} of {len(images)} images in split "
                f"{self.split!r} lack one); add the labels or remove the images"
            )
        return list(zip(images, labels))

    def __repr__(self) -> str:  # grain uses the repr to check a restored loader state matches
        return f"CamVidSource(root={os.fspath(self.root)!r}, split={self.split!r}, n={len(self)})"

    def name(self, index: int) -> str:
        """The image file's stem, e.g. ``0001TP_006690``."""
        return Path(self._images[index]).stem

    def train_ids(self, lab: Image.Image, path) -> np.ndarray:
        return to_train_ids(lab, path)


def to_train_ids(lab: Image.Image, path) -> np.ndarray:
    """Checked CamVid class indices (0..10, 11 = void) -> train ids (0..10, 255 = ignore)."""
    if lab.mode not in ("L", "P", "I", "I;16"):
        raise DataError(
            f"label {path} has mode {lab.mode!r}; expected a single-channel PNG of class indices 0..11 "
            "(SegNet CamVid *annot/ files), not a colour-coded label image"
        )
    ids = np.asarray(lab)  # for "P": the palette indices, which are what gets stored
    if ids.dtype != np.uint8:
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise DataError(f"label {path} has values outside 0..255 (min {ids.min()}, max {ids.max()})")
        ids = ids.astype(np.uint8)
    bad = ids > VOID_INDEX
    if bad.any():
        found = np.unique(ids[bad])
        raise DataError(
            f"label {path} contains values {found.tolist()[:10]} ({int(bad.sum())} pixels); CamVid labels hold "
            f"class indices 0..{NUM_CLASSES - 1} and {VOID_INDEX} = void. Is this a 32-class or colour label file?"
        )
    return _LUT[ids]


def colorize(label: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 picture of a train-id label (0..10, anything else = void, black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:] = VOID_COLOR
    lut[:NUM_CLASSES] = PALETTE
    return lut[np.asarray(label, np.uint8)]


def _cityscapes_to_camvid() -> np.ndarray:
    """uint8[256]: Cityscapes labelId -> CamVid class index (11 = void), by class name."""
    from cityscapesscripts.helpers.labels import name2label

    lut = np.full(256, VOID_INDEX, np.uint8)
    for k, name in enumerate(CLASS_NAMES):
        for cs_name in CAMVID_FROM_CITYSCAPES[name]:
            lut[name2label[cs_name].id] = k
    return lut


def write_synthetic_camvid(
    root, *, splits=None, size=(96, 128), seed: int = 0, list_files: bool = True, progress: bool = False
) -> dict:
    """Write synthetic scenes in the CamVid folder layout (and ``{split}.txt`` lists); returns the counts.

    The scenes are those of :mod:`jax_csfcn.data.synthetic` with their Cityscapes classes merged
    into the 11 CamVid ones (wall -> Building, terrain -> Tree, truck/bus/train -> Car, ...;
    Cityscapes void -> 11).  List lines are root-relative: ``train/synth_train_000000.png
    trainannot/synth_train_000000.png``.
    """

    splits = dict(splits if splits is not None else {"train": 8, "val": 2, "test": 2})
    root = Path(root)
    lut = _cityscapes_to_camvid()
    for split, n in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / (split + ANNOT_SUFFIX)).mkdir(parents=True, exist_ok=True)
        lines = []
        for i in tqdm(range(int(n)), desc=f"camvid {split} -> {root}", disable=not progress, unit="img"):
            image, ids = generate_scene(seed, f"camvid-{split}", i, size)
            fname = f"synth_{split}_{i:06d}.png"
            Image.fromarray(image).save(root / split / fname, compress_level=1)
            Image.fromarray(lut[ids]).save(root / (split + ANNOT_SUFFIX) / fname, compress_level=1)
            lines.append(f"{split}/{fname} {split}{ANNOT_SUFFIX}/{fname}\n")
        if list_files:
            (root / (split + LIST_SUFFIX)).write_text("".join(lines))
    return {split: int(n) for split, n in splits.items()}
