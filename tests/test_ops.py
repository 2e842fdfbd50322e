"""Each JAX primitive against the PyTorch op it mirrors: forward and gradients, fp32."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import nchw, nhwc, rel_l2

from jax_csfcn import ops

TOL = 1e-5


def _vjp_jax(fn, *args, cot):
    out, vjp = jax.vjp(fn, *map(jnp.asarray, args))
    return np.asarray(out), [np.asarray(g) for g in vjp(jnp.asarray(cot))]


GRID_CASES = [
    # (N, C, H, W, Ho, Wo, spread): spread > 1 puts samples outside the map
    (1, 3, 5, 7, 5, 7, 1.0),
    (2, 4, 13, 9, 6, 11, 1.5),
    (3, 8, 37, 41, 37, 41, 1.2),
    (4, 64, 16, 32, 16, 32, 1.0),
    (2, 5, 1, 9, 3, 4, 2.0),
    (2, 6, 8, 1, 5, 2, 3.0),
]


@pytest.mark.parametrize("n,c,h,w,oh,ow,spread", GRID_CASES)
def test_grid_sample_matches_torch(rng, n, c, h, w, oh, ow, spread):
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    grid = rng.uniform(-spread, spread, (n, oh, ow, 2)).astype(np.float32)
    cot = rng.standard_normal((n, oh, ow, c)).astype(np.float32)

    out, (gx, gg) = _vjp_jax(ops.grid_sample, x, grid, cot=cot)

    xt = torch.from_numpy(nchw(x)).requires_grad_()
    gt = torch.from_numpy(grid).requires_grad_()
    ref = F.grid_sample(xt, gt, mode="bilinear", padding_mode="zeros", align_corners=True)
    ref.backward(torch.from_numpy(nchw(cot)))
    assert rel_l2(out, nhwc(ref.detach())) <= TOL
    assert rel_l2(gx, nhwc(xt.grad)) <= TOL
    assert rel_l2(gg, gt.grad) <= TOL


def test_grid_sample_exact_borders_and_far_outside(rng):
    """Samples exactly on the corners/edges, just outside, and very far away."""
    n, h, w, c = 2, 6, 9, 3
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    pts = np.array([-1.0, 1.0, 0.0, -1.0 - 1e-3, 1.0 + 1e-3, 1.0 + 2.0 / (w - 1), -1.3, 50.0, -1e9, 1e9], np.float32)
    gx, gy = np.meshgrid(pts, pts)
    grid = np.broadcast_to(np.stack([gx, gy], -1), (n, *gx.shape, 2)).copy()
    out = np.asarray(ops.grid_sample(jnp.asarray(x), jnp.asarray(grid)))
    ref = F.grid_sample(torch.from_numpy(nchw(x)), torch.from_numpy(grid), align_corners=True)
    np.testing.assert_allclose(out, nhwc(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,c,h,w,spread", [(1, 4, 47, 156, 0.5), (2, 2, 1, 7, 3.0)])
def test_sample_displaced_is_grid_sample_at_the_displaced_base_grid(rng, n, c, h, w, spread):
    """SFC's sampling: at displacement (u, v) * ((W - 1) / 2W, (H - 1) / 2H) it is grid_sample at
    base grid + (u / W, v / H) (fp64, forward and gradients), and in fp32 it is closer to that
    fp64 result than the grid arithmetic is."""
    x = rng.standard_normal((n, h, w, c))
    off = rng.uniform(-spread, spread, (n, h, w, 2)) * np.array([w, h]) / 4
    off[0, 0, 0] = 0.0  # exact pixel centres and a far-away point
    off[-1, -1, -1] = (1e6, -1e6)
    cot = rng.standard_normal((n, h, w, c))
    to_pixels = np.array([(w - 1) / (2 * w), (h - 1) / (2 * h)])

    @jax.jit
    def displaced(a, o):
        d = o * jnp.asarray(to_pixels, o.dtype)
        return ops.sample_displaced(a, d[..., 0], d[..., 1])

    @jax.jit
    def via_grid(a, o):
        ys, xs = jnp.linspace(-1.0, 1.0, h, dtype=o.dtype), jnp.linspace(-1.0, 1.0, w, dtype=o.dtype)
        grid = jnp.stack(jnp.broadcast_arrays(xs[None, :], ys[:, None]), axis=-1)
        return ops.grid_sample(a, grid + o / jnp.asarray([w, h], o.dtype))

    with jax.enable_x64(True):
        out, grads = _vjp_jax(displaced, x, off, cot=cot)
        ref, ref_grads = _vjp_jax(via_grid, x, off, cot=cot)
        assert rel_l2(out, ref) <= 1e-12
        for g, r in zip(grads, ref_grads):
            np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-9)
    x32, off32 = jnp.asarray(x, jnp.float32), jnp.asarray(off, jnp.float32)
    with jax.enable_x64(True):  # the fp64 result of the fp32 inputs
        truth = np.asarray(via_grid(jnp.asarray(x32, jnp.float64), jnp.asarray(off32, jnp.float64)))
    assert rel_l2(displaced(x32, off32), truth) <= rel_l2(via_grid(x32, off32), truth) + 1e-7


RESIZE_CASES = [
    (1, 4, 4, 16, 16),
    (2, 3, 5, 12, 19),
    (1, 7, 3, 1, 9),
    (3, 2, 32, 64, 128),
    (2, 12, 15, 45, 60),
    (1, 9, 1, 5, 5),
]


@pytest.mark.parametrize("n,h,w,oh,ow", RESIZE_CASES)
def test_resize_bilinear_align_corners_matches_torch(rng, n, h, w, oh, ow):
    c = 5
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    cot = rng.standard_normal((n, oh, ow, c)).astype(np.float32)
    out, (gx,) = _vjp_jax(lambda a: ops.resize_bilinear(a, (oh, ow)), x, cot=cot)
    xt = torch.from_numpy(nchw(x)).requires_grad_()
    ref = F.interpolate(xt, (oh, ow), mode="bilinear", align_corners=True)
    ref.backward(torch.from_numpy(nchw(cot)))
    assert rel_l2(out, nhwc(ref.detach())) <= TOL
    assert rel_l2(gx, nhwc(xt.grad)) <= TOL


def test_resize_by_scale_factor_matches_torch(rng):
    """The Tiny head upsamples with scale_factor=8: same mapping as the explicit size."""
    x = rng.standard_normal((2, 11, 7, 3)).astype(np.float32)
    out = ops.resize_bilinear(jnp.asarray(x), (88, 56))
    ref = F.interpolate(torch.from_numpy(nchw(x)), scale_factor=8, mode="bilinear", align_corners=True)
    assert rel_l2(out, nhwc(ref)) <= TOL


@pytest.mark.parametrize("matrix", [ops._align_corners_matrix, ops._half_pixel_matrix])
@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16, np.float64])
@pytest.mark.parametrize("n_in,n_out", [(47, 376), (12, 45), (45, 12), (2, 7), (9, 1), (7, 10)])
def test_resize_weights_sum_to_one_in_the_compute_dtype(matrix, dtype, n_in, n_out):
    """Every row of the interpolation matrix is exactly representable in the compute dtype
    and sums to exactly one there, so a resize does not scale the map by 1 +- 1 ulp."""
    m = matrix(n_in, n_out, dtype=np.dtype(dtype))
    np.testing.assert_array_equal(m.astype(dtype).astype(np.float64), m)
    np.testing.assert_array_equal(m.sum(axis=1), 1.0)
    exact = matrix(n_in, n_out)  # float64 weights
    ulp = float(jnp.finfo(dtype).eps)
    assert np.abs(m - exact).max() <= ulp / 2


# (N, H, W, call): call is F.interpolate's size or scale factor; odd sizes, up and down,
# non-integer ratios, a one-pixel axis, and factors whose product with the size is not an
# integer (PyTorch then maps with 1 / factor, not in / out).
HALF_PIXEL_CASES = [
    (2, 5, 7, {"size": (12, 19)}),
    (1, 13, 11, {"size": (5, 4)}),
    (1, 1, 6, {"size": (3, 2)}),
    (1, 5, 7, {"scale_factor": 1.5}),
    (1, 3, 9, {"scale_factor": (1.2, 0.3)}),  # H keeps its size: copied, whatever the factor
]


@pytest.mark.parametrize("n,h,w,call", HALF_PIXEL_CASES)
def test_resize_bilinear_half_pixel_matches_torch(rng, n, h, w, call):
    """align_corners=False, forward and gradient, fp64."""
    c = 3
    x = rng.standard_normal((n, h, w, c))
    xt = torch.from_numpy(nchw(x)).requires_grad_()
    ref = F.interpolate(xt, mode="bilinear", align_corners=False, **call)
    cot = rng.standard_normal(nhwc(ref.detach()).shape)
    ref.backward(torch.from_numpy(nchw(cot)))
    with jax.enable_x64(True):
        out, (gx,) = _vjp_jax(lambda a: ops.resize_bilinear(a, align_corners=False, **call), x, cot=cot)
    assert out.shape == nhwc(ref.detach()).shape
    np.testing.assert_allclose(out, nhwc(ref.detach()), rtol=0, atol=1e-12)
    np.testing.assert_allclose(gx, nhwc(xt.grad), rtol=0, atol=1e-12)


# exact doubling, odd up and down ratios, 2 -> 82 (41 * float32(2 / 82) < 1: PyTorch reads
# pixel 0 where the exact ratio says 1), factors
NEAREST_CASES = [
    (2, 4, 3, {"size": (8, 7)}),
    (1, 2, 13, {"size": (82, 5)}),
    (1, 5, 11, {"scale_factor": (1.5, 0.3)}),
]


@pytest.mark.parametrize("n,h,w,call", NEAREST_CASES)
def test_resize_nearest_matches_torch(rng, n, h, w, call):
    """mode="nearest": the forward pass copies the same pixels (bit-exact), the gradient sums
    alike; fp64."""
    c = 2
    x = rng.standard_normal((n, h, w, c))
    xt = torch.from_numpy(nchw(x)).requires_grad_()
    ref = F.interpolate(xt, mode="nearest", **call)
    cot = rng.standard_normal(nhwc(ref.detach()).shape)
    ref.backward(torch.from_numpy(nchw(cot)))
    with jax.enable_x64(True):
        out, (gx,) = _vjp_jax(lambda a: ops.resize_nearest(a, **call), x, cot=cot)
    np.testing.assert_array_equal(out, nhwc(ref.detach()))
    np.testing.assert_allclose(gx, nhwc(xt.grad), rtol=0, atol=1e-12)


def test_nearest_index_rounds_as_torch_in_float32():
    """The source index of every output, for many size pairs, as PyTorch's fp32 kernel picks it."""
    for n_in in (2, 3, 7, 45):
        t = torch.arange(n_in, dtype=torch.float32).view(1, 1, 1, n_in)
        for n_out in range(1, 131):
            ref = F.interpolate(t, (1, n_out), mode="nearest").view(-1).numpy()
            np.testing.assert_array_equal(ops._nearest_index(n_in, n_out), ref, err_msg=f"{n_in} -> {n_out}")


def _float64_picks_other_pixels(n_in: int, n_out: int, scale: float) -> bool:
    """Whether floor(dst * scale) in float64 picks other source pixels than PyTorch's float32."""
    dst = np.arange(n_out)
    f32 = np.floor(dst.astype(np.float32) * np.float32(scale))
    f64 = np.floor(dst * np.float64(scale))
    return not np.array_equal(np.minimum(f32, n_in - 1), np.minimum(f64, n_in - 1))


def test_resize_nearest_matches_torch_where_float64_picks_other_pixels(rng):
    """Sizes and scale factors where a float64 scale (in / out, or 1 / factor) reads other pixels
    than PyTorch's float32 one, found by search: the JAX resize must copy PyTorch's, exactly."""
    by_size = [(i, o) for i in range(3, 40) for o in range(1, 100) if o not in (i, 2 * i)]
    by_size = [(i, o) for i, o in by_size if _float64_picks_other_pixels(i, o, i / o)]
    by_factor = [(i, f) for f in (k / 20 for k in range(2, 60)) for i in range(3, 40)]
    by_factor = [(i, f) for i, f in by_factor if math.floor(i * f) not in (i, 2 * i)]
    by_factor = [(i, f) for i, f in by_factor if _float64_picks_other_pixels(i, math.floor(i * f), 1 / f)]
    assert len(by_size) >= 4 and len(by_factor) >= 4, "the search found too few sizes where float64 differs"

    def picks(found):
        return [found[j] for j in rng.choice(len(found), 4, replace=False)]

    cases = [((h, w), {"size": (oh, ow)}) for (h, oh), (w, ow) in zip(picks(by_size), picks(by_size))]
    cases += [((h, w), {"scale_factor": (fh, fw)}) for (h, fh), (w, fw) in zip(picks(by_factor), picks(by_factor))]
    for (h, w), call in cases:
        x = rng.standard_normal((1, h, w, 2)).astype(np.float32)
        ref = nhwc(F.interpolate(torch.from_numpy(nchw(x)), mode="nearest", **call))
        out = np.asarray(ops.resize_nearest(jnp.asarray(x), **call))
        np.testing.assert_array_equal(out, ref, err_msg=f"nearest resize of {(h, w)} by {call} differs from PyTorch")


def test_resize_takes_size_or_scale_factor():
    x = jnp.zeros((1, 4, 4, 1))
    for resize in (ops.resize_bilinear, ops.resize_nearest):
        with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
            resize(x, (2, 2), scale_factor=0.5)
        with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
            resize(x)
        with pytest.raises(ValueError, match="must be positive"):
            resize(x, scale_factor=(1.0, 0.0))
    assert ops.resize_bilinear(x, scale_factor=2.0).shape == (1, 8, 8, 1)  # align_corners=True: the size only


POOL_CASES = [
    (32, 64, 6, 12),
    (12, 15, 6, 8),
    (7, 5, 3, 2),
    (23, 30, 2, 3),
    (11, 13, 6, 7),
    (5, 5, 1, 1),
    (3, 4, 6, 12),
]


@pytest.mark.parametrize("h,w,oh,ow", POOL_CASES)
def test_adaptive_avg_pool_matches_torch(rng, h, w, oh, ow):
    n, c = 2, 4
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    cot = rng.standard_normal((n, oh, ow, c)).astype(np.float32)
    out, (gx,) = _vjp_jax(lambda a: ops.adaptive_avg_pool(a, (oh, ow)), x, cot=cot)
    xt = torch.from_numpy(nchw(x)).requires_grad_()
    ref = F.adaptive_avg_pool2d(xt, (oh, ow))
    ref.backward(torch.from_numpy(nchw(cot)))
    assert rel_l2(out, nhwc(ref.detach())) <= TOL
    assert rel_l2(gx, nhwc(xt.grad)) <= TOL


@pytest.mark.parametrize("h,w", [(32, 64), (12, 15), (45, 60), (7, 7), (1, 3)])
def test_pyramid_pool_bins_match_upstream_psp(rng, h, w):
    from torch_deploy.model import pyramid_pool

    x = rng.standard_normal((2, h, w, 6)).astype(np.float32)
    out = np.asarray(ops.pyramid_pool(jnp.asarray(x), (6, 3, 2, 1)))
    ref = pyramid_pool(torch.from_numpy(nchw(x))).permute(0, 2, 1).numpy()
    assert out.shape == ref.shape
    assert rel_l2(out, ref) <= TOL


@pytest.mark.parametrize("n,h,w,k,r", [(1, 2, 3, 1, 8), (2, 5, 4, 19, 8), (1, 3, 7, 11, 8), (3, 4, 4, 2, 2)])
def test_pixel_shuffle_matches_torch(rng, n, h, w, k, r):
    x = rng.standard_normal((n, h, w, k * r * r)).astype(np.float32)
    cot = rng.standard_normal((n, h * r, w * r, k)).astype(np.float32)
    out, (gx,) = _vjp_jax(lambda a: ops.pixel_shuffle(a, r), x, cot=cot)
    xt = torch.from_numpy(nchw(x)).requires_grad_()
    ref = F.pixel_shuffle(xt, r)
    ref.backward(torch.from_numpy(nchw(cot)))
    np.testing.assert_array_equal(out, nhwc(ref.detach()))  # a permutation: bit-exact
    np.testing.assert_array_equal(gx, nhwc(xt.grad))


def test_pixel_shuffle_rejects_bad_channels():
    with pytest.raises(ValueError, match="not divisible"):
        ops.pixel_shuffle(jnp.zeros((1, 2, 2, 10)), 8)
