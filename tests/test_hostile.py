"""Hostile input: bad values and inputs that once passed silently or failed deep inside now stop at
once with one line that names the problem (the project's own suite of bad inputs, growing)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*argv, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_synthetic_refuses_to_write_into_an_existing_dataset(tmp_path):
    args = ("tools.synthetic_data", "--root", "ds", "--train", "1", "--val", "1", "--no-progress")
    assert _cli(*args, "--size", "32", "64", cwd=tmp_path).returncode == 0
    res = _cli(*args, "--size", "64", "96", cwd=tmp_path)
    assert res.returncode == 2 and "already holds a dataset" in res.stderr and "--overwrite" in res.stderr
    assert "Traceback" not in res.stderr
    # --overwrite replaces the whole set: every image has the new size afterwards
    assert _cli(*args, "--size", "64", "96", "--overwrite", cwd=tmp_path).returncode == 0
    sizes = {Image.open(p).size for p in (tmp_path / "ds").rglob("*.png")}
    assert sizes == {(96, 64)}


@pytest.mark.parametrize(
    "extra,message",
    [(["--train", "-1"], "counts must be >= 0"), (["--size", "0", "0"], "must be >= 32")],
)
def test_synthetic_rejects_impossible_sizes_and_counts(tmp_path, extra, message):
    res = _cli("tools.synthetic_data", "--root", "ds", "--no-progress", *extra, cwd=tmp_path)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("train.batch_size", 0, "train.batch_size=0 must be >= 1"),
        ("checkpoint.every", 0, "checkpoint.every=0 must be >= 1"),
        ("train.log_every", -3, "train.log_every=-3 must be >= 1"),
        ("eval.every", -1, "eval.every=-1 must be >= 0"),
        ("data.crop_size", (0, 0), r"data.crop_size=\(0, 0\) must be \(H, W\)"),
    ],
)
def test_training_settings_are_checked_before_any_work(tmp_path, key, value, message):
    from jax_csfcn.config import get_config
    from jax_csfcn.step import TrainError
    from tools.train import train

    cfg = get_config()
    cfg.workdir = str(tmp_path / "run")
    cfg.data.root = str(tmp_path / "never_written")
    section, field = key.split(".")
    cfg[section][field] = value
    with pytest.raises(TrainError, match=message):
        train(cfg, progress=False)
    assert not (tmp_path / "never_written").exists() and not (tmp_path / "run").exists()


def test_benchmark_rejects_an_unknown_variant(capsys):
    from tools.benchmark import main

    assert main(["--only", "a,z", "--size", "32", "64"]) == 2
    err = capsys.readouterr().err
    assert "unknown variant(s) ['z']" in err and "a, t, u, b, c, d, e" in err


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    from convert.formats import write_safetensors
    from torch_deploy import load_model
    from torch_deploy.model import CSFCN

    twin = CSFCN(name="csfcn_tiny", num_classes=3)
    sd = {k: v.numpy().copy() for k, v in twin.state_dict().items()}
    key = "sfc.conv_8.conv.weight"
    sd[key].flat[7] = np.nan
    write_safetensors(tmp_path / "diverged.safetensors", twin.config, sd)
    with pytest.raises(ValueError, match=rf"1 tensor\(s\) hold NaN or infinite values \({key}\)"):
        load_model(tmp_path / "diverged.safetensors")
    # through the CLI: one line, exit status 1
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / "x.png")
    res = _cli(
        "torch_deploy.predict", "--checkpoint", "diverged.safetensors", "--input", "x.png", "--out", "o", cwd=tmp_path
    )
    assert res.returncode != 0 and "NaN or infinite" in res.stderr and "Traceback" not in res.stderr


def test_predict_keeps_apart_images_that_differ_only_by_suffix(tmp_path):
    from tools.predict import collect_inputs

    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for name in ("x.png", "x.jpg", "y.png"):
        Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(tmp_path / "in" / name)
    kind, items = collect_inputs(str(tmp_path / "in"))
    names = sorted(n for _, n in items)
    assert kind == "images" and names == ["x.jpg", "x.png", "y"]


def test_sixteen_bit_images_are_refused_not_clipped(tmp_path):
    from torch_deploy.predictor import InputError, load_image

    deep = (np.arange(32 * 64, dtype=np.uint16).reshape(32, 64) * 17).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # a 16-bit greyscale PNG
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
    with pytest.raises(InputError, match="16-bit or floating point"):
        load_image(tmp_path / "deep.png")
    with pytest.raises(InputError, match="16-bit or floating point"):
        load_image(Image.fromarray(deep.astype(np.float32)))
    assert load_image(Image.fromarray(np.zeros((4, 4), np.uint8))).shape == (4, 4, 3)  # 8-bit grey still reads


def test_a_metrics_log_cut_off_by_a_kill_does_not_block_resume(tmp_path):
    from jax_csfcn.run_log import read_metrics

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.1}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(log)] == [1, 2]
    log.write_text('{"step": 1, "loss": 2.5}\ngarbage\n{"step": 3, "loss": 2.0}\n')
    with pytest.raises(ValueError, match="metrics.jsonl, line 2: not a metrics row"):
        read_metrics(log)


def test_an_override_given_twice_is_refused(tmp_path):
    res = _cli(
        "jax_csfcn.train",
        "--config",
        os.path.join(ROOT, "configs", "synthetic.py"),
        "--config.eval.scales=(0.75,)",
        "--config.eval.scales=(1.0,)",
        cwd=tmp_path,
    )
    assert res.returncode == 2 and "--config.eval.scales is given twice" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "runs").exists()


_LOADER_CHILD = """
import os, sys, time
from jax_csfcn.data.synthetic import write_synthetic_cityscapes
from jax_csfcn.data.cityscapes import CityscapesSource
from jax_csfcn.data.pipeline import AugmentConfig, train_loader

if __name__ == "__main__":
    root = sys.argv[1]
    write_synthetic_cityscapes(root, splits={"train": 4}, size=(64, 128), progress=False)
    src = CityscapesSource(root, "train")
    it = iter(train_loader(src, AugmentConfig(crop_size=(32, 64)), batch_size=2, seed=0, worker_count=1))
    next(it)
    print("READY", flush=True)
    time.sleep(600)
"""


def test_loader_workers_end_with_a_killed_training_process(tmp_path):
    """SIGKILL leaves no cleanup to the parent: its grain workers must notice and exit themselves."""
    import signal
    import time

    script = tmp_path / "child.py"
    script.write_text(_LOADER_CHILD)
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "ds")], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "READY"
        kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert kids, "the loader started no worker process"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 20
        alive = kids
        while alive and time.time() < deadline:
            time.sleep(0.5)
            alive = [k for k in kids if os.path.exists(f"/proc/{k}") and "zombie" not in _state(k)]
        assert not alive, f"worker(s) {alive} outlived the killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()


def _state(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((ln for ln in f if ln.startswith("State:")), "").lower()
    except OSError:
        return "gone"


def test_a_data_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    argv = (
        "jax_csfcn.train",
        "--config",
        os.path.join(ROOT, "configs", "cityscapes.py") + ":csfcn_tiny,50",
        f"--config.data.root={tmp_path / 'no_such_dataset'}",
        f"--config.workdir={tmp_path / 'run'}",
    )
    res = _cli(*argv, cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no_such_dataset" in last
    res = _cli(*argv, "--debug", cwd=tmp_path)
    assert res.returncode != 0 and "Traceback" in res.stderr and "DataError" in res.stderr


def test_convert_does_not_replace_an_existing_file_unless_asked(tmp_path):
    import torch

    from torch_deploy.model import CSFCN

    torch.save(CSFCN(name="csfcn_tiny", num_classes=3).state_dict(), tmp_path / "up.pth")
    (tmp_path / "notes.safetensors").write_text("my notes, not a model")
    res = _cli("convert", "up.pth", "notes.safetensors", cwd=tmp_path)
    assert res.returncode == 1 and "exists; pass --overwrite" in res.stderr
    assert (tmp_path / "notes.safetensors").read_text() == "my notes, not a model"
    assert _cli("convert", "up.pth", "notes.safetensors", "--overwrite", cwd=tmp_path).returncode == 0
    assert (tmp_path / "notes.safetensors").stat().st_size > 1000


def _disk_full(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device", "out.file")


def test_a_full_disk_is_one_line_in_convert_and_predict(tmp_path, monkeypatch, capsys):
    import torch

    import convert.__main__ as convert_cli
    import csfcn.palette
    import torch_deploy.checkpoint
    from convert.formats import write_safetensors
    from tools.predict import main as predict
    from torch_deploy.model import CSFCN

    twin = CSFCN(name="csfcn_tiny", num_classes=11)  # 11: CamVid's palette by class count
    torch.save(twin.state_dict(), tmp_path / "up.pth")
    write_safetensors(tmp_path / "m.safetensors", twin.config, {k: v.numpy() for k, v in twin.state_dict().items()})
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / "x.png")

    monkeypatch.setattr(torch_deploy.checkpoint, "write_atomic", _disk_full)
    assert convert_cli.main([str(tmp_path / "up.pth"), str(tmp_path / "new.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: No space left on device writing out.file") and "\n" not in err
    assert not (tmp_path / "new.safetensors").exists()

    monkeypatch.setattr(csfcn.palette, "write_atomic", _disk_full)
    argv = ["--checkpoint", str(tmp_path / "m.safetensors"), "--input", str(tmp_path / "x.png")]
    assert predict([*argv, "--out", str(tmp_path / "pred"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: No space left on device") and "free space" in err


def test_a_video_cut_off_is_reported_not_silent(tmp_path):
    import imageio.v2 as iio

    from convert.formats import write_safetensors
    from torch_deploy.model import CSFCN

    twin = CSFCN(name="csfcn_tiny", num_classes=11)
    write_safetensors(tmp_path / "m.safetensors", twin.config, {k: v.numpy() for k, v in twin.state_dict().items()})
    # header first (faststart), so that the first half of the file still decodes
    w = iio.get_writer(
        tmp_path / "full.mp4", format="FFMPEG", fps=10, macro_block_size=1, output_params=["-movflags", "+faststart"]
    )
    rng = np.random.default_rng(0)
    for _ in range(20):
        w.append_data(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    w.close()
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    res = _cli(
        "torch_deploy.predict", "--checkpoint", "m.safetensors", "--input", "cut.mp4", "--out", "o", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "frames its header announces" in res.stderr and "of the 20 frames" in res.stderr
    full = _cli(
        "torch_deploy.predict", "--checkpoint", "m.safetensors", "--input", "full.mp4", "--out", "o2", cwd=tmp_path
    )
    assert full.returncode == 0 and "announces" not in full.stderr


def test_debug_shows_the_traceback_the_one_line_error_hides(tmp_path, capsys):
    """csfcn/cli.py: the same mistake is one `error:` line, or with --debug the exception itself."""
    from convert.__main__ import main as convert
    from csfcn.checkpoints import ConversionError
    from tools.predict import PredictError
    from tools.predict import main as predict

    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    argv = [str(tmp_path / "broken.pth"), str(tmp_path / "out.safetensors")]
    assert convert(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.pth" in err and err.count("\n") == 1
    with pytest.raises(ConversionError, match="broken.pth"):
        convert([*argv, "--debug"])
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x.png")
    argv = ["--checkpoint", str(tmp_path / "broken.pth"), "--input", str(tmp_path / "x.png"), "--quiet"]
    argv += ["--out", str(tmp_path / "pred")]
    assert predict(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.pth" in err and err.count("\n") == 1
    with pytest.raises(PredictError):
        predict([*argv, "--debug"])
    assert not (tmp_path / "out.safetensors").exists()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_that_lie_are_named_not_loaded(tmp_path):
    """A pickle carrying code, a .safetensors with broken config metadata, and one whose tensors
    have the wrong shapes: each a ConversionError naming the file (and the tensor), nothing run."""
    import pickle

    import torch

    from csfcn.checkpoints import CONFIG_KEY, ConversionError
    from torch_deploy import load_model
    from torch_deploy.checkpoint import write_safetensors
    from torch_deploy.model import CSFCN

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"w": _RunsCode()}))
    with pytest.raises(ConversionError, match="evil.pth: refused.*objects other than tensors") as e:
        load_model(tmp_path / "evil.pth")
    assert "weights_only" not in str(e.value)  # no advice to turn the protection off

    twin = CSFCN(name="csfcn_tiny", num_classes=3)
    tensors = {k: v.numpy() for k, v in twin.state_dict().items()}
    from safetensors.numpy import save_file

    save_file(tensors, str(tmp_path / "badmeta.safetensors"), {CONFIG_KEY: '{"name": "csfcn_tiny", "num_cl'})
    with pytest.raises(ConversionError, match="badmeta.safetensors: the model config in its metadata"):
        load_model(tmp_path / "badmeta.safetensors")

    tensors["conv_out32.conv_out.weight"] = np.zeros((5, 128, 1, 1), np.float32)
    write_safetensors(tmp_path / "shape.safetensors", twin.config, tensors)
    with pytest.raises(ConversionError, match=r"shape.safetensors.*conv_out32.conv_out.weight: checkpoint has \(5"):
        load_model(tmp_path / "shape.safetensors")
    res = _cli(
        "tools.export_onnx", "--checkpoint", str(tmp_path / "shape.safetensors"), "--out", "m.onnx", cwd=tmp_path
    )
    assert res.returncode == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    assert "conv_out32.conv_out.weight" in res.stderr and not (tmp_path / "m.onnx").exists()
    assert torch.equal(twin.state_dict()["conv_out32.conv_out.bias"], twin.conv_out32.conv_out.bias)


def test_predictor_names_what_it_got_instead_of_an_image():
    from torch_deploy.model import CSFCN
    from torch_deploy.predictor import InputError, Predictor

    pred = Predictor(CSFCN(name="csfcn_tiny", num_classes=3), device="cpu")
    with pytest.raises(InputError, match="expected an image .* got NoneType"):
        pred.predict(None)


def test_a_broken_config_file_is_one_line(tmp_path):
    (tmp_path / "broken.py").write_text("def get_config(:\n")
    (tmp_path / "empty.py").write_text("x = 1\n")
    for name, message in (("broken.py", "fails to load: SyntaxError"), ("empty.py", "defines no get_config")):
        res = _cli("tools.summary", "--config", str(tmp_path / name), cwd=tmp_path)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_prediction_dumps_stay_inside_their_folder(tmp_path):
    """Record names come from the data (a TFDS image_id): '../x' must not write outside --dump-dir,
    and a --dump-dir that is a file is named."""
    from jax_csfcn.step import TrainError
    from tools.evaluate import _prediction_writer

    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainError, match="--dump-dir .*file: is a file"):
        _prediction_writer(tmp_path / "file", "trainids")
    write = _prediction_writer(tmp_path / "dump", "trainids")
    pred = np.zeros((2, 8, 8), np.uint8)
    batch = {"size": np.array([[8, 8], [8, 8]]), "name": np.array(["ok", "../escaped"])}
    with pytest.raises(TrainError, match="'../escaped_trainIds.png' from the data would write outside"):
        write(batch, pred)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("escaped")] == []
    assert (tmp_path / "dump" / "ok_trainIds.png").is_file()


def test_a_symlink_out_of_an_output_folder_is_refused_not_followed(tmp_path):
    """Output names are checked on real paths: '..' and a subfolder that is a symbolic link to
    elsewhere are both refused, the error naming where the name leads; a link that stays inside
    the folder is fine."""
    from csfcn.files import child_path
    from jax_csfcn.step import TrainError
    from tools.evaluate import _prediction_writer

    out, outside = tmp_path / "dump", tmp_path / "outside"
    (out / "real").mkdir(parents=True)
    outside.mkdir()
    (out / "away").symlink_to(outside, target_is_directory=True)
    (out / "inside").symlink_to(out / "real", target_is_directory=True)
    with pytest.raises(
        ValueError, match=r"'\.\./x\.png' from the data would write outside .*dump: it leads to .*x\.png"
    ):
        child_path(out, "../x.png")
    with pytest.raises(ValueError, match=f"'away/x.png' .* leads to {re.escape(str(outside.resolve() / 'x.png'))}"):
        child_path(out, "away/x.png")
    assert child_path(out, "inside/x.png") == (out / "real" / "x.png").resolve()
    assert child_path(out, "real/../x.png") == out.resolve() / "x.png"  # '..' that stays inside is fine
    # through the prediction dumps: nothing is written through the link
    write = _prediction_writer(out, "trainids")
    batch = {"size": np.array([[8, 8]]), "name": np.array(["away/escaped"])}
    with pytest.raises(TrainError, match="'away/escaped_trainIds.png' from the data would write outside"):
        write(batch, np.zeros((1, 8, 8), np.uint8))
    assert list(outside.iterdir()) == [], "a prediction was written outside the dump folder through a symlink"


@pytest.mark.parametrize(
    "argv,code,message",
    [
        (("tools.summary", "--config", "CFG", "--config.data.image_size=(0, 0)"), 2, "data.image_size=(0, 0)"),
        (("jax_csfcn.train", "--config", "CFG", "--config.workdir=a.png"), 1, "workdir='a.png' is a file"),
        (("tools.synthetic_data", "--root", "a.png"), 2, "--root a.png: is a file"),
        (("jax_csfcn.train", "--config", "CFG", "--config.model.imagenet_init=no.pth"), 1, "'no.pth': no such file"),
        (("jax_csfcn.train", "--config", "CFG", "--config.model.imagenet_init=a.png"), 1, "a.png: not a readable"),
    ],
)
def test_paths_and_sizes_that_cannot_work_are_one_line(tmp_path, argv, code, message):
    (tmp_path / "a.png").write_bytes(b"an existing file, not a folder")
    argv = [a.replace("CFG", os.path.join(ROOT, "configs", "synthetic.py")) for a in argv]
    res = _cli(*argv, cwd=tmp_path)
    assert res.returncode == code and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert (tmp_path / "a.png").read_bytes() == b"an existing file, not a folder"
