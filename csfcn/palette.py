"""Class names, colour palettes and label images for visualisation and benchmark exports.

numpy + PIL only (no JAX, no torch): the framework-free layer both sides share.

* the class names and colours of every dataset come from the one registry, csfcn/classes.py;
* :func:`colorize`, :func:`overlay`, :func:`legend_image` draw predictions (and
  :func:`comparison_grid`, image | ground truth | prediction rows); ignore (255) and
  any other out-of-palette value is drawn black by :func:`colorize` and left as the image by
  :func:`overlay`.
* :func:`train_id_to_label_id` maps Cityscapes train ids to the label ids that the official
  evaluation (and test server) read.
* :func:`write_png` writes through a temporary name in the same directory and renames, so a
  crash never leaves a half-written PNG that looks complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from csfcn.classes import (  # noqa: F401  (re-exported: the tables palette users read)
    CAMVID_NAMES,
    CAMVID_PALETTE,
    CITYSCAPES_LABEL_IDS,
    CITYSCAPES_NAMES,
    CITYSCAPES_PALETTE,
    CITYSCAPES_UNLABELED_ID,
    DATASETS,
    IGNORE_INDEX,
    class_names,
    palette,
)
from csfcn.files import write_atomic  # noqa: F401  (re-exported)


def dataset_palette(dataset: str) -> tuple[tuple[str, ...], np.ndarray]:
    """(class names, uint8 (K, 3) palette) of ``dataset`` (see csfcn/classes.py)."""
    return class_names(dataset), palette(dataset)


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


def comparison_grid(rows, palette, out, *, names=None, titles=("image", "ground truth", "prediction")) -> Path:
    """A PNG grid, one row per image: the image | its ground truth | the prediction, in ``palette``
    colours; with ``names``, the legend of the classes to the right.  ``rows``: (uint8 (H, W, 3)
    image, (H, W) labels, (H, W) labels) tuples; rows of other sizes are laid out at their own."""
    rows = list(rows)
    if not rows:
        raise ValueError("comparison_grid needs at least one row")
    gap, top = 4, 18
    w = max(r[0].shape[1] for r in rows)
    heights = [r[0].shape[0] for r in rows]
    legend = legend_image(names, palette) if names is not None else None
    width = 3 * w + 2 * gap + (gap + legend.size[0] if legend else 0)
    height = max(top + sum(heights) + gap * len(rows), top + (legend.size[1] if legend else 0))
    canvas = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(canvas)
    for j, title in enumerate(titles):
        d.text((j * (w + gap) + 4, 3), title, fill="black")
    y = top
    for (img, gt, pred), h in zip(rows, heights):
        for j, arr in enumerate((np.asarray(img, np.uint8), colorize(gt, palette), colorize(pred, palette))):
            canvas.paste(Image.fromarray(arr), (j * (w + gap), y))
        y += h + gap
    if legend:
        canvas.paste(legend, (3 * (w + gap), top))
    return write_png(out, np.asarray(canvas))


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


def raw_value_lut(classes) -> np.ndarray:
    """Train id -> the mask value a user's class table stores, from ``ModelConfig.classes``:
    uint8/uint16 (256,) for index masks, uint8 (256, 3) for colour masks; ignore and unknown
    ids -> 0 (black).  Index ``lut[labels]`` to write labels back in the dataset's own values."""
    raws = [r for _, _, r in classes]
    if not raws or any(r is None for r in raws):
        raise ValueError("these classes carry no mask values (a model from before class tables, or a fixed dataset)")
    if isinstance(raws[0], tuple):
        lut = np.zeros((256, 3), np.uint8)
    else:
        lut = np.zeros(256, np.uint16 if max(raws) > 255 else np.uint8)
    lut[: len(raws)] = raws
    return lut


def write_png(path, array) -> Path:
    """Write a uint8 (H, W) or (H, W, 3), or a uint16 (H, W), array (or a PIL image) as a PNG, atomically."""
    if isinstance(array, Image.Image):
        img = array
    else:
        array = np.asarray(array)
        if array.dtype == np.uint16 and array.ndim == 2:  # 16-bit masks (a class table's raw values)
            return write_atomic(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
        if array.dtype != np.uint8:
            raise ValueError(f"write_png expects uint8 (or 2-D uint16), got {array.dtype}")
        if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
            raise ValueError(f"write_png expects (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
        img = Image.fromarray(array)
    return write_atomic(path, lambda tmp: img.save(tmp, format="PNG"))
