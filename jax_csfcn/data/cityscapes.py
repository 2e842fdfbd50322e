"""Cityscapes (or anything in its folder layout) as a random-access grain data source.

    root/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png      RGB images
    root/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png       labelIds (0..33), uint8

    src = CityscapesSource("/data/cityscapes", "train")
    ds = grain.MapDataset.source(src).shuffle(seed=0)
    item = src[0]   # {"image": uint8 HxWx3, "label": uint8 HxW train ids (255 = ignore), "name": stem}

labelIds are mapped to the 19 train ids with a 256-entry lookup table built from the official
``cityscapesscripts`` label table.  Bad data fails loudly with the offending file in the message:
layout problems when the source is built, decoding problems when the item is read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import labels as _LABELS
from PIL import Image

IGNORE_INDEX = 255
NUM_CLASSES = 19
CLASS_NAMES = tuple(lab.name for lab in sorted(_LABELS, key=lambda lab: lab.trainId) if 0 <= lab.trainId < IGNORE_INDEX)

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


class DataError(ValueError):
    """A problem with the files of a dataset; the message names the file and the fix."""


def label_id_to_train_id() -> np.ndarray:
    """uint8[256]: labelId -> train id; void classes and ids outside the table -> 255."""
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for lab in _LABELS:
        if lab.id >= 0:  # "license plate" has id -1: never stored in a labelIds PNG
            lut[lab.id] = lab.trainId if 0 <= lab.trainId < IGNORE_INDEX else IGNORE_INDEX
    return lut


def valid_label_ids() -> np.ndarray:
    """bool[256]: ids that may appear in a labelIds PNG (0..33 for the official table)."""
    ok = np.zeros(256, bool)
    ok[[lab.id for lab in _LABELS if lab.id >= 0]] = True
    return ok


_LUT = label_id_to_train_id()
_VALID = valid_label_ids()
assert int((_LUT < IGNORE_INDEX).sum()) == NUM_CLASSES and len(CLASS_NAMES) == NUM_CLASSES


def _decode(path: Path, what: str) -> Image.Image:
    """Open and fully decode (``load``) a PNG, so truncation shows up here, with the file name."""
    try:
        with Image.open(path) as im:
            im.load()  # pixels stay in memory after the file is closed
            return im
    except FileNotFoundError as e:
        raise DataError(f"{what} file {path} has disappeared since the source was built") from e
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for corrupt files
        raise DataError(
            f"cannot decode {what} {path}: {type(e).__name__}: {e}. Re-extract or re-generate this file."
        ) from e


def read_pair(img_path: Path, lab_path: Path) -> tuple[Image.Image, Image.Image]:
    """Decode an image and its label, checking RGB and equal sizes; errors name the files."""
    img = _decode(img_path, "image")
    lab = _decode(lab_path, "label")
    if img.mode != "RGB":
        raise DataError(
            f"image {img_path} has mode {img.mode!r}, expected 3-channel 'RGB'; convert it (e.g. PIL .convert('RGB'))"
        )
    if img.size != lab.size:
        raise DataError(
            f"image {img_path} is {img.size[0]}x{img.size[1]} (WxH) but its label {lab_path} is {lab.size[0]}x{lab.size[1]}"
        )
    return img, lab


class PairSource:
    """What the file-pair sources share: ``_images`` / ``_labels`` path strings (small pickles
    for grain workers), read on demand.  Subclasses give ``name(i)`` and ``train_ids(label image,
    path)``."""

    _images: list[str]
    _labels: list[str]

    def __len__(self) -> int:
        return len(self._images)

    def max_size(self) -> tuple[int, int]:
        """The largest (H, W) over the split's images, from their headers (no pixels decoded;
        read once per source)."""
        if getattr(self, "_max_size", None) is not None:
            return self._max_size
        h = w = 0
        for path in self._images:
            try:
                with Image.open(path) as im:
                    iw, ih = im.size
            except Exception as e:  # PIL raises several types for unreadable files
                raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
            h, w = max(h, ih), max(w, iw)
        self._max_size = (h, w)
        return h, w

    def __getitem__(self, index) -> dict:
        index = int(index)  # grain may pass numpy integers
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {self!r}")
        img_path, lab_path = Path(self._images[index]), Path(self._labels[index])
        img, lab = read_pair(img_path, lab_path)
        return {"image": np.asarray(img, np.uint8), "label": self.train_ids(lab, lab_path), "name": self.name(index)}


class CityscapesSource(PairSource):
    """``grain`` RandomAccessDataSource over one split of a Cityscapes-layout directory.

    Holds only file paths, so it pickles cheaply into grain worker processes.
    """

    def __init__(self, root, split: str):
        self.root, self.split = Path(root), str(split)
        if not self.root.is_dir():
            raise DataError(
                f"dataset root {self.root} does not exist or is not a directory; set data.root to a folder with leftImg8bit/ and gtFine/"
            )
        image_dir, label_dir = self.root / "leftImg8bit" / self.split, self.root / "gtFine" / self.split
        for d, kind in ((image_dir, "leftImg8bit"), (label_dir, "gtFine")):
            if not d.is_dir():
                have = (
                    sorted(p.name for p in (self.root / kind).iterdir() if p.is_dir())
                    if (self.root / kind).is_dir()
                    else []
                )
                raise DataError(
                    f"split directory {d} is missing (splits present under {self.root / kind}: {have or 'none'})"
                )
        images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not images:
            raise DataError(f"split {self.split!r} is empty: no {image_dir}/<city>/*{IMAGE_SUFFIX} files")
        labels = [label_dir / p.parent.name / (p.name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX) for p in images]
        missing = [(img, lab) for img, lab in zip(images, labels) if not lab.is_file()]
        if missing:
            img, lab = missing[0]
            raise DataError(
                f"image {img} has no label file {lab} ({len(missing)} of {len(images)} images in split "
                f"{self.split!r} lack one); create the *{LABEL_SUFFIX} files (cityscapesscripts' "
                "csCreateTrainIdLabelImgs writes them from the polygons) or remove the images"
            )
        # Strings, not Paths: smaller pickles for grain workers.
        self._images = [os.fspath(p) for p in images]
        self._labels = [os.fspath(p) for p in labels]

    def __repr__(self) -> str:  # grain uses the repr to check a restored loader state matches
        return f"CityscapesSource(root={os.fspath(self.root)!r}, split={self.split!r}, n={len(self)})"

    def name(self, index: int) -> str:
        """The Cityscapes stem ``{city}_{seq}_{frame}`` of item ``index``."""
        return os.path.basename(self._images[index])[: -len(IMAGE_SUFFIX)]

    @staticmethod
    def train_ids(lab: Image.Image, path: Path) -> np.ndarray:
        """Checked labelIds -> train ids.  Only single-channel label images are accepted."""
        if lab.mode not in ("L", "P", "I", "I;16"):
            raise DataError(
                f"label {path} has mode {lab.mode!r}; expected a single-channel labelIds PNG "
                f"(*{LABEL_SUFFIX}), not a colour or instance image"
            )
        ids = np.asarray(lab)  # for "P": the palette indices, which are what gets stored
        if ids.dtype != np.uint8:  # 16/32-bit: check the range before narrowing
            if ids.size and (ids.min() < 0 or ids.max() > 255):
                raise DataError(
                    f"label {path} has ids outside 0..255 (min {ids.min()}, max {ids.max()}); expected Cityscapes labelIds 0..33"
                )
            ids = ids.astype(np.uint8)
        bad = ~_VALID[ids]
        if bad.any():
            found = np.unique(ids[bad])
            hint = " (255 suggests a *_gtFine_labelTrainIds.png file, which is already mapped)" if 255 in found else ""
            raise DataError(
                f"label {path} contains ids {found.tolist()[:10]} that are not in the Cityscapes label table "
                f"(valid labelIds: 0..{int(np.flatnonzero(_VALID).max())}){hint}"
            )
        return _LUT[ids]
