"""Segmentation losses: plain and OHEM (online hard example mining) cross-entropy, in JAX.

Both take ``logits`` NHWC (any float dtype; the softmax is always computed in fp32, so bf16
logits lose nothing beyond their own rounding) and ``labels`` NHW integers where
``ignore_index`` marks pixels that contribute nothing.

Everything is jit-compatible with static shapes: no boolean indexing, ignored or dropped
pixels are masked with ``jnp.where`` and the means divide by a count.

OHEM definition (the PIDNet/BiSeNet recipe, made exact)
-------------------------------------------------------
Over the whole batch, let ``V`` be the valid pixels (``label != ignore_index``), ``n = |V|``,
``ce_i = -log softmax(logits_i)[label_i]`` and ``p_i = exp(-ce_i)`` the predicted probability
of the true class.  Sort ``p`` over ``V`` ascending and let::

    k         = min(min_kept, n)
    threshold = max(thresh, p_sorted[k - 1])
    kept      = {i in V : p_i <= threshold}
    loss      = mean(ce_i for i in kept)        (0 when n == 0)

So easy pixels (``p > thresh``) are dropped, unless that would leave fewer than ``min_kept``
pixels, in which case the threshold rises to the ``min_kept``-th smallest probability.

Choices, and how they differ from the upstream PyTorch code
(``pred[min(min_kept, numel - 1)]`` and ``pred < threshold``):

* ``<=`` rather than ``<``, and index ``k - 1`` rather than ``min_kept``: the k-th hardest
  pixel itself is kept, so at least ``min(min_kept, n)`` pixels are always kept (ties can only
  add pixels).  Upstream keeps the same ``min_kept`` pixels when there are no ties, but with
  fewer than ``min_kept`` valid pixels it still drops the easiest one (if above ``thresh``),
  and when the ``min_kept + 1`` hardest probabilities all tie above ``thresh`` (a confident
  model saturating p to exactly 1.0 in fp32) it keeps nothing at all: a NaN loss.
* The threshold is a selection, not a function to differentiate: it is computed from
  ``stop_gradient(p)``, so the gradient is exactly that of the mean CE over the kept set.
* An all-ignored batch gives a loss of 0 (and zero gradients) instead of upstream's NaN from
  an empty mean: a crop that happens to be all void must not stop a run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["cross_entropy", "ohem_cross_entropy", "ohem_select", "pixel_nll"]


def pixel_nll(logits: jax.Array, labels: jax.Array, ignore_index: int = 255) -> tuple[jax.Array, jax.Array]:
    """Per-pixel negative log-likelihood (fp32, NHW) and the validity mask (NHW bool).

    Ignored pixels get a finite dummy value (the NLL of class 0), never NaN, so that
    ``jnp.where`` masking later also gives clean (zero) gradients for them.
    """
    if logits.ndim != labels.ndim + 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {logits.shape} must be labels {labels.shape} + (num_classes,)")
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    valid = labels != ignore_index
    # Gather with a safe index: 255 would be out of range of the class axis.
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return nll, valid


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    # max(count, 1): an empty mask gives 0 rather than 0/0.
    count = jnp.sum(mask, dtype=jnp.float32)
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(count, 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = 255) -> jax.Array:
    """Mean cross-entropy over the valid pixels of the batch (``torch.nn.functional.
    cross_entropy(..., ignore_index=ignore_index)``, except that an all-ignored batch gives 0
    instead of NaN)."""
    nll, valid = pixel_nll(logits, labels, ignore_index)
    return _masked_mean(nll, valid)


def ohem_select(
    logits: jax.Array,
    labels: jax.Array,
    *,
    thresh: float = 0.9,
    min_kept: int = 110000,
    ignore_index: int = 255,
) -> tuple[jax.Array, jax.Array]:
    """Per-pixel NLL (fp32, NHW) and the OHEM keep mask (NHW bool); see the module docstring.

    Exposed separately so that a train loop can log the kept fraction.  ``min_kept`` must be
    a Python int (it fixes the size of the top-k), ``thresh`` may be traced.
    """
    if min_kept < 1:
        raise ValueError(f"min_kept must be >= 1, got {min_kept}")
    nll, valid = pixel_nll(logits, labels, ignore_index)
    p = jax.lax.stop_gradient(jnp.exp(-nll))

    # k-th smallest p over the valid pixels of the whole batch.  Invalid pixels are +inf so
    # they sort last; top_k of -p returns the kk smallest p in ascending order.  kk is static
    # (never more than the number of pixels); the data-dependent k <= kk only picks the index.
    flat = jnp.where(valid, p, jnp.inf).reshape(-1)
    kk = min(min_kept, flat.shape[0])
    smallest = -jax.lax.top_k(-flat, kk)[0]
    n_valid = jnp.sum(valid, dtype=jnp.int32)
    k = jnp.minimum(min_kept, n_valid)
    # k == 0 (nothing valid) reads index 0 (+inf): harmless, since no pixel is valid to keep.
    kth = smallest[jnp.maximum(k - 1, 0)]
    threshold = jnp.maximum(jnp.asarray(thresh, jnp.float32), kth)
    keep = valid & (p <= threshold)
    return nll, keep


def ohem_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    thresh: float = 0.9,
    min_kept: int = 110000,
    ignore_index: int = 255,
    return_kept: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """OHEM cross-entropy: mean CE over the hard pixels of the batch (fp32 scalar).

    Pixels whose true-class probability exceeds ``thresh`` are dropped, unless fewer than
    ``min_kept`` valid pixels of the batch would remain; then the ``min(min_kept, n_valid)``
    hardest are kept.  Exact definition and the differences from upstream: module docstring.
    With ``return_kept``: ``(loss, fraction of the valid pixels kept)`` (the train step logs it).
    """
    nll, keep = ohem_select(logits, labels, thresh=thresh, min_kept=min_kept, ignore_index=ignore_index)
    loss = _masked_mean(nll, keep)
    if not return_kept:
        return loss
    n_valid = jnp.sum(labels != ignore_index, dtype=jnp.float32)
    return loss, jnp.sum(keep, dtype=jnp.float32) / jnp.maximum(n_valid, 1.0)
