"""Evaluation of a checkpoint: our scores equal the official cityscapesscripts evaluator's on the
same predictions; multi-scale + flip and reduced-size evaluation; the evaluate CLI.

The checkpoint is a CSFCN-Tiny whose classifier (the head's last 1x1 conv) is a least-squares
probe fitted on the features of the three synthetic val images: with plain random weights
nearly every IoU is ~0, with the probe a dozen classes are predicted with IoUs from a few % to
~90 %, so that the comparison with the official evaluator covers true and false positives and
negatives of many classes.  The evaluate CLI runs in a child process started as soon as the
checkpoint exists, so that it overlaps with the in-process tests.
"""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 128)
VARIANT = "csfcn_tiny"


def _fit_probe(model, images, labels, num_classes, ridge=1e-2):
    """Set the head's 1x1 classifier to the ridge regression of one-hot labels on its input features."""
    import jax.numpy as jnp
    from flax import nnx

    from jax_csfcn.checkpointing import model_flat, set_model_flat
    from jax_csfcn.ops import normalize_on_device

    @nnx.jit
    def features(m, x):
        feat8, feat32 = m.resnet(normalize_on_device(x))
        return m.conv_out32.conv(m.sfc(feat8, m.cfc(feat32)))

    f = np.asarray(features(model, jnp.asarray(images)), np.float64)
    n, h8, w8, c = f.shape
    y = labels[:, 4::8, 4::8].reshape(-1)  # the label at the centre of each 8x8 cell
    x = np.concatenate([f.reshape(-1, c), np.ones((n * h8 * w8, 1))], axis=1)[y != 255]
    t = np.eye(num_classes)[y[y != 255]]
    w = np.linalg.solve(x.T @ x + ridge * np.eye(c + 1), x.T @ t)
    flat = model_flat(model)
    kernel, bias = ("conv_out32", "conv_out", "kernel"), ("conv_out32", "conv_out", "bias")
    flat[kernel] = w[:c].reshape(flat[kernel].shape).astype(np.float32)
    flat[bias] = w[c].astype(np.float32)
    set_model_flat(model, flat)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(data root, checkpoint path, the CLI child process, its JSON path)."""
    from convert.formats import save_flax_model
    from csfcn.model_config import ModelConfig
    from jax_csfcn.data.sources import build_source
    from jax_csfcn.data.synthetic import write_synthetic_cityscapes
    from jax_csfcn.model import build_model

    tmp = tmp_path_factory.mktemp("evaluate")
    root = tmp / "synth"
    write_synthetic_cityscapes(root, splits={"val": 3}, size=SIZE, seed=5, progress=False)
    src = build_source("synthetic", str(root), "val")
    images = np.stack([src[i]["image"] for i in range(len(src))])
    labels = np.stack([src[i]["label"] for i in range(len(src))])
    model = build_model(ModelConfig(name=VARIANT), seed=1)
    model.eval()
    _fit_probe(model, images, labels, 19)
    ckpt = tmp / "model.safetensors"
    save_flax_model(ckpt, model)

    out_json = tmp / "cli" / "scores.json"
    cmd = [sys.executable, "-m", "tools.evaluate", "--config", "configs/synthetic.py", "--checkpoint", str(ckpt)]
    cmd += [f"--config.data.root={root}", "--json", str(out_json), "--dump-dir", str(tmp / "cli" / "dump")]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cli = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield root, ckpt, cli, out_json
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()


def _config(root, **eval_over):
    from jax_csfcn.config import get_config

    c = get_config()
    c.model.name = VARIANT
    c.data.dataset = "synthetic"
    c.data.root = str(root)
    c.data.workers = 0
    c.eval.batch_size = 2  # 3 images: the second batch holds a padding slot that must count for nothing
    for k, v in eval_over.items():
        section, key = k.split("__")
        c[section][key] = v
    return c


def _check_scores(sc, k=19):
    iou = np.asarray(sc["iou"], np.float64)
    assert iou.shape == (k,)
    finite = iou[~np.isnan(iou)]
    assert finite.size and np.all((finite >= 0) & (finite <= 1))
    assert sc["miou"] == pytest.approx(float(np.mean(finite)), abs=1e-12)
    assert 0 <= sc["pixel_acc"] <= 1
    conf = np.asarray(sc["confusion"])
    assert conf.shape == (k, k) and conf.sum() == sc["num_pixels"]


def _valid_pixels(root) -> int:
    from jax_csfcn.data.sources import build_source

    src = build_source("synthetic", str(root), "val")
    return int(sum((src[i]["label"] != 255).sum() for i in range(len(src))))


@pytest.fixture(scope="module")
def single_scale(setup, tmp_path_factory):
    from tools.evaluate import evaluate_checkpoint

    root, ckpt, _, _ = setup
    dump = tmp_path_factory.mktemp("dump")
    res = evaluate_checkpoint(_config(root), str(ckpt), split="val", dump_dir=dump, dump_format="cityscapes")
    return res, dump


def _official(pred_dir, gt_files):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    a = ev.args
    a.predictionPath, a.predictionWalk = str(pred_dir), None
    a.evalInstLevelScore, a.JSONOutput, a.quiet = False, False, True
    found = [ev.getPrediction(a, g) for g in gt_files]
    return found, ev.evaluateImgLists(found, gt_files, a)


def test_scores_equal_official_cityscapes_evaluator(setup, single_scale):
    from cityscapesscripts.helpers.labels import trainId2label

    root, _, _, _ = setup
    res, dump = single_scale
    sc = res["raw"]
    _check_scores(sc)
    assert sc["images"] == 3 and sc["num_pixels"] == _valid_pixels(root)
    # "trained-like": many classes predicted, IoUs spread out, far from chance and from perfect
    iou = np.asarray(sc["iou"])
    assert int((np.asarray(sc["confusion"]).sum(axis=0) > 0).sum()) >= 8
    assert int(np.sum(iou > 0.3)) >= 5 and int(np.sum((iou > 0) & (iou < 0.3))) >= 2
    assert 0.2 < sc["miou"] < 0.9

    gt_files = sorted(glob.glob(str(root / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")))
    assert len(gt_files) == 3
    assert len(list(Path(dump).iterdir())) == 3  # one label-id PNG per image, none for the padding slot
    found, official = _official(dump, gt_files)
    assert [Path(f).name for f in found] == [Path(g).name.replace("gtFine_labelIds", "leftImg8bit") for g in gt_files]
    for k in range(19):
        theirs = official["classScores"][trainId2label[k].name]
        ours = float(iou[k])
        if math.isnan(ours) or math.isnan(theirs):
            assert math.isnan(ours) and math.isnan(theirs), (trainId2label[k].name, ours, theirs)
        else:
            assert abs(ours - theirs) <= 1e-9, (trainId2label[k].name, ours, theirs)
    assert abs(sc["miou"] - official["averageScoreClasses"]) <= 1e-9
    # the JSON form of the same numbers
    js = res["scores"]
    assert js["miou"] == pytest.approx(sc["miou"], abs=1e-12) and js["images"] == 3
    assert js["iou"]["road"] == pytest.approx(float(iou[0]), abs=1e-12)
    assert "mIoU" in res["table"]


def test_multiscale_and_flip(setup, single_scale):
    from tools.evaluate import evaluate_checkpoint

    root, ckpt, _, _ = setup
    cfg = _config(root, eval__scales=(0.5, 1.0), eval__flip=True)
    sc = evaluate_checkpoint(cfg, str(ckpt), split="val")["raw"]
    _check_scores(sc)
    one = single_scale[0]["raw"]
    assert sc["num_pixels"] == one["num_pixels"] and sc["images"] == 3
    assert sc["pixel_acc"] > 0.4  # averaging over scales and flips keeps a working prediction
    assert not np.array_equal(sc["confusion"], one["confusion"])  # ... but not the same one


def test_reduced_eval_size_scores_at_full_resolution(setup, single_scale, tmp_path):
    """data.eval_size (the -50/-75 configs): the network sees a smaller image; scores and dumps
    stay at the labels' full resolution."""
    from PIL import Image

    from tools.evaluate import evaluate_checkpoint

    root, ckpt, _, _ = setup
    cfg = _config(root)
    cfg.data.eval_size = (32, 64)
    res = evaluate_checkpoint(cfg, str(ckpt), split="val", dump_dir=tmp_path, dump_format="trainids")
    sc = res["raw"]
    _check_scores(sc)
    assert sc["num_pixels"] == single_scale[0]["raw"]["num_pixels"]
    pngs = sorted(tmp_path.glob("*_trainIds.png"))
    assert len(pngs) == 3 and all(np.asarray(Image.open(p)).shape == SIZE for p in pngs)
    assert not np.array_equal(sc["confusion"], single_scale[0]["raw"]["confusion"])


def test_evaluate_cli_writes_json(setup, single_scale):
    _, _, cli, out_json = setup
    try:
        stdout, stderr = cli.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        cli.kill()
        stdout, stderr = cli.communicate()
        pytest.fail(f"evaluate CLI did not finish:\n{stderr[-3000:]}")
    assert cli.returncode == 0, stderr[-3000:]
    assert "mIoU" in stdout
    got = json.loads(out_json.read_text())
    want = single_scale[0]["scores"]  # the same checkpoint and data: the same numbers
    assert set(got) >= {"miou", "pixel_acc", "mean_class_acc", "iou", "num_pixels", "images"}
    assert got["images"] == 3 and got["num_pixels"] == want["num_pixels"]
    assert got["miou"] == pytest.approx(want["miou"], abs=1e-12)
    assert list(got["iou"]) == list(want["iou"])
    for name, v in want["iou"].items():  # None = class absent from labels and predictions
        assert (got["iou"][name] is None) if v is None else got["iou"][name] == pytest.approx(v, abs=1e-12)
    assert len(list((out_json.parent / "dump").glob("*_trainIds.png"))) == 3


def test_an_unwritable_json_fails_before_the_evaluation(tmp_path, monkeypatch, capsys):
    """--json (and --pictures) are written after the whole evaluation: a place that cannot take
    them is one line at once, not an OSError after the long work."""
    import tools.evaluate as ev

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before checking that --json can be written")

    monkeypatch.setattr(ev, "evaluate_checkpoint", no_evaluation)
    (tmp_path / "file").write_text("x")
    base = ["--config", str(ROOT / "configs" / "synthetic.py"), "--checkpoint", str(tmp_path / "model.safetensors")]
    cases = [("--json", tmp_path / "file" / "scores.json"), ("--pictures", tmp_path / "file" / "p.png")]
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        (tmp_path / "ro").mkdir(mode=0o555)
        cases.append(("--json", tmp_path / "ro" / "scores.json"))
    for flag, path in cases:
        with pytest.raises(SystemExit) as e:
            ev.main([*base, flag, str(path)])
        assert e.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag} {path}: cannot write there") and err.count("\n") == 1
    # parents that do not exist yet are created, as the write would create them; nothing else is left
    with pytest.raises(AssertionError, match="evaluated before"):
        ev.main([*base, "--json", str(tmp_path / "new" / "sub" / "scores.json")])
    assert list((tmp_path / "new" / "sub").iterdir()) == []
