"""Losses against independent PyTorch implementations of the same definitions.

The OHEM reference is written the direct way (boolean indexing, a full sort, float64), so it
shares nothing with the static-shape top-k version under test but the definition.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import nchw

from jax_csfcn.losses import cross_entropy, ohem_cross_entropy, ohem_select

IGNORE = 255


def ohem_reference(x, labels, thresh, min_kept, ignore_index=IGNORE):
    """Direct OHEM (module docstring of jax_csfcn.losses) on NCHW tensor ``x``: (loss, kept count)."""
    y = torch.tensor(np.asarray(labels, np.int64))
    ce = F.cross_entropy(x, y, ignore_index=ignore_index, reduction="none").reshape(-1)
    valid = (y != ignore_index).reshape(-1)
    n = int(valid.sum())
    if n == 0:
        return x.sum() * 0.0, 0
    ce_v = ce[valid]
    p = torch.exp(-ce_v.detach())
    threshold = max(thresh, float(torch.sort(p).values[min(min_kept, n) - 1]))
    kept = p <= threshold
    return ce_v[kept].mean(), int(kept.sum())


def ohem_ref64(logits, labels, thresh, min_kept):
    # float64 reference from NHWC numpy logits
    return ohem_reference(torch.tensor(nchw(np.asarray(logits, np.float64))), labels, thresh, min_kept)


def make_batch(rng, n, h, w, c, *, ignore_frac=0.1, confident_frac=0.0, scale=2.0):
    """Random logits and labels; ``confident_frac`` of the pixels get a large true-class logit
    so that their p is far above any thresh (the 'many easy pixels' case)."""
    logits = rng.standard_normal((n, h, w, c)).astype(np.float32) * scale
    labels = rng.integers(0, c, (n, h, w))
    confident = rng.random((n, h, w)) < confident_frac
    boost = np.zeros_like(logits)
    np.put_along_axis(boost, labels[..., None], rng.uniform(8.0, 14.0, (n, h, w, 1)).astype(np.float32), -1)
    logits = np.where(confident[..., None], logits + boost, logits).astype(np.float32)
    labels = np.where(rng.random((n, h, w)) < ignore_frac, IGNORE, labels).astype(np.int32)
    return logits, labels


def _ohem_jit(thresh, min_kept):
    return jax.jit(functools.partial(ohem_cross_entropy, thresh=thresh, min_kept=min_kept))


OHEM_CASES = {
    # name: (n, h, w, c, ignore_frac, confident_frac, thresh, min_kept)
    "typical_thresh_binds": (2, 37, 41, 19, 0.1, 0.3, 0.7, 200),
    "many_easy_min_kept_binds": (2, 23, 29, 19, 0.1, 0.9, 0.9, 400),
    "fewer_valid_than_min_kept": (2, 16, 16, 11, 0.8, 0.5, 0.9, 1000),
    "min_kept_exceeds_pixels": (1, 9, 13, 5, 0.0, 0.5, 0.6, 110000),
    "odd_shape_low_thresh": (3, 7, 5, 3, 0.3, 0.2, 0.3, 17),
}


@pytest.mark.parametrize("case", OHEM_CASES.keys())
def test_ohem_matches_reference(rng, case):
    n, h, w, c, ign, conf, thresh, min_kept = OHEM_CASES[case]
    logits, labels = make_batch(rng, n, h, w, c, ignore_frac=ign, confident_frac=conf)
    ref, ref_kept = ohem_ref64(logits, labels, thresh, min_kept)
    got = _ohem_jit(thresh, min_kept)(jnp.asarray(logits), jnp.asarray(labels))
    _, keep = ohem_select(jnp.asarray(logits), jnp.asarray(labels), thresh=thresh, min_kept=min_kept)
    assert got.dtype == jnp.float32
    assert int(keep.sum()) == ref_kept
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-5, atol=1e-6)

    n_valid = int((labels != IGNORE).sum())
    assert ref_kept >= min(min_kept, n_valid)  # the definition's guarantee
    if case in ("typical_thresh_binds", "odd_shape_low_thresh"):
        # thresh decides: easy pixels dropped, yet more than min_kept remain.
        assert min_kept < ref_kept < n_valid
    if case == "many_easy_min_kept_binds":
        # min_kept, not thresh, decides: exactly min_kept kept (no ties with random inputs).
        assert ref_kept == min_kept
    if case in ("fewer_valid_than_min_kept", "min_kept_exceeds_pixels"):
        # every valid pixel kept: OHEM degenerates to plain CE
        assert ref_kept == n_valid
        np.testing.assert_allclose(float(got), float(cross_entropy(logits, labels)), rtol=1e-6)


def test_ohem_gradient_matches_reference(rng):
    logits, labels = make_batch(rng, 2, 19, 23, 7, ignore_frac=0.2, confident_frac=0.6)
    thresh, min_kept = 0.8, 150
    x = torch.tensor(nchw(logits.astype(np.float64)), requires_grad=True)
    loss, _ = ohem_reference(x, labels, thresh, min_kept)
    (gref,) = torch.autograd.grad(loss, x)

    g = jax.jit(jax.grad(functools.partial(ohem_cross_entropy, thresh=thresh, min_kept=min_kept)))(
        jnp.asarray(logits), jnp.asarray(labels)
    )
    g = np.asarray(g)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(nchw(g), gref.numpy(), rtol=1e-4, atol=1e-7)


def test_ohem_all_ignored_is_zero_and_finite(rng):
    logits, _ = make_batch(rng, 2, 8, 9, 19)
    labels = np.full((2, 8, 9), IGNORE, np.int32)
    fn = functools.partial(ohem_cross_entropy, thresh=0.9, min_kept=50)
    loss, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(logits), jnp.asarray(labels))
    assert float(loss) == 0.0
    assert np.all(np.asarray(grad) == 0.0)
    assert float(cross_entropy(jnp.asarray(logits), jnp.asarray(labels))) == 0.0


def test_ohem_bf16_logits(rng):
    logits, labels = make_batch(rng, 2, 21, 17, 19, ignore_frac=0.1, confident_frac=0.5)
    lb = jnp.asarray(logits, jnp.bfloat16)
    thresh, min_kept = 0.85, 300
    # The reference sees the same bf16-rounded values; the loss is computed in fp32.
    ref, ref_kept = ohem_ref64(np.asarray(lb.astype(jnp.float32)), labels, thresh, min_kept)
    loss, grad = jax.value_and_grad(_ohem_jit(thresh, min_kept))(lb, jnp.asarray(labels))
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
    assert grad.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grad)))


def test_ohem_default_args_jit(rng):
    # The recipe defaults (min_kept = 110000) on a batch far smaller than that: all kept.
    logits, labels = make_batch(rng, 2, 32, 48, 19, confident_frac=0.5)
    got = jax.jit(ohem_cross_entropy)(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(float(got), float(ohem_ref64(logits, labels, 0.9, 110000)[0]), rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_cross_entropy_matches_torch(rng, dtype):
    logits, labels = make_batch(rng, 3, 13, 11, 19, ignore_frac=0.25)
    x = jnp.asarray(logits, dtype)
    ref = F.cross_entropy(
        torch.tensor(nchw(np.asarray(x.astype(jnp.float32)))),
        torch.tensor(labels.astype(np.int64)),
        ignore_index=IGNORE,
    )
    got = jax.jit(cross_entropy)(x, jnp.asarray(labels))
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)


def test_shape_mismatch_is_an_error(rng):
    with pytest.raises(ValueError, match="num_classes"):
        cross_entropy(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 5), jnp.int32))
