"""``python -m tools.official_eval``: the official evaluator on a folder, and its bad input.

(tests/test_evaluate.py checks that the official class IoUs equal ours on a trained-like model;
tests/test_readme.py runs the README's command after ``tools.evaluate --dump-dir``.)
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from jax_csfcn.data.synthetic import write_synthetic_cityscapes
from tools.official_eval import main


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "cityscapes"
    write_synthetic_cityscapes(root, splits={"val": 2}, size=(32, 64), seed=4, progress=False)
    return root


def _predictions(root, out, corrupt_first=False):
    """Label-id PNGs named as the test server wants: the ground truth itself (optionally with the
    first image's road pixels predicted as sky)."""
    out.mkdir()
    for i, gt in enumerate(sorted(root.glob("gtFine/val/*/*_gtFine_labelIds.png"))):
        ids = np.asarray(Image.open(gt)).copy()
        if corrupt_first and i == 0:
            ids[ids == 7] = 23  # road -> sky
        Image.fromarray(ids).save(out / gt.name.replace("gtFine_labelIds", "leftImg8bit"))
    return out


def test_perfect_and_imperfect_predictions(dataset, tmp_path, capsys):
    perfect = _predictions(dataset, tmp_path / "perfect")
    assert main(["--cityscapes", str(dataset), "--results", str(perfect), "--json", str(tmp_path / "p.json")]) == 0
    assert "official Cityscapes evaluator: mIoU 1.0000" in capsys.readouterr().out
    scores = json.loads((tmp_path / "p.json").read_text())
    present = [v for v in scores["iou"].values() if not np.isnan(v)]
    assert len(present) >= 5 and all(v == pytest.approx(1.0) for v in present)

    worse = _predictions(dataset, tmp_path / "worse", corrupt_first=True)
    assert main(["--cityscapes", str(dataset), "--results", str(worse), "--json", str(tmp_path / "w.json")]) == 0
    w = json.loads((tmp_path / "w.json").read_text())
    assert w["iou"]["road"] < 1.0 and w["iou"]["sky"] < 1.0 and w["miou"] < 1.0


def test_bad_input_is_named(dataset, tmp_path, capsys):
    preds = _predictions(dataset, tmp_path / "preds")
    assert main(["--cityscapes", str(tmp_path / "nowhere"), "--results", str(preds)]) == 2
    assert "no gtFine/val/*/*_gtFine_labelIds.png" in capsys.readouterr().err
    assert main(["--cityscapes", str(dataset), "--results", str(tmp_path / "missing")]) == 2
    assert "not a folder of label-id PNGs" in capsys.readouterr().err
    first = sorted(preds.iterdir())[0]
    first.unlink()
    assert main(["--cityscapes", str(dataset), "--results", str(preds)]) == 2
    assert "no single prediction for 1 of 2 images" in capsys.readouterr().err
    shutil.rmtree(preds)


def test_colour_predictions_name_the_file_and_what_was_expected(dataset, tmp_path, capsys):
    """RGB pictures instead of label ids: the library said "Predicted image has multiple channels"
    (no file) and exited 255; now one line naming the file."""
    preds = _predictions(dataset, tmp_path / "preds")
    first = sorted(preds.iterdir())[0]
    ids = np.asarray(Image.open(first))
    Image.fromarray(np.stack([ids] * 3, axis=-1)).save(first)
    assert main(["--cityscapes", str(dataset), "--results", str(preds)]) == 2
    captured = capsys.readouterr()
    assert f"error: {first}: a RGB image (3 channels); expected a single-channel label-id PNG" in captured.err
    assert captured.err.count("\n") == 1 and "ERROR" not in captured.out
