"""Class names, colour palettes and label images for visualisation and benchmark exports.

numpy + PIL only (no JAX, no torch), so that the PyTorch deployment side can use it.

* Cityscapes: the 19 train ids, their names, colours and label ids, all read from
  ``cityscapesscripts.helpers.labels`` (the official table), never retyped.
* CamVid: the 11 SegNet classes and their SegNet colours.
* :func:`colorize`, :func:`overlay`, :func:`legend_image` draw predictions; ignore (255) and
  any other out-of-palette value is drawn black by :func:`colorize` and left as the image by
  :func:`overlay`.
* :func:`train_id_to_label_id` maps Cityscapes train ids to the label ids that the official
  evaluation (and test server) read.
* :func:`write_png` writes through a temporary name in the same directory and renames, so a
  crash never leaves a half-written PNG that looks complete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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

# CamVid's 11 classes and SegNet colours: one table, in the CamVid source module.
from jax_csfcn.data.camvid import CLASS_NAMES as CAMVID_NAMES  # noqa: E402
from jax_csfcn.data.camvid import PALETTE as CAMVID_PALETTE  # noqa: E402

DATASETS = {
    "cityscapes": (CITYSCAPES_NAMES, CITYSCAPES_PALETTE),
    "camvid": (CAMVID_NAMES, CAMVID_PALETTE),
}


def dataset_palette(dataset: str) -> tuple[tuple[str, ...], np.ndarray]:
    """(class names, uint8 (K, 3) palette) of ``dataset`` ('cityscapes' or 'camvid')."""
    key = str(dataset).lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset/palette {dataset!r}; choose one of {sorted(DATASETS)}")
    names, palette = DATASETS[key]
    return names, palette.copy()


def _check_palette(palette) -> np.ndarray:
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) == 0 or len(palette) > IGNORE_INDEX:
        raise ValueError(f"palette must have shape (K, 3) with 1 <= K <= {IGNORE_INDEX}, got {palette.shape}")
    if palette.min() < 0 or palette.max() > 255:
        raise ValueError("palette colours must lie in 0..255")
    return palette.astype(np.uint8)


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D (H, W) array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    return labels


def colorize(labels, palette) -> np.ndarray:
    """uint8 (H, W, 3) colour image of integer labels; 255 and values >= K are black."""
    labels = _check_labels(labels)
    palette = _check_palette(palette)
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = palette
    idx = np.where((labels >= 0) & (labels < 256), labels, IGNORE_INDEX).astype(np.uint8)
    return lut[idx]


def overlay(image, labels, palette, opacity: float = 0.5) -> np.ndarray:
    """The image blended with the label colours: ``(1 - opacity) * image + opacity * colour``.

    Pixels without a class (255 or >= K) keep the image's colour. Returns uint8 (H, W, 3).
    """
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}")
    image = np.asarray(image)
    labels = _check_labels(labels)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must be (H, W, 3) and (H, W)")
    palette = _check_palette(palette)
    colours = colorize(labels, palette).astype(np.float32)
    img = image.astype(np.float32)
    out = (1.0 - opacity) * img + opacity * colours
    has_class = (labels >= 0) & (labels < len(palette))
    out = np.where(has_class[..., None], out, img)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def legend_image(names, palette, *, swatch: int = 20, width: int = 220) -> Image.Image:
    """An RGB PIL image listing each class: a colour swatch, its index and its name."""
    palette = _check_palette(palette)
    names = list(names)
    if len(names) != len(palette):
        raise ValueError(f"{len(names)} names for {len(palette)} palette colours")
    pad = 4
    row = swatch + pad
    img = Image.new("RGB", (width, pad + row * len(names)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for k, (name, colour) in enumerate(zip(names, palette)):
        y = pad + k * row
        draw.rectangle(
            [pad, y, pad + swatch - 1, y + swatch - 1], fill=tuple(int(c) for c in colour), outline=(0, 0, 0)
        )
        draw.text((2 * pad + swatch, y + swatch // 2), f"{k:>2} {name}", fill=(0, 0, 0), font=font, anchor="lm")
    return img


def train_id_to_label_id(train_ids) -> np.ndarray:
    """Cityscapes train ids (0..18, 255 = ignore) -> uint8 label ids (ignore -> 'unlabeled').

    The lookup comes from cityscapesscripts' label table; any other value is an error.
    """
    train_ids = np.asarray(train_ids)
    if not np.issubdtype(train_ids.dtype, np.integer):
        raise ValueError(f"train ids must be integers, got dtype {train_ids.dtype}")
    k = len(CITYSCAPES_LABEL_IDS)
    bad = ~(((train_ids >= 0) & (train_ids < k)) | (train_ids == IGNORE_INDEX))
    if bad.any():
        raise ValueError(
            f"Cityscapes train ids are 0..{k - 1} or {IGNORE_INDEX}; found {np.unique(train_ids[bad])[:10].tolist()}"
        )
    lut = np.full(256, CITYSCAPES_UNLABELED_ID, np.uint8)
    lut[:k] = CITYSCAPES_LABEL_IDS
    return lut[train_ids.astype(np.uint8)]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, write) -> Path:
    """Call ``write(tmp_path)`` on a temporary name beside ``path``, then rename it to ``path``.

    The temporary file is removed if ``write`` fails, so ``path`` either is complete or does
    not exist (an existing ``path`` is replaced only on success).
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    # Hidden, and keeping the suffix: writers that pick the format from the name still work.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_png(path, array) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) array (or a PIL image) as a PNG, atomically."""
    if isinstance(array, Image.Image):
        img = array
    else:
        array = np.asarray(array)
        if array.dtype != np.uint8:
            raise ValueError(f"write_png expects uint8, got {array.dtype}")
        if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
            raise ValueError(f"write_png expects (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
        img = Image.fromarray(array)
    return write_atomic(path, lambda tmp: img.save(tmp, format="PNG"))
