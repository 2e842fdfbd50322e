"""Confusion matrix and scores against the official cityscapesscripts pixel-level evaluator.

The same predictions go both ways: as train-id arrays into ``confusion_matrix``/``scores``,
and as Cityscapes labelId PNGs (train ids mapped back with the official label table) into
``evalPixelLevelSemanticLabeling.evaluateImgLists``.
"""

from __future__ import annotations

import copy
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as cs_labels
from cityscapesscripts.helpers.labels import trainId2label
from PIL import Image

from jax_csfcn.metrics import confusion_matrix, scores

K = 19
IGNORE = 255
# labelIds that the evaluator ignores (all map to train id 255): void, ego vehicle, ...
IGNORED_IDS = np.array([lab.id for lab in cs_labels if lab.ignoreInEval and lab.id >= 0])
TRAIN_TO_ID = np.array([trainId2label[t].id for t in range(K)])

ABSENT = 16  # train: in neither ground truth nor prediction -> NaN IoU
ONLY_PRED = 17  # motorcycle: predicted, never in ground truth -> IoU 0
ONLY_GT = 18  # bicycle: in ground truth, never predicted -> IoU 0
SIZES = [(37, 53), (20, 31), (48, 40)]


def make_pair(rng, h, w):
    """Ground truth (train ids, 255 = ignore) and a prediction that is right ~60% of the time."""
    present = np.setdiff1d(np.arange(K), [ABSENT, ONLY_PRED])
    gt = rng.choice(present, (h, w))
    gt[rng.random((h, w)) < 0.15] = IGNORE
    predictable = np.setdiff1d(np.arange(K), [ABSENT, ONLY_GT])
    pred = np.where(rng.random((h, w)) < 0.6, gt, rng.choice(predictable, (h, w)))
    pred = np.where((pred == IGNORE) | (pred == ONLY_GT), rng.choice(predictable, (h, w)), pred)
    return gt.astype(np.int32), pred.astype(np.int32)


def to_label_ids(rng, train_ids):
    # Ignored pixels become a random ignoreInEval labelId, so the evaluator sees several.
    ids = TRAIN_TO_ID[np.where(train_ids == IGNORE, 0, train_ids)]
    ids = np.where(train_ids == IGNORE, rng.choice(IGNORED_IDS, train_ids.shape), ids)
    return ids.astype(np.uint8)


def run_official_evaluator(pred_files, gt_files, monkeypatch, tmp_path):
    """cityscapesscripts' evaluator called as a library: pixel IoU only, no JSON, no output."""
    # Its module reads CITYSCAPES_DATASET at import (only to build default paths).
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    args = copy.copy(ev.args)  # the module-global args object: copy rather than mutate
    args.evalInstLevelScore = False  # instance-weighted iIoU needs *_instanceIds.png files
    args.evalPixelAccuracy = False  # its per-image accuracy bookkeeping is not used here
    args.JSONOutput = False  # otherwise writes resultPixelLevelSemanticLabeling.json
    args.quiet = True
    args.colorized = False
    return ev.evaluateImgLists(pred_files, gt_files, args)


def test_miou_matches_cityscapesscripts(rng, tmp_path, monkeypatch):
    conf = jnp.zeros((K, K), jnp.int32)
    pred_files, gt_files, gts, preds = [], [], [], []
    for i, (h, w) in enumerate(SIZES):
        gt, pred = make_pair(rng, h, w)
        gts.append(gt)
        preds.append(pred)
        # Names as the evaluator would find them (<city>_<seq>_<frame>_...); only pairing matters.
        gt_files.append(str(tmp_path / f"aachen_{i:06d}_000019_gtFine_labelIds.png"))
        pred_files.append(str(tmp_path / f"aachen_{i:06d}_000019_pred.png"))
        Image.fromarray(to_label_ids(rng, gt)).save(gt_files[-1])
        Image.fromarray(TRAIN_TO_ID[pred].astype(np.uint8)).save(pred_files[-1])
        # accumulated across the split, one image (batch of 1) at a time
        conf = conf + confusion_matrix(jnp.asarray(pred[None]), jnp.asarray(gt[None]), K)

    official = run_official_evaluator(pred_files, gt_files, monkeypatch, tmp_path)
    ours = scores(conf)

    # The whole matrix, restricted to the 19 evaluated labelIds, is identical.
    their_conf = np.asarray(official["confMatrix"], np.int64)
    np.testing.assert_array_equal(np.asarray(conf), their_conf[np.ix_(TRAIN_TO_ID, TRAIN_TO_ID)])

    their_iou = np.array([official["classScores"][trainId2label[t].name] for t in range(K)])
    assert np.isnan(their_iou[ABSENT]) and np.isnan(ours["iou"][ABSENT])
    assert ours["iou"][ONLY_PRED] == 0.0 and ours["iou"][ONLY_GT] == 0.0
    np.testing.assert_allclose(ours["iou"], their_iou, rtol=0, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(ours["miou"], official["averageScoreClasses"], rtol=0, atol=1e-6)

    # Accuracies against a direct computation on the flattened split.
    gt_all = np.concatenate([g.ravel() for g in gts])
    pred_all = np.concatenate([p.ravel() for p in preds])
    valid = gt_all != IGNORE
    assert ours["num_pixels"] == valid.sum()
    np.testing.assert_allclose(ours["pixel_acc"], np.mean(pred_all[valid] == gt_all[valid]), rtol=1e-12)
    recall = [np.mean(pred_all[valid & (gt_all == c)] == c) for c in range(K) if np.any(valid & (gt_all == c))]
    np.testing.assert_allclose(ours["mean_class_acc"], np.mean(recall), rtol=1e-12)
    assert np.isnan(ours["class_acc"][ONLY_PRED])


def test_confusion_matrix_batch_equals_sum_of_images(rng):
    gt, pred = zip(*(make_pair(rng, 29, 33) for _ in range(4)))
    gt, pred = np.stack(gt), np.stack(pred)
    gt[0, :5] = 200  # an out-of-range label is not counted either
    batch = confusion_matrix(jnp.asarray(pred), jnp.asarray(gt), K)
    per_image = sum(np.asarray(confusion_matrix(jnp.asarray(p), jnp.asarray(g), K)) for p, g in zip(pred, gt))
    assert batch.dtype == jnp.int32 and batch.shape == (K, K)
    np.testing.assert_array_equal(np.asarray(batch), per_image)
    counted = (gt != IGNORE) & (gt < K)
    assert int(batch.sum()) == int(counted.sum())
    # direct count of one cell
    assert int(batch[3, 5]) == int(np.sum((gt == 3) & (pred == 5)))


def test_scores_hand_example():
    # 3 classes; class 2 never occurs: NaN IoU and excluded from the means.
    conf = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    s = scores(conf)
    np.testing.assert_allclose(s["iou"][:2], [3 / 6, 4 / 7])
    assert np.isnan(s["iou"][2])
    assert s["miou"] == pytest.approx((3 / 6 + 4 / 7) / 2)
    assert s["pixel_acc"] == pytest.approx(7 / 10)
    assert s["mean_class_acc"] == pytest.approx((3 / 4 + 4 / 6) / 2)


def test_scores_empty_matrix_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = scores(np.zeros((4, 4), np.int64))
    assert np.isnan(s["miou"]) and np.isnan(s["pixel_acc"]) and s["num_pixels"] == 0
