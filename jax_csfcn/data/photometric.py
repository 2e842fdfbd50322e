"""Photometric augmentation (Gaussian blur, colour jitter with hue) drawn on the host, applied on the device.

    from jax_csfcn.data.photometric import draw_photometric, apply_photometric, max_box_radius, stack_photometric

    params = draw_photometric(rng, aug)        # in the grain worker, per record: small numpy arrays
    batch_params = stack_photometric([...])     # (B, ...) per field, batched like the images
    images = apply_photometric(images, batch_params, content, max_box_radius=max_box_radius(aug))  # jitted

The train pipeline's blur and jitter (``pipeline.augment``, module doc step 6) cost more host CPU
than the geometry.  This module splits them in two:

* :func:`draw_photometric` consumes the record's RNG exactly as ``augment`` does (the same calls
  in the same order, under the same conditions) and turns the draws into fixed-shape numpy
  parameters.  All randomness stays on the host, keyed by grain's per-record RNG, so a run's
  augmentation is still a pure function of the seed, the record and the epoch -- the same
  whatever the number of processes, workers or devices.
* :func:`apply_photometric_host` applies those parameters with PIL and numpy, exactly as
  ``augment`` does today: draw + host-apply reproduces ``augment``'s image bit for bit.
* :func:`apply_photometric` computes the same function in JAX on uint8 batches of padded (and
  possibly flipped) crops, inside a jitted step: static shapes, per-image parameters.

What is exact, and why.

* Blur: PIL's ``GaussianBlur(radius)`` is three passes of an *extended box* filter, first along
  the rows, then along the columns.  The box radius comes from the Gaussian's variance split over
  the passes (Gwosdek et al., "Theoretical foundations of Gaussian convolution by extended box
  filtering"): an integer part ``r`` and a fraction, computed by Pillow in C ``float``.  Each pass
  is fixed-point integer arithmetic: with ``ww = 2^24 / (2 * radius + 1)`` (truncated) for the
  ``2r + 1`` inner taps and ``fw = (2^24 - (2r + 1) * ww) / 2`` (integer division) for the two
  outer taps at distance ``r + 1``, an output is ``(sum of weights * pixels + 2^23) >> 24``,
  rounded to uint8 after every pass, with the pixels beyond the image's edges taken equal to the
  edge pixel.  The host draws the radius, emulates the C float arithmetic with numpy float32 and
  stores ``r``, ``ww`` and ``fw``; the device sums the same integer terms in uint32 (at most
  ``255 * 2^24 + 2^23 < 2^32``, no overflow) over a window fixed at trace time by the largest
  box radius the config can draw (:func:`max_box_radius`), the taps beyond ``r + 1`` weighted 0.
  Integer sums do not depend on their order: bit-identical to PIL.  The edges are those of the
  image content (the crop before padding), as PIL blurs the unpadded crop.
* Hue: PIL's RGB -> HSV conversion truncates float expressions, so it is tabulated with PIL
  itself (at first use, ~30 ms): the hue byte depends only on which channel is the largest (red
  tested first, then green) and on the two other channels' distances to it, the saturation byte
  on (max, max - min), the value byte is the max.  HSV -> RGB rounds ``v * (1 - s * f)``-style
  products whose exact rationals (denominators 510 and 130050 with even numerators against odd
  multiples) never tie at .5, and Pillow's float error is smaller than their distance to a tie,
  so exact integer arithmetic reproduces it: both checked on all 2^24 inputs against PIL.
* Brightness is one float32 product, rounded half to even as ``np.rint`` does: exact.  Contrast
  and saturation are float32 expressions too, and both forms evaluate them the same way: the
  grey ``(0.299 r + 0.587 g) + 0.114 b`` element by element in that order (:func:`gray_host`; not
  a matrix product, whose BLAS kernel rounds differently on different CPUs and even at different
  positions of a row), the contrast mean from exact integer channel sums
  (:func:`contrast_mean_host`: ``((0.299 R + 0.587 G) + 0.114 B) / n`` in float32, so the order
  of the pixels, a flipped canvas too, cannot matter), and ``(x - m) * f + m`` as written.  The
  one thing a compiler may change is to fuse a product with the addition that follows it into
  one FMA, rounding once instead of twice (XLA does on CPU, and on GPUs by default); the device
  form keeps every such product apart: its bits pass through an XOR with a zero computed at run
  time, an identity no compiler can see through (a ``where(p == p, p, 0)`` guard was seen
  through inside the jitted loop), so each operation rounds as numpy's does: bit-identical,
  every op and every chain of them (tests/test_photometric.py; 25 M values per recipe checked
  on 1024x1024 crops).

Padding and flip.  ``apply_photometric`` works on the final canvas: ``content = (y0, x0, y1, x1)``
says where the image is; pixels outside it come back 0.  The box filter is symmetric and the
other operations are per pixel (the contrast mean is over the content, in any order), so they
commute with the horizontal flip: the flipped canvas (content at the right, ``x0 = W - ow``)
gives the flip of the unflipped result.

Nothing here imports JAX at module level (the device functions import it when called), so the
pipeline's workers can import :func:`draw_photometric` and stay light.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageFilter

# Op codes of the jitter, in the order ``pipeline._jitter`` lists them.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
NUM_OPS = 4
BLUR_PASSES = 3  # PIL's GaussianBlur: 3 box passes per direction
_ONE = 1 << 24  # fixed-point 1.0 of the box blur
_HALF = 1 << 23

GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # the pipeline's luma weights


def gray_host(x: np.ndarray) -> np.ndarray:
    """float32 grey of float32 RGB ``(..., 3)``: ``(0.299 r + 0.587 g) + 0.114 b``, each product and
    sum rounded in that order (module doc: the same on every CPU and on the device)."""
    return (x[..., 0] * GRAY[0] + x[..., 1] * GRAY[1]) + x[..., 2] * GRAY[2]


def contrast_mean_host(img: np.ndarray) -> np.float32:
    """The contrast op's mean grey of a uint8 ``H x W x 3`` image, from its exact channel sums."""
    s = img.reshape(-1, 3).sum(axis=0, dtype=np.int64).astype(np.float32)
    count = np.float32(img.shape[0] * img.shape[1])
    return ((s[0] * GRAY[0] + s[1] * GRAY[1]) + s[2] * GRAY[2]) / count


# ----------------------------------------------------------------------------------------------
# Host: parameters


def gaussian_box_radius(radius: float, passes: int = BLUR_PASSES) -> np.float32:
    """The (fractional) extended-box radius PIL uses for a Gaussian of standard deviation ``radius``.

    Pillow computes it in C: ``float`` arithmetic except the square root and the floor, which are
    done in double and stored back to float.  numpy float32 scalars reproduce those roundings.
    """
    f32 = np.float32
    rad = f32(radius)
    sigma2 = rad * rad / f32(passes)
    length = f32(np.sqrt(12.0 * float(sigma2) + 1.0))  # the box length
    lo = f32(np.floor((float(length) - 1.0) / 2.0))  # its integer radius
    frac = (f32(2) * lo + f32(1)) * (lo * (lo + f32(1)) - f32(3) * sigma2)
    frac = frac / (f32(6) * (sigma2 - (lo + f32(1)) * (lo + f32(1))))
    return lo + frac


def box_blur_weights(radius: float) -> tuple[int, int, int]:
    """``(r, ww, fw)`` of one box pass of PIL's ``GaussianBlur(radius)``: the integer box radius,
    the fixed-point (2^24 = 1) weight of the ``2r + 1`` inner taps and that of the two outer taps.

    A box radius of 0 (PIL then copies the image) gives ``(0, 2^24, 0)``, the identity."""
    box = gaussian_box_radius(radius)
    r = int(box)  # C's (int) truncation
    ww = int(np.float32(_ONE) / (box * np.float32(2) + np.float32(1)))  # float division, truncated
    fw = (_ONE - (2 * r + 1) * ww) // 2
    return r, ww, fw


def max_box_radius(aug) -> int:
    """The largest integer box radius ``draw_photometric(rng, aug)`` can produce: the static
    half-width of the device's blur window (``apply_photometric(..., max_box_radius=)``).

    ``aug`` is a ``pipeline.AugmentConfig`` (only ``blur_prob`` and ``blur_sigma`` are read).  The
    box radius grows with the Gaussian radius; the margin covers float32 rounding at ``hi``."""
    if aug.blur_prob <= 0:
        return 0
    return int(float(gaussian_box_radius(float(aug.blur_sigma[1]))) + 1e-3)


def identity_photometric() -> dict:
    """Parameters that change nothing (no blur, no jitter op): a dummy record's, for instance."""
    return {
        "blur": np.bool_(False),
        "blur_radius": np.float32(0.0),
        "box_radius": np.int32(0),
        "box_ww": np.uint32(_ONE),
        "box_fw": np.uint32(0),
        "factors": np.ones(3, np.float32),
        "hue_shift": np.int32(0),
        "order": np.full(NUM_OPS, -1, np.int32),
    }


def draw_photometric(rng: np.random.Generator, aug) -> dict:
    """Draw one record's blur and jitter parameters from ``rng`` as ``pipeline.augment`` does.

    Called where ``augment`` draws them (after the flip), it consumes ``rng`` identically: a
    uniform for the blur decision (when ``aug.blur_prob > 0``) and the radius (when it blurs);
    then, when ``aug.color_jitter > 0`` or ``aug.hue_jitter > 0``, three factors (when
    ``color_jitter > 0``), the hue shift (when ``hue_jitter > 0``) and the permutation of the ops.

    Returns numpy values of fixed shapes and dtypes whatever ``aug`` says (batches stack):

    * ``blur`` bool: whether the record is blurred;
    * ``blur_radius`` float32: the Gaussian radius as PIL's C code sees it (0 when not blurred);
    * ``box_radius`` int32, ``box_ww`` uint32, ``box_fw`` uint32: the box pass derived from it
      (:func:`box_blur_weights`; ``(0, 2^24, 0)``, the identity, when not blurred);
    * ``factors`` float32 (3,): brightness, contrast and saturation factors (1 when off);
    * ``hue_shift`` int32: the hue shift in steps of the uint8 hue channel,
      ``round(shift * 255)``, possibly negative, applied modulo 256 (0 when off);
    * ``order`` int32 (4,): the op codes (:data:`BRIGHTNESS`, :data:`CONTRAST`,
      :data:`SATURATION`, :data:`HUE`) in the order they apply, then -1 for the unused slots.
    """
    p = identity_photometric()
    if aug.blur_prob > 0 and rng.random() < aug.blur_prob:
        radius = float(rng.uniform(*aug.blur_sigma))
        r, ww, fw = box_blur_weights(radius)
        p.update(blur=np.bool_(True), blur_radius=np.float32(radius), box_radius=np.int32(r),
                 box_ww=np.uint32(ww), box_fw=np.uint32(fw))  # fmt: skip
    strength, hue = aug.color_jitter, aug.hue_jitter
    if strength > 0 or hue > 0:
        ops = []
        if strength > 0:
            p["factors"] = rng.uniform(1.0 - strength, 1.0 + strength, 3).astype(np.float32)
            ops += [BRIGHTNESS, CONTRAST, SATURATION]
        if hue > 0:
            p["hue_shift"] = np.int32(round(float(rng.uniform(-hue, hue)) * 255))
            ops.append(HUE)
        order = rng.permutation(ops)
        p["order"][: len(order)] = order
    return p


def stack_photometric(params: list[dict]) -> dict:
    """Per-record parameters -> one dict of arrays with a leading batch axis."""
    return {k: np.stack([np.asarray(p[k]) for p in params]) for k in params[0]}


def content_box(content_hw: tuple[int, int], canvas_hw: tuple[int, int], flip: bool) -> np.ndarray:
    """``(y0, x0, y1, x1)`` int32 of an ``oh x ow`` content placed at the top left of the canvas
    (as ``augment`` pads it), then flipped horizontally when ``flip``."""
    oh, ow = content_hw
    w = canvas_hw[1]
    x0 = w - ow if flip else 0
    return np.array([0, x0, oh, x0 + ow], np.int32)


# ----------------------------------------------------------------------------------------------
# Host: the reference


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Round half to even, clip to 0..255, uint8 (the jitter's rounding between ops)."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def hue_shift_host(img: np.ndarray, steps: int) -> np.ndarray:
    """Rotate the hue by ``steps`` of PIL's uint8 hue channel (wrapping), through PIL's HSV."""
    hsv = np.array(Image.fromarray(img).convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(steps)) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def apply_photometric_host(img: np.ndarray, params: dict) -> np.ndarray:
    """Blur and jitter the uint8 ``H x W x 3`` image content (no padding) with one record's
    ``params`` (:func:`draw_photometric`), with PIL and numpy as ``pipeline.augment`` does."""
    img = np.asarray(img)
    if bool(params["blur"]):
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=float(params["blur_radius"]))))
    factors = np.asarray(params["factors"], np.float32)
    for op in np.asarray(params["order"]):
        if op < 0:
            continue
        x = img.astype(np.float32)
        if op == BRIGHTNESS:
            img = to_uint8(x * factors[0])
        elif op == CONTRAST:
            m = contrast_mean_host(img)
            img = to_uint8((x - m) * factors[1] + m)
        elif op == SATURATION:
            gray = gray_host(x)[..., None]
            img = to_uint8((x - gray) * factors[2] + gray)
        else:
            img = hue_shift_host(img, int(params["hue_shift"]))
    return img


# ----------------------------------------------------------------------------------------------
# Device


@functools.lru_cache(maxsize=1)
def hsv_tables() -> tuple[np.ndarray, np.ndarray]:
    """PIL's RGB -> HSV hue and saturation bytes, tabulated with PIL.

    ``hue[c * 65536 + a * 256 + b]``: the hue byte of a pixel whose first largest channel is ``c``
    (0 red, 1 green, 2 blue, tested in that order) and whose two other channels, in RGB order,
    lie ``a`` and ``b`` below the max.  ``sat[mx * 256 + cr]``: the saturation byte for a max
    ``mx`` and a range ``cr = max - min``.  Pillow's conversion depends on nothing else.
    """
    d = np.arange(256, dtype=np.uint8)
    a, b = np.meshgrid(d, d, indexing="ij")
    top = np.full_like(a, 255)
    triples = np.stack(
        [np.stack(ch, -1) for ch in ((top, 255 - a, 255 - b), (255 - a, top, 255 - b), (255 - a, 255 - b, top))]
    )
    hue = np.asarray(Image.fromarray(triples.reshape(3 * 256, 256, 3)).convert("HSV"))[..., 0].reshape(-1)
    mx, cr = a.astype(np.int32), b.astype(np.int32)
    mn = np.clip(mx - cr, 0, 255).astype(np.uint8)
    sat_in = np.stack([mx.astype(np.uint8), mn, mn], -1)
    sat = np.asarray(Image.fromarray(sat_in).convert("HSV"))[..., 1].reshape(-1)
    return np.ascontiguousarray(hue), np.ascontiguousarray(sat)


def rgb_to_hsv(rgb):
    """int32 ``(..., 3)`` RGB (0..255) -> int32 HSV bytes exactly as PIL's ``convert("HSV")`` (JAX)."""
    import jax.numpy as jnp  # lazy: the loader's workers import this module without JAX

    hue_t, sat_t = (jnp.asarray(t) for t in hsv_tables())
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = jnp.maximum(r, jnp.maximum(g, b))
    mn = jnp.minimum(r, jnp.minimum(g, b))
    dr, dg, db = mx - r, mx - g, mx - b
    case = jnp.where(dr == 0, 0, jnp.where(dg == 0, 1, 2))
    a = jnp.where(case == 0, dg, dr)
    b2 = jnp.where(case == 2, dg, db)
    h = jnp.take(hue_t, case * 65536 + a * 256 + b2, mode="clip").astype(jnp.int32)
    s = jnp.take(sat_t, mx * 256 + (mx - mn), mode="clip").astype(jnp.int32)
    return jnp.stack([h, s, mx], -1)


def hsv_to_rgb(hsv):
    """int32 ``(..., 3)`` HSV bytes -> int32 RGB exactly as PIL's ``convert("RGB")`` from HSV (JAX).

    Sector ``i = floor(6h / 255)`` and remainder ``f = (6h - 255 i) / 255``; the channels are
    ``v``, ``p = v (1 - s')``, ``q = v (1 - s' f)``, ``t = v (1 - s' (1 - f))`` with ``s' = s / 255``,
    rounded half away from zero -- computed here as exact integer fractions (never a tie)."""
    import jax.numpy as jnp  # lazy: the loader's workers import this module without JAX

    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = (6 * h) // 255
    j = 6 * h - 255 * i  # f = j / 255
    p = (2 * v * (255 - s) + 255) // 510
    q = (2 * v * (65025 - s * j) + 65025) // 130050
    t = (2 * v * (65025 - s * (255 - j)) + 65025) // 130050
    sector = i % 6
    chans = []
    for pattern in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q)):
        chans.append(jnp.select([sector == k for k in range(5)], list(pattern[:5]), pattern[5]))
    return jnp.stack(chans, -1)  # s == 0 gives p = q = t = v: grey, as PIL's special case


def _box_pass(x, axis: int, lo, hi, r, ww, fw, reach: int):
    """One extended-box pass of PIL's blur along ``axis`` of uint32 ``x`` (H, W, 3), clamping at the
    content edges ``lo`` .. ``hi - 1``; taps up to ``reach = max_box_radius + 1`` from the centre."""
    import jax.numpy as jnp  # lazy: the loader's workers import this module without JAX
    from jax import lax  # lazy: the loader's workers import this module without JAX

    n = x.shape[axis]
    pos = lax.broadcasted_iota(jnp.int32, x.shape, axis)
    first = lax.dynamic_index_in_dim(x, lo, axis, keepdims=True)
    last = lax.dynamic_index_in_dim(x, hi - 1, axis, keepdims=True)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (reach, reach)
    xp = jnp.pad(x, pad)

    def tap(k):  # x[clamp(pos + k, lo, hi - 1)] along axis
        shifted = lax.slice_in_dim(xp, reach + k, reach + k + n, axis=axis)
        if k < 0:
            return jnp.where(pos + k < lo, first, shifted)
        if k > 0:
            return jnp.where(pos + k >= hi, last, shifted)
        return shifted

    acc = ww * tap(0)
    for k in range(1, reach + 1):
        w = jnp.where(k <= r, ww, jnp.where(k == r + 1, fw, jnp.uint32(0)))
        acc = acc + w * (tap(-k) + tap(k))
    return (acc + jnp.uint32(_HALF)) >> jnp.uint32(24)


def _jitter_ops(x, mask, count, factors, hue_steps):
    """The four jitter ops on int32 (H, W, 3) pixel values -> the four int32 results."""
    import jax.numpy as jnp  # lazy: the loader's workers import this module without JAX

    def to_u8(y):
        return jnp.clip(jnp.round(y), 0, 255).astype(jnp.int32)  # round half to even, like np.rint

    from jax import lax  # lazy: the loader's workers import this module without JAX

    # A zero the compiler cannot know (count >= 1 at run time), for apart().
    unknown_zero = (count < 0).astype(jnp.uint32)

    def apart(p):  # a product that no FMA may fuse into the next addition (module doc)
        bits = lax.bitcast_convert_type(p, jnp.uint32) ^ unknown_zero
        return lax.bitcast_convert_type(bits, jnp.float32)

    xf = x.astype(jnp.float32)
    w = jnp.asarray(GRAY)
    bright = to_u8(xf * factors[0])
    # Contrast mean over the content: exact integer channel sums (contrast_mean_host), so any
    # order of the pixels (a flipped canvas too) gives the same mean.
    sums = jnp.sum(jnp.where(mask[..., None], x, 0), axis=(0, 1)).astype(jnp.float32)
    m = (apart(sums[0] * w[0]) + apart(sums[1] * w[1]) + apart(sums[2] * w[2])) / count
    contrast = to_u8(apart((xf - m) * factors[1]) + m)
    gray = (apart(xf[..., 0] * w[0]) + apart(xf[..., 1] * w[1]) + apart(xf[..., 2] * w[2]))[..., None]  # gray_host
    saturation = to_u8(apart((xf - gray) * factors[2]) + gray)
    hsv = rgb_to_hsv(x)
    hue = hsv_to_rgb(hsv.at[..., 0].set((hsv[..., 0] + hue_steps) & 255))
    return bright, contrast, saturation, hue


def _apply_one(img, p, box, reach: int):
    import jax.numpy as jnp  # lazy: the loader's workers import this module without JAX
    from jax import lax  # lazy: the loader's workers import this module without JAX

    y0, x0, y1, x1 = box[0], box[1], box[2], box[3]
    hh, ww_ = img.shape[0], img.shape[1]
    rows = lax.broadcasted_iota(jnp.int32, (hh, ww_), 0)
    cols = lax.broadcasted_iota(jnp.int32, (hh, ww_), 1)
    mask = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    count = jnp.maximum((y1 - y0) * (x1 - x0), 1).astype(jnp.float32)

    x = img.astype(jnp.uint32)
    r, ww, fw = p["box_radius"], p["box_ww"].astype(jnp.uint32), p["box_fw"].astype(jnp.uint32)
    # Loops rather than unrolled passes: XLA would otherwise fuse each pass into the next one's taps.
    x = lax.fori_loop(0, BLUR_PASSES, lambda _, x: _box_pass(x, 1, x0, x1, r, ww, fw, reach), x)
    x = lax.fori_loop(0, BLUR_PASSES, lambda _, x: _box_pass(x, 0, y0, y1, r, ww, fw, reach), x)
    x = x.astype(jnp.int32)
    factors = p["factors"].astype(jnp.float32)

    def step(s, x):  # a loop, not unrolled: its carry keeps XLA from fusing (recomputing) the chain of ops
        op = p["order"][s]
        results = _jitter_ops(x, mask, count, factors, p["hue_shift"])
        return jnp.select([op == k for k in range(NUM_OPS)], list(results), x)

    x = lax.fori_loop(0, NUM_OPS, step, x)
    return jnp.where(mask[..., None], x, 0).astype(jnp.uint8)


def apply_photometric(images, params: dict, content, *, max_box_radius: int):
    """Blur and jitter a uint8 ``(B, H, W, 3)`` batch on the device, as :func:`apply_photometric_host`
    does to each image's content.

    ``params``: :func:`draw_photometric`'s fields with a leading batch axis
    (:func:`stack_photometric`).  ``content``: int32 ``(B, 4)``, ``(y0, x0, y1, x1)`` of the image
    content in each canvas (:func:`content_box`; the rest is padding, returned as 0).
    ``max_box_radius`` (static): at least every ``params["box_radius"]``, e.g.
    :func:`max_box_radius` of the config (0 for the default blur radius U(0, 1)); a larger record's
    box would lose its outer taps, so concrete (numpy) parameters are checked.
    Jittable; returns uint8 ``(B, H, W, 3)``.
    """
    import jax  # lazy: the loader's workers import this module without JAX
    import jax.numpy as jnp  # lazy: the loader's workers import this module without JAX

    reach = int(max_box_radius) + 1
    box_r = params["box_radius"]
    if isinstance(box_r, np.ndarray | np.integer) and np.size(box_r) and int(np.max(box_r)) > reach - 1:
        raise ValueError(f"a record's box radius {int(np.max(box_r))} exceeds max_box_radius={max_box_radius}")
    keys = ("box_radius", "box_ww", "box_fw", "factors", "hue_shift", "order")
    p = {k: jnp.asarray(params[k]) for k in keys}
    fn = functools.partial(_apply_one, reach=reach)
    return jax.vmap(fn)(jnp.asarray(images), p, jnp.asarray(content, jnp.int32))


__all__ = [
    "BRIGHTNESS",
    "CONTRAST",
    "GRAY",
    "HUE",
    "NUM_OPS",
    "SATURATION",
    "apply_photometric",
    "apply_photometric_host",
    "box_blur_weights",
    "contrast_mean_host",
    "content_box",
    "draw_photometric",
    "gaussian_box_radius",
    "gray_host",
    "hsv_tables",
    "hsv_to_rgb",
    "hue_shift_host",
    "identity_photometric",
    "max_box_radius",
    "rgb_to_hsv",
    "stack_photometric",
    "to_uint8",
]
