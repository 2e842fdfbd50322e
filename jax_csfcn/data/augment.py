"""One training record's augmentation: random scale, crop, flip, blur and colour jitter.

The steps, their order and their draws are described in jax_csfcn/data/pipeline.py (module doc,
"Train pipeline"), which applies :func:`augment_record` to every record through grain. This
module needs no grain (NumPy and Pillow only): the GPU check runs the loader's per-record work
with it where grain is not installed.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from PIL import Image

from jax_csfcn.data.geometry import apply_geometry, crop_box, geometry_tables, max_taps, scaled_size  # noqa: F401  (scaled_size: re-exported)
from jax_csfcn.data.photometric import apply_photometric, apply_photometric_host, content_box, draw_photometric

PHOTOMETRIC = ("host", "device")  # where blur and colour jitter run (AugmentConfig.photometric)
GEOMETRY = ("host", "device")  # where scale, crop, pad and flip run (AugmentConfig.geometry)


class PipelineError(ValueError):
    """A record that the pipeline cannot process (wrong dtype/shape); the message names the record."""


def _pair(value, name: str, cast) -> tuple:
    try:
        a, b = value
        return cast(a), cast(b)
    except (TypeError, ValueError) as e:
        raise ValueError(f"AugmentConfig.{name} must be a pair, got {value!r}") from e


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Train-time augmentation. The geometry defaults are the upstream Cityscapes recipe (see the
    module doc); the photometric ones are off here, and the recipe's values (blur 0.5, jitter 0.5)
    come with the training config (jax_csfcn/defaults.py)."""

    crop_size: tuple[int, int] = (1024, 1024)  # (H, W)
    base_size: tuple[int, int] | None = None  # (H, W) whose short side f multiplies; None = the image's own
    scale_range: tuple[float, float] = (0.125, 2.0)  # f ~ U(lo, hi)
    flip: bool = True
    blur_prob: float = 0.0  # probability of a Gaussian blur
    blur_sigma: tuple[float, float] = (
        0.0,
        1.0,
    )  # its radius ~ U(lo, hi), in pixels of the crop (the upstream's U(0, 1))
    color_jitter: float = 0.0  # brightness/contrast/saturation factors ~ U(1 - c, 1 + c); 0 = off
    hue_jitter: float = 0.0  # hue shift ~ U(-h, h) of the colour circle (CamVid: 0.1); 0 = off
    ignore_index: int = 255
    # Where blur and jitter run: "host" (here, the batches are finished images) or "device" (the
    # batches carry their parameters and the train step applies them: the same function, module
    # doc step 6). Not part of the loader's identity: both give the same draws.
    photometric: str = "host"
    # Where the scale, crop, pad and flip run: "host" (Pillow here) or "device" (the batches carry
    # the whole sources and small tables, and the train step resamples: the same bytes,
    # jax_csfcn/data/geometry.py). "device" needs sources of one size, ``source_size`` (H, W):
    # a record of another size is refused by name. Neither is part of the loader's identity.
    geometry: str = "host"
    source_size: tuple[int, int] | None = None

    def __post_init__(self):
        crop = _pair(self.crop_size, "crop_size", int)
        if min(crop) < 1:
            raise ValueError(f"AugmentConfig.crop_size must be positive (H, W), got {self.crop_size!r}")
        object.__setattr__(self, "crop_size", crop)
        if self.base_size is not None:
            base = _pair(self.base_size, "base_size", int)
            if min(base) < 1:
                raise ValueError(f"AugmentConfig.base_size must be positive (H, W) or None, got {self.base_size!r}")
            object.__setattr__(self, "base_size", base)
        lo, hi = _pair(self.scale_range, "scale_range", float)
        if not 0 < lo <= hi:
            raise ValueError(f"AugmentConfig.scale_range must satisfy 0 < lo <= hi, got {self.scale_range!r}")
        object.__setattr__(self, "scale_range", (lo, hi))
        s_lo, s_hi = _pair(self.blur_sigma, "blur_sigma", float)
        if not 0 <= s_lo <= s_hi or s_hi <= 0:
            raise ValueError(f"AugmentConfig.blur_sigma must satisfy 0 <= lo <= hi, hi > 0, got {self.blur_sigma!r}")
        object.__setattr__(self, "blur_sigma", (s_lo, s_hi))
        if not 0.0 <= float(self.blur_prob) <= 1.0:
            raise ValueError(f"AugmentConfig.blur_prob must be in [0, 1], got {self.blur_prob!r}")
        if not 0.0 <= float(self.color_jitter) < 1.0:
            raise ValueError(f"AugmentConfig.color_jitter must be in [0, 1), got {self.color_jitter!r}")
        if not 0.0 <= float(self.hue_jitter) <= 0.5:
            raise ValueError(f"AugmentConfig.hue_jitter must be in [0, 0.5], got {self.hue_jitter!r}")
        if not 0 <= int(self.ignore_index) <= 255:
            raise ValueError(f"AugmentConfig.ignore_index must fit in uint8, got {self.ignore_index!r}")
        if self.photometric not in PHOTOMETRIC:
            raise ValueError(f"AugmentConfig.photometric must be one of {PHOTOMETRIC}, got {self.photometric!r}")
        if self.geometry not in GEOMETRY:
            raise ValueError(f"AugmentConfig.geometry must be one of {GEOMETRY}, got {self.geometry!r}")
        if self.geometry == "device" and self.photometric != "device":
            raise ValueError(
                "AugmentConfig.geometry='device' needs AugmentConfig.photometric='device' (blur and jitter follow the crop)"
            )
        if self.source_size is not None:
            size = _pair(self.source_size, "source_size", int)
            if min(size) < 1:
                raise ValueError(f"AugmentConfig.source_size must be positive (H, W) or None, got {self.source_size!r}")
            object.__setattr__(self, "source_size", size)
        object.__setattr__(self, "flip", bool(self.flip))
        object.__setattr__(self, "blur_prob", float(self.blur_prob))
        object.__setattr__(self, "color_jitter", float(self.color_jitter))
        object.__setattr__(self, "hue_jitter", float(self.hue_jitter))
        object.__setattr__(self, "ignore_index", int(self.ignore_index))

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def identity(self) -> dict:
        """The settings that decide a record's draws and pixels: what a loader's state checks
        on resume. Where the steps run (``photometric``, ``geometry``) changes neither."""
        return {k: v for k, v in self.to_json().items() if k not in ("photometric", "geometry", "source_size")}


def pixels_problem(image: np.ndarray, label: np.ndarray) -> str | None:
    """What is wrong with an example's arrays for this project's pipeline (uint8 HxWx3 image,
    uint8 HxW label of the same size), or None."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        return f"image must be uint8 HxWx3, got {image.dtype} {image.shape}"
    if label.dtype != np.uint8 or label.shape != image.shape[:2]:
        return f"label must be uint8 HxW matching the image {image.shape[:2]}, got {label.dtype} {label.shape}"
    return None


def _check_record(item, where: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(image, label, name) of a source item, with dtype/shape checks that name the record."""
    if not isinstance(item, dict) or "image" not in item or "label" not in item:
        keys = sorted(item) if isinstance(item, dict) else type(item).__name__
        raise PipelineError(f"{where}: expected a dict with 'image' and 'label', got {keys}")
    image, label = np.asarray(item["image"]), np.asarray(item["label"])
    name = str(item.get("name", where))
    problem = pixels_problem(image, label)
    if problem:
        raise PipelineError(f"record {name!r} ({where}): {problem}")
    return image, label, name


def _jitter(img: np.ndarray, strength: float, rng: np.random.Generator, hue: float = 0.0) -> np.ndarray:
    """Colour jitter as the upstream's (torchvision's ``ColorJitter``): brightness, contrast and
    saturation factors ~ U(1 - s, 1 + s) and, when ``hue`` > 0, a hue shift ~ U(-hue, hue), drawn
    first, then applied in a random order, each result rounded to uint8 as PIL does between steps
    (jax_csfcn/data/photometric.py holds the draws and both forms of the ops)."""
    only_jitter = AugmentConfig(crop_size=(1, 1), color_jitter=strength, hue_jitter=hue)
    return apply_photometric_host(img, draw_photometric(rng, only_jitter))


def augment(image: np.ndarray, label: np.ndarray, aug: AugmentConfig, rng: np.random.Generator):
    """One train example: (uint8 crop_H x crop_W x 3, uint8 crop_H x crop_W), see module doc.

    With ``aug.photometric == "device"`` the image comes back without its blur and jitter: see
    :func:`augment_record`, which also returns their parameters."""
    record = augment_record(image, label, aug, rng)
    return record["image"], record["label"]


def augment_record(
    image: np.ndarray, label: np.ndarray, aug: AugmentConfig, rng: np.random.Generator, name: str | None = None
) -> dict:
    """One train example as a dict: ``image``, ``label`` and, when ``aug.photometric == "device"``,
    ``photometric``: the blur and jitter parameters the train step applies
    (jax_csfcn/data/photometric.py), with ``content`` the (y0, x0, y1, x1) box of the crop that
    holds image content (the rest is padding).

    With ``aug.geometry == "device"`` the image and label come back as the whole source and
    ``geometry`` holds the tables the train step resamples them with
    (jax_csfcn/data/geometry.py); the draws are the same.

    Random draws happen in a fixed order (scale, crop y, crop x, flip, then blur, then jitter),
    so turning blur or jitter on does not change the geometry of a record, and where they run
    (host or device) changes no draw.
    """
    h, w = label.shape
    ch, cw = aug.crop_size
    nh, nw = scaled_size((h, w), rng.uniform(*aug.scale_range), aug.base_size)
    oh, ow = min(ch, nh), min(cw, nw)  # the part of the crop covered by image content
    y0 = int(rng.integers(0, nh - oh + 1))
    x0 = int(rng.integers(0, nw - ow + 1))
    flip = aug.flip and rng.random() < 0.5
    if aug.geometry == "device":
        return _device_geometry_record(image, label, aug, rng, (nh, nw), (y0, x0), (oh, ow), flip, name)
    # Fused scale + crop: resample only the source box that maps onto the crop window.
    box = crop_box((h, w), (nh, nw), (y0, x0), (oh, ow))
    img = np.asarray(Image.fromarray(image).resize((ow, oh), Image.BILINEAR, box=box))
    lab = np.asarray(Image.fromarray(label).resize((ow, oh), Image.NEAREST, box=box))
    params = draw_photometric(rng, aug)
    if aug.photometric == "host":
        img = apply_photometric_host(img, params)
    out_img = np.zeros((ch, cw, 3), np.uint8)
    out_lab = np.full((ch, cw), aug.ignore_index, np.uint8)
    out_img[:oh, :ow] = img
    out_lab[:oh, :ow] = lab
    if flip:
        out_img, out_lab = out_img[:, ::-1], out_lab[:, ::-1]
    record = {"image": np.ascontiguousarray(out_img), "label": np.ascontiguousarray(out_lab)}
    if aug.photometric == "device":
        record["photometric"] = {**params, "content": content_box((oh, ow), (ch, cw), flip)}
    return record


def _device_geometry_record(image, label, aug: AugmentConfig, rng, scaled_hw, offset, content_hw, flip, name) -> dict:
    """augment_record's result when the geometry runs on the device: the source itself, the
    tables that resample it, and the photometric parameters (drawn after the geometry, as on the
    host)."""
    hw = label.shape
    if aug.source_size is not None and tuple(hw) != aug.source_size:
        which = f"record {name!r}" if name else "a record"
        raise PipelineError(
            f"{which} is {hw[0]}x{hw[1]} among {aug.source_size[0]}x{aug.source_size[1]} sources: the geometry on "
            "the device batches whole sources of one size; use data.geometry=host for datasets of mixed sizes"
        )
    tables = geometry_tables(hw, scaled_hw, offset, content_hw, aug.crop_size, flip, max_taps(aug, hw))
    params = draw_photometric(rng, aug)
    return {
        "image": image,
        "label": label,
        "geometry": tables,
        "photometric": {**params, "content": content_box(content_hw, aug.crop_size, flip)},
    }


def augment_on_device(
    images,
    labels,
    extras: dict,
    *,
    ignore_index: int,
    geometry_orders: tuple[str, ...] | None = None,
    photometric_reach: int | None = None,
):
    """The steps a loader left to the device, on a batch, in the host's order: with
    ``geometry_orders`` (``geometry.possible_orders``) the ``extras["geometry"]`` tables scale,
    crop, pad and flip the whole sources; with ``photometric_reach`` (``photometric.max_box_radius``)
    the ``extras["photometric"]`` parameters blur and jitter the crops. Jittable; returns
    ``(images, labels)``. The train step (jax_csfcn/step.py) calls it."""
    if geometry_orders is not None:
        images, labels = apply_geometry(
            images, labels, extras["geometry"], ignore_index=ignore_index, orders=geometry_orders
        )
    if photometric_reach is not None:
        p = extras["photometric"]
        images = apply_photometric(images, p, p["content"], max_box_radius=photometric_reach)
    return images, labels
