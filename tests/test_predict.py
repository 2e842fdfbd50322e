"""Predictor API and the predict CLI: images, folders, globs, video, Cityscapes submission, bad input."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch_checkpoints import make_checkpoint, random_image

from csfcn.palette import CITYSCAPES_PALETTE, colorize, train_id_to_label_id
from tools.predict import LOCK, MANIFEST, collect_inputs
from tools.predict import main as predict_main
from torch_deploy import Predictor, load_model
from torch_deploy.predictor import InputError, normalise

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "csfcn19.safetensors", seed=3)


@pytest.fixture(scope="module")
def predictor(ckpt):
    return Predictor.from_checkpoint(ckpt, device="cpu", batch_size=2)


def _twin_labels(model, img: np.ndarray) -> np.ndarray:
    """The reference: normalise, zero-pad bottom/right to a multiple of 8, run the twin, crop, argmax."""
    x = normalise(np.array(img[None]))
    h, w = img.shape[:2]
    x = F.pad(x, (0, -w % 8, 0, -h % 8))
    with torch.no_grad():
        return model(x)[0, :, :h, :w].argmax(0).numpy().astype(np.uint8)


def _agree(a, b, at_least=0.999):
    """Label maps equal up to near-ties: batched GEMMs round differently from batch 1."""
    assert a.shape == b.shape
    assert (a == b).mean() >= at_least, f"only {(a == b).mean():.5f} of the labels agree"


def _files(d) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in Path(d).rglob("*") if p.is_file())


def test_predictor_matches_twin_any_size(predictor, ckpt, rng, tmp_path):
    twin = load_model(ckpt)
    a = random_image(rng, 64, 96)  # multiple of 8: not padded
    b = random_image(rng, 61, 99)  # padded to 64x104, cropped back
    la = predictor.predict(a)
    assert la.shape == (64, 96) and la.dtype == np.uint8 and la.max() < 19
    np.testing.assert_array_equal(la, _twin_labels(twin, a))
    lb = predictor.predict(b)
    assert lb.shape == (61, 99)
    np.testing.assert_array_equal(lb, _twin_labels(twin, b))
    assert len(np.unique(la)) > 1  # the random network is not degenerate
    # other input kinds and batching give the same answers
    Image.fromarray(b).save(tmp_path / "b.png")
    np.testing.assert_array_equal(predictor.predict(str(tmp_path / "b.png")), lb)
    np.testing.assert_array_equal(predictor.predict(Image.fromarray(b)), lb)
    c = random_image(rng, 64, 96)
    batch = predictor.predict(np.stack([a, c, a]))  # 3 images, batch_size 2
    assert batch.shape == (3, 64, 96)
    _agree(batch[0], la)
    _agree(batch[2], la)
    mixed = predictor.predict([b, a, tmp_path / "b.png"])
    _agree(mixed[0], lb)
    _agree(mixed[1], la)
    _agree(mixed[2], lb)
    # grey images and RGBA are accepted
    assert predictor.predict(a[..., 0]).shape == (64, 96)
    rgba = np.concatenate([a, np.full_like(a[..., :1], 255)], axis=2)
    np.testing.assert_array_equal(predictor.predict(rgba), la)


def test_predictor_bad_input(predictor, tmp_path):
    with pytest.raises(InputError, match="uint8"):
        predictor.predict(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(InputError, match="no such image"):
        predictor.predict(str(tmp_path / "missing.png"))
    (tmp_path / "fake.png").write_text("not a png")
    with pytest.raises(InputError, match="cannot read"):
        predictor.predict(tmp_path / "fake.png")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Predictor(predictor.model, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        Predictor(predictor.model, device="cpu", precision="int8")


def test_cli_folder_and_glob(ckpt, rng, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    sizes = {"a.png": (64, 96), "sub/b.jpg": (45, 70), "sub/c.png": (64, 96)}
    for name, (h, w) in sizes.items():
        Image.fromarray(random_image(rng, h, w)).save(src / name, quality=95)
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    argv = ["--checkpoint", ckpt, "--input", str(src), "--out", str(out), "--batch-size", "2", "--precision", "fp32"]
    assert predict_main(argv) == 0
    expected = [MANIFEST, "legend.png"] + [
        f"{d}/{n.rsplit('.', 1)[0]}.png" for d in ("color", "labels", "overlay") for n in sizes
    ]
    assert _files(out) == sorted(expected)  # the lock is gone, the record of what wrote the folder stays
    twin = load_model(ckpt)
    for name in sizes:
        stem = name.rsplit(".", 1)[0]
        img = np.asarray(Image.open(src / name).convert("RGB"))
        labels = np.asarray(Image.open(out / "labels" / f"{stem}.png"))
        assert labels.shape == img.shape[:2] and labels.dtype == np.uint8 and labels.max() < 19
        _agree(labels, _twin_labels(twin, img))
        np.testing.assert_array_equal(
            np.asarray(Image.open(out / "color" / f"{stem}.png")), colorize(labels, CITYSCAPES_PALETTE)
        )
        assert np.asarray(Image.open(out / "overlay" / f"{stem}.png")).shape == img.shape
    assert "images=3" in capsys.readouterr().out

    out2 = tmp_path / "out2"
    assert (
        predict_main(["--checkpoint", ckpt, "--input", str(src / "**" / "*.png"), "--out", str(out2), "--quiet"]) == 0
    )
    assert sorted(p for p in _files(out2) if p.startswith("labels/")) == ["labels/a.png", "labels/sub/c.png"]


def _cs_eval_module(pred_dir, gt_search):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    a = ev.args
    a.predictionPath, a.predictionWalk, a.groundTruthSearch = str(pred_dir), None, gt_search
    a.evalInstLevelScore, a.JSONOutput, a.quiet = False, False, True
    return ev


def _iou_by_hand(preds, gts) -> float:
    from cityscapesscripts.helpers.labels import id2label, trainId2label

    ignored = np.array([id2label[i].ignoreInEval if i in id2label else True for i in range(256)])
    ious = []
    for k in range(19):
        lid = trainId2label[k].id
        tp = fp = fn = 0
        for p, g in zip(preds, gts):
            valid = ~ignored[g]
            tp += int(((p == lid) & (g == lid)).sum())
            fn += int(((p != lid) & (g == lid)).sum())
            fp += int(((p == lid) & (g != lid) & valid).sum())
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
    return float(np.mean(ious))


def test_cityscapes_submission_read_by_official_evaluation(ckpt, predictor, rng, tmp_path):
    root = tmp_path / "cityscapes"
    frames = [("frankfurt", "000000", "000294"), ("frankfurt", "000001", "007973"), ("lindau", "000000", "000019")]
    gts, own = [], []
    for city, seq, frame in frames:
        img = random_image(rng, 64, 128)
        own.append(train_id_to_label_id(predictor.predict(img)))
        (root / "leftImg8bit" / "val" / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "leftImg8bit" / "val" / city / f"{city}_{seq}_{frame}_leftImg8bit.png")
        # ground truth: our own prediction with a third of the pixels changed, some to ignored ids
        gt = own[-1].copy()
        noise = rng.random(gt.shape) < 0.33
        gt[noise] = rng.choice([0, 7, 8, 11, 21, 23, 26, 24, 1, 5], size=int(noise.sum()))
        (root / "gtFine" / "val" / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt).save(root / "gtFine" / "val" / city / f"{city}_{seq}_{frame}_gtFine_labelIds.png")
        gts.append(gt)
    out = tmp_path / "submission"
    code = predict_main(
        ["--checkpoint", ckpt, "--input", str(root / "leftImg8bit" / "val"), "--out", str(out)]
        + ["--format", "cityscapes-submission", "--quiet", "--precision", "fp32"]
    )
    assert code == 0
    names = [f"{c}_{s}_{f}_leftImg8bit.png" for c, s, f in frames]
    assert _files(out) == sorted([MANIFEST, *names])  # flat, submission files only (and the hidden record)
    preds = [np.asarray(Image.open(out / n)) for n in names]
    for p in preds:
        assert p.dtype == np.uint8 and p.ndim == 2
        assert set(np.unique(p)) <= set(range(7, 34))  # label ids, not train ids
    for p, o in zip(preds, own):
        _agree(p, o)  # the train ids of the predictor, mapped to label ids

    gt_search = str(root / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")
    ev = _cs_eval_module(out, gt_search)
    gt_files = sorted(glob.glob(gt_search))
    found = [ev.getPrediction(ev.args, g) for g in gt_files]
    assert [os.path.basename(f) for f in found] == names
    result = ev.evaluateImgLists(found, gt_files, ev.args)
    want = _iou_by_hand(preds, gts)
    assert 0.2 < want < 0.99
    assert result["averageScoreClasses"] == pytest.approx(want, abs=1e-9)


def _write_clip(path, rng, frames: int) -> None:
    """A 4 fps H.264 clip of ``frames`` random 48x80 frames."""
    import imageio.v2 as iio

    w = iio.get_writer(str(path), format="FFMPEG", fps=4, codec="libx264", macro_block_size=1)
    for _ in range(frames):
        w.append_data(random_image(rng, 48, 80))
    w.close()


def test_cli_video(ckpt, rng, tmp_path):
    import imageio.v2 as iio

    video = tmp_path / "clip.mp4"
    _write_clip(video, rng, 3)
    out = tmp_path / "out"
    args = ["--checkpoint", ckpt, "--input", str(video), "--out", str(out), "--save-frames", "--quiet"]
    assert predict_main(args + ["--opacity", "0.7", "--batch-size", "2"]) == 0
    files = _files(out)
    assert "clip_overlay.mp4" in files and "legend.png" in files
    assert [f for f in files if f.startswith("clip/labels/")] == [f"clip/labels/{i:06d}.png" for i in range(3)]
    r = iio.get_reader(str(out / "clip_overlay.mp4"), format="FFMPEG")
    frames = [f for f in r]  # list(r) would trust len(r), which is inf for ffmpeg
    assert len(frames) == 3 and frames[0].shape == (48, 80, 3)
    assert r.get_meta_data()["fps"] == pytest.approx(4)
    r.close()


def test_a_video_stopped_part_way_records_the_frames_it_wrote(ckpt, rng, tmp_path, monkeypatch):
    """Ctrl-C during a --save-frames video: the frames already written are in the folder's record,
    so a later --overwrite (another model) removes them instead of leaving them mixed in."""
    import json

    import tools.predict as tp

    video = tmp_path / "clip.mp4"
    _write_clip(video, rng, 4)
    out = tmp_path / "out"
    real, calls = tp._write_visuals, []

    def stopped_at_the_third_frame(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tp, "_write_visuals", stopped_at_the_third_frame)
    args = ["--checkpoint", ckpt, "--input", str(video), "--out", str(out), "--save-frames", "--quiet"]
    assert predict_main(args + ["--batch-size", "1"]) == 130
    on_disk = {f for f in _files(out) if f.startswith("clip/")}
    assert on_disk == {f"clip/{sub}/{i:06d}.png" for i in range(2) for sub in ("labels", "color", "overlay")}
    assert not (out / "clip_overlay.mp4").exists()  # the video in progress is not left half-written
    assert on_disk <= set(json.loads((out / MANIFEST).read_text())["files"])


@pytest.mark.parametrize(
    "case",
    ["text_checkpoint", "garbage_safetensors", "bad_image", "bad_video", "out_under_file", "unknown_dataset"]
    + ["wrong_class_count", "no_codec", "submission_names", "missing_input"],
)
def test_cli_bad_input(case, ckpt, rng, tmp_path, capsys):
    good = tmp_path / "img.png"
    Image.fromarray(random_image(rng, 32, 48)).save(good)
    out = tmp_path / "out"
    args = {"--checkpoint": ckpt, "--input": str(good), "--out": str(out)}
    extra: list[str] = []
    if case == "text_checkpoint":
        (tmp_path / "model.txt").write_text("hello")
        args["--checkpoint"], msg = str(tmp_path / "model.txt"), "unknown checkpoint type"
    elif case == "garbage_safetensors":
        (tmp_path / "model.safetensors").write_bytes(b"\x00" * 100)
        args["--checkpoint"], msg = str(tmp_path / "model.safetensors"), "not a readable safetensors"
    elif case == "bad_image":
        (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        args["--input"], msg = str(tmp_path / "broken.png"), "cannot read this image"
    elif case == "bad_video":
        (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage" * 4)
        args["--input"], msg = str(tmp_path / "broken.mp4"), "cannot read this video"
    elif case == "out_under_file":
        (tmp_path / "file").write_text("x")
        args["--out"], msg = str(tmp_path / "file" / "out"), "cannot write there"
        out = tmp_path / "file"
    elif case == "unknown_dataset":
        extra, msg = ["--dataset", "kitti"], "unknown dataset/palette"
    elif case == "wrong_class_count":
        extra, msg = ["--dataset", "camvid"], "19 classes but dataset 'camvid' has 11"
    elif case == "no_codec":
        video = tmp_path / "ok.avi"
        import imageio.v2 as iio

        w = iio.get_writer(str(video), format="FFMPEG", fps=2, codec="mpeg4", macro_block_size=1)
        w.append_data(random_image(rng, 32, 48))
        w.close()
        args["--input"], extra, msg = str(video), ["--codec", "no_such_codec"], "no such video encoder"
    elif case == "submission_names":
        extra, msg = ["--format", "cityscapes-submission"], "leftImg8bit.png; 1 do not match"
    else:
        args["--input"], msg = str(tmp_path / "nothing*.png"), "matches no image files"
    argv = [x for kv in args.items() for x in kv] + extra + ["--quiet"]
    assert predict_main(argv) == 2
    assert msg in capsys.readouterr().err
    if out.is_dir():
        assert _files(out) == []  # nothing written, not even a legend
    else:
        assert not out.exists() or out.is_file()


def test_cli_help():
    r = subprocess.run(
        [sys.executable, "-m", "torch_deploy.predict", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    for flag in ("--checkpoint", "--input", "--out", "--dataset", "--opacity", "--batch-size", "--format", "--device"):
        assert flag in r.stdout


def test_precision_auto_bf16_and_int8_paths(ckpt, tmp_path, capsys, monkeypatch):
    """--precision auto takes the fastest measured path (optimize int8 when --calibration is given,
    else bf16 on a CPU with native bf16, else fp32); int8 runs oneDNN's int8 convolutions
    calibrated on --calibration; the choices that cannot work are one line."""
    import torch_deploy.precision as precision_module
    from torch_deploy.cpu_caps import CpuCaps, cpu_caps

    rng = np.random.default_rng(5)
    for name in ("a.png", "b.png"):
        Image.fromarray(random_image(rng, 40, 64)).save(tmp_path / name)
    base = ["--checkpoint", ckpt, "--input", str(tmp_path / "a.png"), "--device", "cpu"]
    assert predict_main([*base, "--out", str(tmp_path / "auto")]) == 0
    want = "optimize-bf16" if cpu_caps().verdict("bf16").ok else "optimize-fp32"
    assert f"precision={want}" in capsys.readouterr().out
    assert (
        predict_main([*base, "--out", str(tmp_path / "q"), "--precision", "int8", "--calibration", str(tmp_path)]) == 0
    )
    assert "precision=optimize-int8" in capsys.readouterr().out
    labels = np.asarray(Image.open(tmp_path / "q" / "labels" / "a.png"))
    assert labels.shape == (40, 64) and labels.max() < 19
    assert predict_main([*base, "--out", str(tmp_path / "qa"), "--calibration", str(tmp_path)]) == 0
    assert "precision=optimize-int8" in capsys.readouterr().out
    assert predict_main([*base, "--out", str(tmp_path / "r"), "--precision", "int8"]) == 2
    assert "--precision int8 needs --calibration" in capsys.readouterr().err
    avx2 = CpuCaps("x86_64", frozenset({"avx", "avx2", "fma"}), "a test's flags")
    monkeypatch.setattr(precision_module, "cpu_caps", lambda: avx2)
    with pytest.raises(ValueError, match="bf16 on this CPU: no avx512_bf16 or amx_bf16"):
        Predictor(load_model(ckpt), device="cpu", precision="bf16")


def test_a_calibration_image_too_large_to_decode_is_one_line(ckpt, tmp_path, capsys, monkeypatch):
    """PIL refuses to decode an image above its pixel limit (DecompressionBombError, not an
    OSError): the calibration loader names the file and the two ways on, no traceback. The limit
    is lowered here so that a small file stands in for a 20000x20000 one."""
    rng = np.random.default_rng(7)
    (tmp_path / "calib").mkdir()
    Image.fromarray(random_image(rng, 16, 16)).save(tmp_path / "small.png")
    Image.fromarray(random_image(rng, 40, 64)).save(tmp_path / "calib" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above 2x: 2,560 pixels
    argv = ["--checkpoint", ckpt, "--input", str(tmp_path / "small.png"), "--device", "cpu"]
    argv += ["--out", str(tmp_path / "q"), "--precision", "int8", "--calibration", str(tmp_path / "calib")]
    assert predict_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "huge.png: too large to decode" in err and "\n" not in err, err


@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory):
    """Two different small models (11 classes: CamVid's palette), freshly initialised (fast)."""
    from convert.formats import write_safetensors
    from torch_deploy.model import CSFCN

    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        twin = CSFCN(name="csfcn_tiny", num_classes=11).eval()
        path = tmp_path_factory.mktemp("tiny") / f"m{seed}.safetensors"
        write_safetensors(path, twin.config, {k: v.numpy() for k, v in twin.state_dict().items()})
        paths.append(str(path))
    return paths


def test_one_output_folder_holds_one_models_results(tiny_ckpts, rng, tmp_path, capsys):
    """Two runs of different models into one --out: the second is refused (its outputs would
    mix with, or replace, the first's) unless --overwrite, which removes the first's outputs; a
    run while another holds the folder is refused naming it; files no run recorded are kept."""
    import fcntl
    import json

    a, b = tiny_ckpts
    src = tmp_path / "in"
    src.mkdir()
    for name in ("x.png", "y.png"):
        Image.fromarray(random_image(rng, 32, 48)).save(src / name)
    out = tmp_path / "out"
    base = ["--out", str(out), "--quiet", "--precision", "fp32", "--device", "cpu"]
    assert predict_main(["--checkpoint", a, "--input", str(src), *base]) == 0
    record = json.loads((out / MANIFEST).read_text())
    assert record["checkpoint"] == a and record["fingerprint"].startswith("sha256:")
    assert "labels/x.png" in record["files"] and not (out / LOCK).exists()
    first = {f: (out / f).read_bytes() for f in _files(out)}

    assert predict_main(["--checkpoint", b, "--input", str(src / "y.png"), *base]) == 2
    err = capsys.readouterr().err
    assert "holds the outputs of another model" in err and a in err and "--overwrite" in err
    assert {f: (out / f).read_bytes() for f in _files(out)} == first  # nothing of the first run touched

    assert predict_main(["--checkpoint", b, "--input", str(src / "y.png"), *base, "--overwrite"]) == 0
    assert "removed 3 output(s)" in capsys.readouterr().err  # x.png's labels, color, overlay: model a's
    assert not (out / "labels" / "x.png").exists() and (out / "labels" / "y.png").is_file()
    assert json.loads((out / MANIFEST).read_text())["checkpoint"] == b

    # a second run while one holds the folder: refused at once, naming the holder
    with open(out / LOCK, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on otherhost\n")
        held.flush()
        assert predict_main(["--checkpoint", b, "--input", str(src / "y.png"), *base]) == 2
    err = capsys.readouterr().err
    assert "in use by another predict run (pid 4242 on otherhost)" in err and err.count("\n") == 1

    # a folder with outputs no run recorded (the user's files, or an older version's)
    mine = tmp_path / "mine"
    (mine / "labels").mkdir(parents=True)
    (mine / "labels" / "y.png").write_bytes(b"the user's own file")
    assert predict_main(["--checkpoint", a, "--input", str(src / "y.png"), *base[2:], "--out", str(mine)]) == 2
    assert "1 file(s) this run would replace (e.g. labels/y.png)" in capsys.readouterr().err
    assert (mine / "labels" / "y.png").read_bytes() == b"the user's own file"


def test_outputs_are_never_read_back_as_inputs(ckpt, rng, tmp_path, capsys):
    """--out inside (or equal to) the --input folder is refused before anything is written; so is
    a pattern that matches files inside --out."""
    src = tmp_path / "photos"
    src.mkdir()
    Image.fromarray(random_image(rng, 32, 48)).save(src / "a.png")
    for out in (src / "preds", src):
        assert predict_main(["--checkpoint", ckpt, "--input", str(src), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"--out {out} lies inside --input {src}" in err and err.count("\n") == 1
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]
    (src / "preds" / "labels").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(src / "preds" / "labels" / "a.png")  # an earlier run's
    pattern = str(src / "**" / "*.png")
    assert predict_main(["--checkpoint", ckpt, "--input", pattern, "--out", str(src / "preds"), "--quiet"]) == 2
    assert "matches 1 file(s) inside --out" in capsys.readouterr().err
    assert "outputs are never read back" in build_help()


def build_help() -> str:
    from tools.predict import build_parser

    return " ".join(build_parser().format_help().split())


def test_symlinked_folders_are_followed_with_a_note_and_cycles_skipped(rng, tmp_path, capsys):
    src, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    src.mkdir()
    elsewhere.mkdir()
    Image.fromarray(random_image(rng, 16, 16)).save(src / "a.png")
    Image.fromarray(random_image(rng, 16, 16)).save(elsewhere / "b.png")
    (src / "linked").symlink_to(elsewhere, target_is_directory=True)
    (src / "loop").symlink_to(src, target_is_directory=True)  # walking it would never end
    kind, items = collect_inputs(str(src))
    assert kind == "images" and sorted(n for _, n in items) == ["a", "linked/b"]
    err = capsys.readouterr().err
    assert f"following symbolic link(s) to folders: linked -> {elsewhere.resolve()}" in err
    assert f"skipping loop -> {src.resolve()}: it leads back to a folder above it" in err
