"""The training geometry (random scale, crop, pad, flip) as small tables: built on the host, applied on the device.

    from jax_csfcn.data.geometry import geometry_tables, apply_geometry, apply_geometry_host, max_taps

    taps = max_taps(aug, source_hw)                       # static: the widest filter the config can draw
    t = geometry_tables(source_hw, (nh, nw), (y0, x0), (oh, ow), crop_hw, flip, taps)   # per record, numpy
    img, lab = apply_geometry_host(image, label, t, ignore_index=255)     # numpy reference
    imgs, labs = apply_geometry(images, labels, stacked_tables, ignore_index=255)  # jitted, (B, ...) batches

The host pipeline (jax_csfcn/data/augment.py) resamples the part of the source that lands in the
crop with Pillow's ``resize(..., box=...)``: bilinear with antialiasing for the image, nearest for
the label, then pads to the crop size and flips.  That is the loader's largest remaining cost once
the photometric steps run on the device (several ms per 1024x2048 record).  Here the same function
is split in two:

* :func:`geometry_tables` (host, a fraction of a millisecond) computes, for every row and every
  column of the final canvas, where its source window starts and the window's integer weights,
  plus the source row/column each label pixel copies.  Padding and the flip are folded into the
  tables: a padded column has all weights 0 (so the image is 0) and label index -1 (so the label
  is ``ignore_index``); a flipped canvas lists the columns in reverse.
* :func:`apply_geometry` (device) gathers and sums with those tables in integers.

Why it is exact.  Pillow's 8-bit resampling is separable fixed-point arithmetic: for each output
column a window of source columns ``[xmin, xmin + n)`` and weights computed in C ``double``
(the triangle filter ``1 - |t|`` stretched by the scale when shrinking, normalised to sum 1 in
order), converted to integers ``trunc(0.5 + w * 2^22)``; an output is
``clip((2^21 + sum w_k * p_k) >> 22, 0, 255)``, first along the rows (horizontal pass, rounded to
uint8), then along the columns of that result (vertical pass).  The box coordinates reach the C
code as ``float`` (32-bit) and the window width is their float difference.  :func:`bilinear_taps`
repeats that computation with numpy float64 (the same IEEE operations in the same order,
including the sequential sum of the weights), so the integer weights are Pillow's; the device sums
the same integer products in int32 (at most ``255 * (2^22 + taps) + 2^21 < 2^31``), and integer
sums do not depend on their order.  Labels: Pillow's nearest resize with a box is an affine map
whose source index it accumulates column by column in ``double``; :func:`nearest_index` asks
Pillow itself for those indices (a one-row int32 image of 0..n-1, resized with the same box), so
they are exact by construction.  tests/test_geometry.py checks both against ``Image.resize`` on
fresh random images and draws, bit for bit.

Pillow skips a pass whose size and box leave the axis unchanged; the tables then hold the
identity (one weight ``2^22``), which gives the same bytes.  The order of the passes is Pillow's
too: from Pillow 13 on, when the height shrinks by more than twice as many pixels as the width
(``H - oh > 2 * (W - ow)``, counted on the whole source, not the box), the vertical pass runs
first, which rounds differently.  Each record's tables say which order it takes
(``vertical_first``, decided by :func:`vertical_first` for the installed Pillow) and
:func:`apply_geometry` computes only the orders a config can draw (:func:`possible_orders`):
the upstream recipes on wide images never shrink the height that much, so they trace one.

Nothing here imports JAX at module level (:func:`apply_geometry` imports it when called): the
loader's workers import :func:`geometry_tables` and stay light.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import PIL
from PIL import Image

PRECISION_BITS = 22  # Pillow's fixed point for 8-bit resampling: 32 - 8 - 2
_HALF = 1 << (PRECISION_BITS - 1)

# Fields of one record's tables (each gains a leading batch axis when batched).
FIELDS = ("x_start", "x_weights", "y_start", "y_weights", "label_x", "label_y", "vertical_first")
ORDERS = ("horizontal_first", "vertical_first")

# Pillow 13 made the order of the two passes depend on the sizes (module doc).
_PILLOW_ORDERS_BY_SIZE = int(PIL.__version__.split(".")[0]) >= 13


def vertical_first(source_hw: tuple[int, int], content_hw: tuple[int, int]) -> bool:
    """Whether the installed Pillow runs the vertical pass first when resizing a ``source_hw``
    image (any box) to ``content_hw``."""
    dh, dw = source_hw[0] - content_hw[0], source_hw[1] - content_hw[1]
    return _PILLOW_ORDERS_BY_SIZE and dh > 0 and dh > 2 * dw


def bilinear_taps(in_size: int, lo: float, hi: float, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's window starts (int32 ``(out_size,)``) and fixed-point weights (int32
    ``(out_size, ksize)``) for a bilinear resize of the source span ``[lo, hi)`` of an axis of
    ``in_size`` pixels to ``out_size`` pixels (module doc, "Why it is exact")."""
    in0, in1 = np.float32(lo), np.float32(hi)  # the box reaches the C code as float
    scale = float(np.float32(in1 - in0)) / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the triangle filter's support is 1
    ksize = int(math.ceil(support)) * 2 + 1
    center = float(in0) + (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    ss = 1.0 / filterscale
    weights = np.zeros((out_size, ksize), np.float64)
    total = np.zeros(out_size, np.float64)
    for x in range(ksize):  # one tap at a time: the C code sums the weights in this order
        t = np.abs(((x + xmin) - center + 0.5) * ss)
        w = np.where((t < 1.0) & (x < xmax), 1.0 - t, 0.0)
        weights[:, x] = w
        total = total + w
    nonzero = total != 0.0
    weights[nonzero] /= total[nonzero, None]
    fixed = np.trunc(0.5 + weights * (1 << PRECISION_BITS))  # the weights are >= 0
    return xmin.astype(np.int32), fixed.astype(np.int32)


def nearest_index(in_size: int, lo: float, hi: float, out_size: int) -> np.ndarray:
    """The source index (int32 ``(out_size,)``) of each pixel of Pillow's nearest resize of the
    span ``[lo, hi)`` of an axis of ``in_size`` pixels to ``out_size``, computed by Pillow."""
    ramp = Image.fromarray(np.arange(in_size, dtype=np.int32)[None, :])  # mode "I"
    return np.asarray(ramp.resize((out_size, 1), Image.NEAREST, box=(lo, 0.0, hi, 1.0)), np.int32)[0]


def scaled_size(hw: tuple[int, int], factor: float, base_size: tuple[int, int] | None) -> tuple[int, int]:
    """(H, W) of an ``hw`` image after random scale ``factor`` (jax_csfcn/data/pipeline.py, module doc, step 2)."""
    h, w = hw
    s = factor if base_size is None else factor * min(base_size) / min(h, w)
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def crop_box(
    source_hw: tuple[int, int], scaled_hw: tuple[int, int], offset: tuple[int, int], content_hw: tuple[int, int]
) -> tuple[float, float, float, float]:
    """The source span ``(x0, y0, x1, y1)`` (Pillow's ``box``) that lands in the crop window at
    ``offset = (y0, x0)`` of size ``content_hw`` once ``source_hw`` is scaled to ``scaled_hw``."""
    (h, w), (nh, nw), (y0, x0), (oh, ow) = source_hw, scaled_hw, offset, content_hw
    return x0 * w / nw, y0 * h / nh, (x0 + ow) * w / nw, (y0 + oh) * h / nh


def _taps_for_ratio(ratio: float) -> int:
    return int(math.ceil(max(ratio, 1.0))) * 2 + 1


def max_taps(aug, source_hw: tuple[int, int]) -> int:
    """The widest bilinear window (``ksize``) any record of ``source_hw`` can need under ``aug``
    (its smallest scale shrinks the most), with one spare pair of taps for the float rounding of
    the box; the tables of every record are padded to it, so the batches have one shape."""
    h, w = source_hw
    nh, nw = scaled_size((h, w), aug.scale_range[0], aug.base_size)
    return _taps_for_ratio(max(h / nh, w / nw) * (1 + 1e-6)) + 2


def _content_hw(aug, source_hw, factor: float) -> tuple[int, int]:
    nh, nw = scaled_size(source_hw, factor, aug.base_size)
    return min(aug.crop_size[0], nh), min(aug.crop_size[1], nw)


def possible_orders(aug, source_hw: tuple[int, int]) -> tuple[str, ...]:
    """The pass orders (``ORDERS``) that records of ``source_hw`` can take under ``aug``: the
    content size changes only where a scaled side crosses a rounding boundary, so the order is
    evaluated once between each pair of consecutive boundaries of the scale range."""
    h, w = source_hw
    lo, hi = aug.scale_range
    unit = 1.0 if aug.base_size is None else min(aug.base_size) / min(h, w)  # scaled side = f * unit * side
    cuts = {lo, hi}
    for side in (h, w):
        k = np.arange(math.floor(lo * unit * side - 0.5), math.ceil(hi * unit * side + 0.5) + 1)
        f = (k + 0.5) / (unit * side)
        cuts.update(float(v) for v in f[(f > lo) & (f < hi)])
    cuts = sorted(cuts)
    probes = cuts + [(a + b) / 2 for a, b in zip(cuts, cuts[1:])]
    found = {vertical_first(source_hw, _content_hw(aug, source_hw, f)) for f in probes}
    return tuple(name for flag, name in ((False, ORDERS[0]), (True, ORDERS[1])) if flag in found)


def _fold(values: np.ndarray, valid: int, canvas: int, flip: bool, fill) -> np.ndarray:
    """``values`` for positions ``0..valid-1`` placed on a canvas axis of ``canvas`` positions,
    the rest ``fill``, reversed when ``flip``."""
    out = np.full((canvas,) + values.shape[1:], fill, values.dtype)
    out[:valid] = values
    return out[::-1].copy() if flip else out


def geometry_tables(
    source_hw: tuple[int, int],
    scaled_hw: tuple[int, int],
    offset: tuple[int, int],
    content_hw: tuple[int, int],
    crop_hw: tuple[int, int],
    flip: bool,
    taps: int,
) -> dict:
    """One record's tables: the source ``source_hw`` scaled to ``scaled_hw``, its window at
    ``offset = (y0, x0)`` of size ``content_hw`` placed at the top left of a ``crop_hw`` canvas
    (the rest padding), flipped left-right when ``flip`` -- the geometry of
    jax_csfcn/data/augment.py's ``augment_record``.  Weight tables are padded to ``taps`` columns
    (:func:`max_taps`); a record that would need more is refused."""
    h, w = source_hw
    oh, ow = content_hw
    ch, cw = crop_hw
    bx0, by0, bx1, by1 = crop_box(source_hw, scaled_hw, offset, content_hw)  # the host's resize box
    xs, xk = bilinear_taps(w, bx0, bx1, ow)
    ys, yk = bilinear_taps(h, by0, by1, oh)
    need = max(xk.shape[1], yk.shape[1])
    if need > taps:
        raise ValueError(f"a record needs {need} resampling taps, more than the {taps} of max_taps; raise it")

    def pad(k):
        return np.pad(k, ((0, 0), (0, taps - k.shape[1])))

    return {
        "x_start": _fold(xs, ow, cw, flip, 0),
        "x_weights": _fold(pad(xk), ow, cw, flip, 0),
        "y_start": _fold(ys, oh, ch, False, 0),
        "y_weights": _fold(pad(yk), oh, ch, False, 0),
        "label_x": _fold(nearest_index(w, bx0, bx1, ow), ow, cw, flip, -1),
        "label_y": _fold(nearest_index(h, by0, by1, oh), oh, ch, False, -1),
        "vertical_first": np.int32(vertical_first((h, w), (oh, ow))),
    }


def stack_geometry(tables: list[dict]) -> dict:
    """Records' tables -> one dict of ``(B, ...)`` arrays (what the loader's batching does)."""
    return {k: np.stack([np.asarray(t[k]) for t in tables]) for k in FIELDS}


def _window(start: np.ndarray, taps: int, size: int) -> np.ndarray:
    """Source indices ``start + 0..taps-1``, clamped into the axis (taps past the edge weigh 0)."""
    return np.clip(start[:, None] + np.arange(taps), 0, size - 1)


def apply_geometry_host(image: np.ndarray, label: np.ndarray, tables: dict, *, ignore_index: int):
    """numpy form of :func:`apply_geometry` for one record (uint8 ``H x W x 3`` and ``H x W``)."""
    h, w = label.shape
    cols = _window(tables["x_start"], tables["x_weights"].shape[1], w)  # (cw, taps)
    rows = _window(tables["y_start"], tables["y_weights"].shape[1], h)  # (ch, taps)

    def along_x(x):
        acc = _HALF + np.einsum("hjkc,jk->hjc", x[:, cols], tables["x_weights"].astype(np.int64))
        return np.clip(acc >> PRECISION_BITS, 0, 255)

    def along_y(x):
        acc = _HALF + np.einsum("ikjc,ik->ijc", x[rows], tables["y_weights"].astype(np.int64))
        return np.clip(acc >> PRECISION_BITS, 0, 255)

    x = image.astype(np.int64)
    out = along_x(along_y(x)) if int(tables["vertical_first"]) else along_y(along_x(x))
    out = out.astype(np.uint8)
    ly, lx = tables["label_y"], tables["label_x"]
    lab = label[np.maximum(ly, 0)][:, np.maximum(lx, 0)]
    lab = np.where((ly[:, None] >= 0) & (lx[None, :] >= 0), lab, np.uint8(ignore_index)).astype(np.uint8)
    return out, lab


def _apply_one(image, label, t, ignore_index: int, orders: tuple[str, ...]):
    import jax.numpy as jnp  # lazy: the loader's workers import this module without JAX

    h, w = label.shape
    taps_x, taps_y = t["x_weights"].shape[-1], t["y_weights"].shape[-1]
    cols = jnp.clip(t["x_start"][:, None] + jnp.arange(taps_x), 0, w - 1)  # (cw, taps)
    rows = jnp.clip(t["y_start"][:, None] + jnp.arange(taps_y), 0, h - 1)  # (ch, taps)

    def along_x(x):  # (n, W, 3) -> (n, cw, 3); integer sums: any order gives Pillow's bytes
        acc = jnp.full((x.shape[0], cols.shape[0], 3), _HALF, jnp.int32)
        for k in range(taps_x):
            acc = acc + x[:, cols[:, k]] * t["x_weights"][None, :, k, None]
        return jnp.clip(acc >> PRECISION_BITS, 0, 255)

    def along_y(x):  # (H, n, 3) -> (ch, n, 3)
        acc = jnp.full((rows.shape[0], x.shape[1], 3), _HALF, jnp.int32)
        for k in range(taps_y):
            acc = acc + x[rows[:, k]] * t["y_weights"][:, k, None, None]
        return jnp.clip(acc >> PRECISION_BITS, 0, 255)

    x = image.astype(jnp.int32)
    results = {}
    if ORDERS[0] in orders:
        results[ORDERS[0]] = along_y(along_x(x))
    if ORDERS[1] in orders:
        results[ORDERS[1]] = along_x(along_y(x))
    if len(results) == 2:
        out = jnp.where(t["vertical_first"] != 0, results[ORDERS[1]], results[ORDERS[0]])
    else:
        (out,) = results.values()
    out = out.astype(jnp.uint8)
    ly, lx = t["label_y"], t["label_x"]
    lab = label[jnp.maximum(ly, 0)][:, jnp.maximum(lx, 0)]
    lab = jnp.where((ly[:, None] >= 0) & (lx[None, :] >= 0), lab, jnp.uint8(ignore_index))
    return out, lab


def apply_geometry(images, labels, tables: dict, *, ignore_index: int, orders: tuple[str, ...] = ORDERS):
    """Scale, crop, pad and flip a uint8 batch of sources ``(B, H, W, 3)`` / ``(B, H, W)`` with
    the records' tables (:func:`geometry_tables`, stacked): uint8 ``(B, ch, cw, 3)`` images and
    ``(B, ch, cw)`` labels, the bytes Pillow gives on the host.  ``orders`` (static): the pass
    orders to compute (:func:`possible_orders` of the config; a record asking for another one is
    refused when its tables are concrete).  Jittable."""
    import jax  # lazy: the loader's workers import this module without JAX
    import jax.numpy as jnp  # lazy: the loader's workers import this module without JAX

    orders = tuple(orders)
    if not orders or set(orders) - set(ORDERS):
        raise ValueError(f"orders must be a non-empty subset of {ORDERS}, got {orders!r}")
    flags = tables["vertical_first"]
    if isinstance(flags, np.ndarray | np.integer) and np.size(flags):
        asked = {ORDERS[int(bool(v))] for v in np.ravel(flags)}
        if asked - set(orders):
            raise ValueError(f"a record resamples {sorted(asked - set(orders))[0]}, which orders={orders} leaves out")
    t = {k: jnp.asarray(tables[k], jnp.int32) for k in FIELDS}
    fn = functools.partial(_apply_one, ignore_index=int(ignore_index), orders=orders)
    return jax.vmap(fn)(jnp.asarray(images), jnp.asarray(labels), t)


__all__ = [
    "FIELDS",
    "ORDERS",
    "PRECISION_BITS",
    "apply_geometry",
    "apply_geometry_host",
    "bilinear_taps",
    "crop_box",
    "geometry_tables",
    "max_taps",
    "nearest_index",
    "possible_orders",
    "scaled_size",
    "stack_geometry",
    "vertical_first",
]
