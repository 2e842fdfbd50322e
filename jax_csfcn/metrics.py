"""Segmentation metrics from a confusion matrix accumulated over a whole split.

The mIoU of a split is computed from one confusion matrix summed over every image of the
split, never as an average of per-batch mIoUs (which the upstream training logs report and
which weights small batches and rare classes differently).  The matrix is counted on device
(:func:`confusion_matrix`, jit-able) and only the final ``K x K`` counts come to the host for
:func:`scores`.

Rows are ground truth, columns are predictions: ``conf[g, p]`` = number of valid pixels with
label ``g`` predicted as ``p``.  The numbers agree with the official ``cityscapesscripts``
pixel-level evaluator on the same predictions (``tests/test_metrics.py`` checks it), because
the definitions are the same:

* pixels whose ground truth is ignored (``ignore_index``, i.e. every Cityscapes id with
  ``ignoreInEval``) are not counted at all, neither as false positives nor negatives;
* ``IoU_c = TP / (TP + FP + FN)``; a class with no ground-truth pixel and no prediction has
  ``0 / 0`` and its IoU is NaN (cityscapesscripts: ``denom == 0 -> nan``).  A class that is
  only predicted, or only in the ground truth, has IoU 0;
* mIoU is the mean over the non-NaN classes (cityscapesscripts ``getScoreAverage``), so a
  class absent from both a split's labels and its predictions neither helps nor hurts.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["confusion_matrix", "scores"]


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_index"))
def confusion_matrix(pred: jax.Array, label: jax.Array, num_classes: int, ignore_index: int = 255) -> jax.Array:
    """``(K, K)`` counts of (label, prediction) pairs over the valid pixels of a batch.

    ``pred`` and ``label`` are integer maps of the same shape (any rank, e.g. NHW); ``pred``
    holds class indices in ``[0, K)`` (an argmax).  A pixel is valid when its label is in
    ``[0, K)`` and is not ``ignore_index``.

    Counts are int32 (int64 under ``jax_enable_x64``): sum the per-batch matrices on device
    across the split.  int32 holds 2**31 - 1 pixels per cell, i.e. about 1000 full-resolution
    (1024 x 2048) Cityscapes images of a single class, twice the val split; for larger splits
    add the device matrix into a host int64 array every few hundred images.
    """
    if pred.shape != label.shape:
        raise ValueError(f"pred {pred.shape} and label {label.shape} differ in shape")
    k = num_classes
    label = label.astype(jnp.int32)
    pred = pred.astype(jnp.int32)
    valid = (label != ignore_index) & (label >= 0) & (label < k)
    # One histogram of label * K + pred; invalid pixels get index 0 and weight 0, so the
    # shape stays static and nothing is boolean-indexed.
    index = jnp.where(valid, label * k + pred, 0).reshape(-1)
    counts_dtype = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
    weights = valid.reshape(-1).astype(counts_dtype)
    counts = jnp.bincount(index, weights=weights, length=k * k)
    return counts.reshape(k, k).astype(counts_dtype)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # NaN where the denominator is 0 (cityscapesscripts' convention), without a warning.
    out = np.full(num.shape, np.nan, np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(x: np.ndarray) -> float:
    # All-NaN (e.g. an empty split) gives NaN without numpy's "Mean of empty slice" warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(x)) if np.any(~np.isnan(x)) else float("nan")


def scores(conf) -> dict:
    """Scores of a ``(K, K)`` confusion matrix (rows = ground truth, columns = prediction).

    Returns a dict of

    * ``iou``: per-class IoU, ``(K,)`` float64, NaN for classes absent from both ground truth
      and prediction;
    * ``miou``: mean of the non-NaN IoUs (NaN if all are NaN);
    * ``pixel_acc``: correctly predicted valid pixels / valid pixels;
    * ``class_acc``: per-class recall ``TP / (TP + FN)``, NaN for classes without ground truth;
    * ``mean_class_acc``: mean of the non-NaN class accuracies;
    * ``num_pixels``: number of valid pixels counted.
    """
    conf = np.asarray(jax.device_get(conf)).astype(np.int64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {conf.shape}")
    tp = np.diag(conf).astype(np.float64)
    gt = conf.sum(axis=1).astype(np.float64)  # TP + FN
    predicted = conf.sum(axis=0).astype(np.float64)  # TP + FP
    iou = _safe_divide(tp, gt + predicted - tp)
    class_acc = _safe_divide(tp, gt)
    total = conf.sum()
    return {
        "iou": iou,
        "miou": _nanmean(iou),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "class_acc": class_acc,
        "mean_class_acc": _nanmean(class_acc),
        "num_pixels": int(total),
    }
