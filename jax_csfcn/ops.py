"""PyTorch-matching primitives in JAX (NHWC).

Each function here reproduces one PyTorch op exactly (up to float rounding), because the
Flax model must compute the same function as the upstream PyTorch CSFCN:

* ``grid_sample``       == ``F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=True)``
  (``sample_displaced``: the same sampling at pixel displacements, for SFC)
* ``resize_bilinear``   == ``F.interpolate(mode="bilinear", align_corners=...)``, True (CSFCN's)
  by default, by size or by scale factor
* ``resize_nearest``    == ``F.interpolate(mode="nearest")``, by size or by scale factor
* ``adaptive_avg_pool`` == ``F.adaptive_avg_pool2d`` (floor/ceil bins, not ``jax.image``)
* ``pixel_shuffle``     == ``nn.PixelShuffle`` channel order, on the NHWC channel axis

The separable linear ops (resize, pooling) are written as two small dense contractions with
interpolation / averaging matrices built on the host: they are exact, differentiable without
scatter, and map onto matrix units (nearest resizing, a copy of whole pixels, is a gather).  They run under the ``interp`` named scope so that the
FLOP counter in :mod:`jax_csfcn.summary` can tell them from learned layers.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from csfcn.model_config import IMAGENET_MEAN, IMAGENET_STD

# Data-movement ops are tagged with this scope; the FLOP counter skips it.
INTERP_SCOPE = "interp"
_HIGHEST = jax.lax.Precision.HIGHEST


def _two_tap_matrix(src: np.ndarray, n_in: int, dtype) -> np.ndarray:
    """(n_out, n_in) linear interpolation weights at the float64 source coordinates ``src`` (>= 0).

    Output i reads pixels i0 = min(floor(src), n_in - 1) and i1 = min(i0 + 1, n_in - 1) with
    weights 1 - lam and lam, lam = src - i0 (both taps on the last pixel at the far edge), as
    PyTorch's linear upsampling kernels.  The larger of each row's two weights is rounded to
    ``dtype`` and the smaller one is ``1 - larger``, which is exact in ``dtype`` (the larger is in
    [0.5, 1]).  So every row sums to exactly one in the compute dtype and a constant map stays
    constant: rounding the two weights independently leaves rows that sum to 1 +- 1 ulp and
    scales every map by that much, a bias the fp32 result carries on top of the resize's own
    rounding.  The matrix is returned in float64 (exactly representable in ``dtype``).
    """
    n_out = len(src)
    m = np.zeros((n_out, n_in), np.float64)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    big = np.maximum(lam, 1.0 - lam).astype(dtype).astype(np.float64)
    small = 1.0 - big  # exact in dtype (Sterbenz)
    w1 = np.where(lam >= 0.5, big, small)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    return m


@functools.lru_cache(maxsize=256)
def _align_corners_matrix(n_in: int, n_out: int, dtype=np.float64) -> np.ndarray:
    """(n_out, n_in) bilinear weights of PyTorch's align_corners=True resize along one axis
    (see :func:`_two_tap_matrix` for the rounding)."""
    # torch: scale = (in - 1) / (out - 1), 0 when out == 1; src = scale * dst.
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return _two_tap_matrix(np.arange(n_out, dtype=np.float64) * scale, n_in, dtype)


@functools.lru_cache(maxsize=256)
def _half_pixel_matrix(n_in: int, n_out: int, scale_factor: float | None = None, dtype=np.float64) -> np.ndarray:
    """(n_out, n_in) bilinear weights of PyTorch's align_corners=False resize along one axis.

    Pixel centres are aligned: src = scale * (dst + 0.5) - 0.5, clamped at 0 (so the first
    output pixels of an upsampling copy the first input pixel), with scale = in / out, or
    1 / scale_factor when the call gave a scale factor (PyTorch keeps the factor, which differs
    from in / out when in * factor is not an integer).  Downsampling takes the same two taps,
    no averaging over the footprint (``antialias=False``).  An axis whose size does not change
    is copied, whatever the factor, as PyTorch does.
    """
    if n_out == n_in:
        return np.eye(n_in)
    scale = 1.0 / scale_factor if scale_factor else n_in / n_out
    src = scale * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5
    return _two_tap_matrix(np.maximum(src, 0.0), n_in, dtype)


@functools.lru_cache(maxsize=256)
def _nearest_index(n_in: int, n_out: int, scale_factor: float | None = None) -> np.ndarray:
    """Source index of every output position of PyTorch's mode="nearest" along one axis.

    floor(dst * scale) clipped to n_in - 1, with scale = in / out (or 1 / scale_factor) and
    both the scale and the product rounded to float32, as PyTorch computes them for every input
    dtype (so a product that float32 puts just below an integer takes the pixel before: 41 of
    82 outputs from 2 inputs reads pixel 0).  Equal sizes and exact doubling are special-cased
    (identity, dst // 2) as there.  Checked against PyTorch's CPU kernel for every size pair
    below 50 -> 130: all agree in float32, all but one (45 -> 129) in float64.
    """
    # int32 whatever the x64 mode: JAX caches the device copy of this (lru-cached) array, and an
    # int64 array converted under x32 would come back as int32 inside a later x64 trace.
    dst = np.arange(n_out, dtype=np.int32)
    if n_out == n_in:
        return dst
    if n_out == 2 * n_in:
        return dst // 2
    scale = np.float32(1.0 / scale_factor) if scale_factor else np.float32(n_in) / np.float32(n_out)
    src = np.floor(dst.astype(np.float32) * scale).astype(np.int32)
    return np.minimum(src, n_in - 1)


@functools.lru_cache(maxsize=256)
def _adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) averaging weights of PyTorch's adaptive pooling bins along one axis.

    Bin i spans [floor(i * L / n), ceil((i + 1) * L / n)); integer arithmetic as in ATen.
    """
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def at_least_f32(x: jax.Array) -> jax.Array:
    """Cast bf16/fp16 up to fp32 and leave fp32/fp64 alone (for statistics and coordinates)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _separable(x: jax.Array, mh: np.ndarray, mw: np.ndarray) -> jax.Array:
    """Apply (Ho, H) along height and (Wo, W) along width of an NHWC tensor."""
    with jax.named_scope(INTERP_SCOPE):
        mh = jnp.asarray(mh, x.dtype)
        mw = jnp.asarray(mw, x.dtype)
        y = jnp.einsum("ph,nhwc->npwc", mh, x, precision=_HIGHEST)
        return jnp.einsum("qw,npwc->npqc", mw, y, precision=_HIGHEST)


def _resize_args(
    x: jax.Array, size: tuple[int, int] | None, scale_factor: float | tuple[float, float] | None, op: str
) -> tuple[tuple[int, int], tuple[float | None, float | None]]:
    """Output (H, W) and per-axis scale factors of an ``F.interpolate`` call given ``size`` or
    ``scale_factor`` (exactly one): the size from a factor is floor(in * factor) in float64."""
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{op}: give exactly one of size and scale_factor")
    _, h, w, _ = x.shape
    if size is not None:
        return (int(size[0]), int(size[1])), (None, None)
    sh, sw = scale_factor if isinstance(scale_factor, tuple | list) else (scale_factor, scale_factor)
    sh, sw = float(sh), float(sw)
    if sh <= 0 or sw <= 0:
        raise ValueError(f"{op}: scale_factor must be positive, got {scale_factor}")
    return (math.floor(h * sh), math.floor(w * sw)), (sh, sw)


def resize_bilinear(
    x: jax.Array,
    size: tuple[int, int] | None = None,
    *,
    scale_factor: float | tuple[float, float] | None = None,
    align_corners: bool = True,
) -> jax.Array:
    """Bilinear resize of NHWC ``x`` as ``F.interpolate(x, size or scale_factor, mode="bilinear",
    align_corners=...)``.

    ``align_corners=True`` (CSFCN's) maps the corner pixel centres onto each other; ``False``
    aligns the pixel grids (:func:`_half_pixel_matrix`), and there a ``scale_factor`` call keeps
    PyTorch's source mapping 1 / factor (``recompute_scale_factor=True`` is a call by size).
    """
    (oh, ow), (sh, sw) = _resize_args(x, size, scale_factor, "resize_bilinear")
    _, h, w, _ = x.shape
    dt = np.dtype(x.dtype)
    if align_corners:
        if (oh, ow) == (h, w):
            return x
        return _separable(x, _align_corners_matrix(h, oh, dt), _align_corners_matrix(w, ow, dt))
    mh, mw = _half_pixel_matrix(h, oh, sh, dt), _half_pixel_matrix(w, ow, sw, dt)
    if (oh, ow) == (h, w) and np.array_equal(mh, np.eye(h)) and np.array_equal(mw, np.eye(w)):
        return x
    return _separable(x, mh, mw)


def resize_nearest(
    x: jax.Array, size: tuple[int, int] | None = None, *, scale_factor: float | tuple[float, float] | None = None
) -> jax.Array:
    """Nearest-neighbour resize of NHWC ``x`` as ``F.interpolate(x, size or scale_factor,
    mode="nearest")``: a gather of whole pixels (:func:`_nearest_index`), so the forward pass is
    bit-exact and the gradient sums the output gradients that each input pixel fed."""
    (oh, ow), (sh, sw) = _resize_args(x, size, scale_factor, "resize_nearest")
    _, h, w, _ = x.shape
    if (oh, ow) == (h, w):
        return x
    with jax.named_scope(INTERP_SCOPE):
        y = jnp.take(x, _nearest_index(h, oh, sh), axis=1) if oh != h else x
        return jnp.take(y, _nearest_index(w, ow, sw), axis=2) if ow != w else y


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Adaptive average pooling of NHWC ``x`` to ``size=(H, W)`` with PyTorch's bins."""
    _, h, w, _ = x.shape
    oh, ow = size
    return _separable(x, _adaptive_pool_matrix(h, oh), _adaptive_pool_matrix(w, ow))


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
    """NHWC pixel shuffle: ``out[n, r*y+i, r*x+j, k] = in[n, y, x, k*r*r + i*r + j]``."""
    n, h, w, c = x.shape
    if c % (r * r):
        raise ValueError(f"pixel_shuffle: channels {c} not divisible by r*r={r * r}")
    k = c // (r * r)
    x = x.reshape(n, h, w, k, r, r)
    x = x.transpose(0, 1, 4, 2, 5, 3)  # n, h, i, w, j, k
    return x.reshape(n, h * r, w * r, k)


def _bilinear_taps(x: jax.Array, x0: jax.Array, y0: jax.Array, wx: tuple, wy: tuple) -> jax.Array:
    """Bilinear taps of NHWC ``x`` around (x0, y0) with weights ``wx = (w(x0), w(x0 + 1))`` and
    ``wy`` alike, zero outside, as (N, P, C).  ``x0``/``y0`` hold integer-valued floats."""
    n, h, w, c = x.shape
    x1 = x0 + 1.0
    y1 = y0 + 1.0
    flat = x.reshape(n, h * w, c)

    def tap(xi, yi, weight):
        valid = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
        idx = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
        vals = jax.vmap(lambda f, i: f[i])(flat, idx.reshape(n, -1))
        weight = jnp.where(valid, weight, 0.0).reshape(n, -1, 1)
        return vals * weight.astype(x.dtype)

    return (
        tap(x0, y0, wx[0] * wy[0])
        + tap(x1, y0, wx[1] * wy[0])
        + tap(x0, y1, wx[0] * wy[1])
        + tap(x1, y1, wx[1] * wy[1])
    )


def grid_sample(x: jax.Array, grid: jax.Array) -> jax.Array:
    """Bilinear sampling of NHWC ``x`` at ``grid`` (N, Ho, Wo, 2) holding (x, y) in [-1, 1].

    Zero padding and ``align_corners=True``: normalised -1 / +1 are the centres of the first
    and last pixels.  Gradients flow to ``x`` and to ``grid`` as in PyTorch.
    """
    n, h, w, c = x.shape
    gn, oh, ow, two = grid.shape
    if gn != n or two != 2:
        raise ValueError(f"grid_sample: grid {grid.shape} does not match input {x.shape}")
    grid = at_least_f32(grid)  # coordinates in fp32 (or better) whatever the storage dtype
    ix = (grid[..., 0] + 1.0) / 2.0 * (w - 1)
    iy = (grid[..., 1] + 1.0) / 2.0 * (h - 1)
    # Far-away points contribute nothing; clipping them keeps the int cast in range and
    # leaves every point with a non-zero tap untouched (and so its gradient).
    ix = jnp.clip(ix, -2.0, w + 1.0)
    iy = jnp.clip(iy, -2.0, h + 1.0)
    x0 = jnp.floor(ix)
    y0 = jnp.floor(iy)
    out = _bilinear_taps(x, x0, y0, (x0 + 1.0 - ix, ix - x0), (y0 + 1.0 - iy, iy - y0))
    return out.reshape(n, oh, ow, c)


def sample_displaced(x: jax.Array, dx: jax.Array, dy: jax.Array) -> jax.Array:
    """Bilinear sampling of NHWC ``x`` at pixel (i + dy, j + dx) for every output (i, j).

    ``dx``/``dy`` (N, H, W) are displacements in pixels.  With ``dx = u * (W - 1) / (2 W)`` and
    ``dy = v * (H - 1) / (2 H)`` this is ``grid_sample(x, base_grid + (u / W, v / H))`` -- SFC's
    sampling -- computed without the normalised grid: the position is split into the integer
    j + floor(dx) and the fraction dx - floor(dx), both exact, so the bilinear weights keep the
    full precision of the displacement.  Going through the grid instead rounds the position to
    the precision of a coordinate near j (in fp32, ~1e-5 pixel on a 160-wide map, where an
    offset of a tenth of a pixel has 1e-8), and that rounding reaches the output multiplied by
    the feature differences between neighbouring pixels.
    """
    n, h, w, c = x.shape
    if dx.shape != (n, h, w) or dy.shape != (n, h, w):
        raise ValueError(f"sample_displaced: displacements {dx.shape}, {dy.shape} do not match input {x.shape}")
    dx = at_least_f32(dx)
    dy = at_least_f32(dy)
    # As in grid_sample, far-away points (no non-zero tap) are clipped to keep the int cast in range.
    dx = jnp.clip(dx, -(w + 2.0), w + 2.0)
    dy = jnp.clip(dy, -(h + 2.0), h + 2.0)
    fdx = jnp.floor(dx)
    fdy = jnp.floor(dy)
    cols = jnp.arange(w, dtype=dx.dtype)[None, None, :]
    rows = jnp.arange(h, dtype=dy.dtype)[None, :, None]
    wx = (fdx + 1.0 - dx, dx - fdx)  # both exact (but for dx in (-1, 0)), as in grid_sample
    wy = (fdy + 1.0 - dy, dy - fdy)
    out = _bilinear_taps(x, cols + fdx, rows + fdy, wx, wy)
    return out.reshape(n, h, w, c)


def pyramid_pool(x: jax.Array, grids: tuple[int, ...]) -> jax.Array:
    """CFC's pyramid pooling: NHWC ``x`` -> (N, S, C) over all bins of all grids.

    Grid g pools to (g, max(1, round(ar * g))) bins with ``ar = W / H`` (Python's round,
    halves to even), bins flattened row-major and grids concatenated in order.
    """
    n, h, w, c = x.shape
    ar = w / h
    pooled = []
    for g in grids:
        p = adaptive_avg_pool(x, (g, max(1, round(ar * g))))
        pooled.append(p.reshape(n, -1, c))
    return jnp.concatenate(pooled, axis=1)


def normalize_on_device(images: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8 NHWC RGB -> ImageNet-normalised ``dtype`` (runs inside the jitted steps)."""
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * 255.0
    std = jnp.asarray(IMAGENET_STD, jnp.float32) * 255.0
    return ((images.astype(jnp.float32) - mean) / std).astype(dtype)
