"""The official Cityscapes evaluator (``cityscapesscripts``) on a folder of label-id PNGs.

The command line is ``python -m tools.official_eval`` (tools/official_eval.py).

What ``csEvalPixelLevelSemanticLabeling`` does, with its arguments as flags instead of the
``CITYSCAPES_DATASET`` / ``CITYSCAPES_RESULTS`` environment variables, and with its
instance-level scores (iIoU) off: cityscapesscripts 2.3.0's instance path calls ``np.in1d``,
which NumPy 2.4 no longer has, so the console script stops with an AttributeError after its
first image. Class IoU, category IoU and their means are computed by the library's own
``evaluateImgLists`` on every ``gtFine/{split}/*/*_gtFine_labelIds.png``; the predictions are
found by its own ``getPrediction`` (one ``{city}_{seq}_{frame}*.png`` per ground truth, anywhere
under ``--results``), e.g. those written by ``python -m tools.evaluate --dump-dir DIR
--dump-format cityscapes`` or ``python -m torch_deploy.predict --format cityscapes-submission``.
"""

from __future__ import annotations

import glob
import os

from PIL import Image

SINGLE_CHANNEL = ("L", "P", "I", "I;16")  # PIL modes of one value per pixel


class ResultsError(Exception):
    """A prediction file the official evaluator cannot read as label ids; the message names it."""


def check_prediction(pred: str, gt: str) -> None:
    """A :class:`ResultsError` naming ``pred`` unless it is a single-channel PNG of ``gt``'s size
    (the library would stop with "Predicted image has multiple channels" and no file name)."""
    try:
        with Image.open(pred) as im:
            mode, size, fmt = im.mode, im.size, im.format
        with Image.open(gt) as g:
            gt_size = g.size
    except OSError as e:
        raise ResultsError(f"{pred}: cannot read this prediction ({e}); expected a single-channel label-id PNG") from e
    if mode not in SINGLE_CHANNEL:
        raise ResultsError(
            f"{pred}: a {mode} image ({len(mode)} channels); expected a single-channel label-id PNG (one Cityscapes "
            "label id per pixel, e.g. from torch_deploy.predict --format cityscapes-submission), not a colour picture"
        )
    if fmt != "PNG":
        raise ResultsError(f"{pred}: a {fmt} file; expected a single-channel label-id PNG (lossless)")
    if size != gt_size:
        raise ResultsError(
            f"{pred}: {size[0]}x{size[1]} pixels but its ground truth {gt} has {gt_size[0]}x{gt_size[1]}; "
            "predict at the full image size"
        )


def evaluate_folder(cityscapes: str, results: str, split: str = "val", quiet: bool = False) -> dict:
    """The official scores of the label-id PNGs under ``results`` against ``cityscapes``' ``split``."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    gt = sorted(glob.glob(os.path.join(cityscapes, "gtFine", split, "*", "*_gtFine_labelIds.png")))
    if not gt:
        raise FileNotFoundError(
            f"{cityscapes}: no gtFine/{split}/*/*_gtFine_labelIds.png; --cityscapes must be the dataset root"
            " (the folder holding leftImg8bit/ and gtFine/)"
        )
    if not os.path.isdir(results):
        raise FileNotFoundError(f"--results {results}: not a folder of label-id PNGs")
    args = ev.args
    args.cityscapesPath = cityscapes
    args.predictionPath, args.predictionWalk = results, None
    args.evalInstLevelScore = False  # needs np.in1d (gone in NumPy 2.4); see the module docstring
    args.JSONOutput = False
    args.quiet = quiet
    missing = []
    preds = []
    for g in gt:
        try:
            preds.append(ev.getPrediction(args, g))
        except SystemExit:  # the library prints "ERROR: Found no/multiple prediction(s) ..." and exits
            missing.append(os.path.basename(g))
    if missing:
        raise FileNotFoundError(
            f"{results}: no single prediction for {len(missing)} of {len(gt)} images, e.g. {missing[:3]}"
        )
    for p, g in zip(preds, gt):
        check_prediction(p, g)
    try:
        return ev.evaluateImgLists(preds, gt, args)
    except SystemExit:  # the library printed "ERROR: ..." on stdout and exited
        raise ResultsError(
            f"--results {results}: the official evaluator stopped; its ERROR line above says why"
        ) from None
    except IndexError:  # a predicted value past the largest label id indexes past its confusion matrix
        raise ResultsError(
            f"--results {results}: a prediction holds a value that is no Cityscapes label id (0..33), e.g. the 255 "
            "of train-id PNGs; write label ids (--dump-format cityscapes / --format cityscapes-submission)"
        ) from None
