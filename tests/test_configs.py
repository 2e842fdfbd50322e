"""Every file in configs/: loads, builds a valid model, opens with the command that runs it, and
agrees with its dataset; command-line overrides, including a key that does not exist."""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py")
COMMANDS = ("jax_csfcn.train", "tools.summary", "tools.evaluate")
# The shipped families and every member (README, Training): changing them is a decision, not an accident.
MEMBERS = [
    *(f"cityscapes.py:{v},{s}" for v in ("csfcn", "csfcn_tiny") for s in ("50", "75", "100")),
    "cityscapes.py:csfcn,100,trainval",
    "cityscapes.py:csfcn,100,tfds",
    "cityscapes.py",  # no argument: csfcn,100
    "camvid.py:csfcn",
    "camvid.py:csfcn_tiny",
    "camvid.py:csfcn_p",
    "folder.py:data/folder",
    "synthetic.py",
]


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"_cfg_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load(member: str):
    """``get_config`` of ``file.py[:arg]``, as the command lines load it."""
    from jax_csfcn.cli import load_config_file

    return load_config_file(str(ROOT / "configs" / member))


def _flat_keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        out |= _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


def test_shipped_families():
    assert {p.name for p in FILES} == {m.partition(":")[0] for m in MEMBERS}


def _command_line(doc: str) -> str:
    """The command the docstring opens with: its first non-empty line, or the first line of its
    second paragraph when the first is a one-line title (configs/synthetic.py's form)."""
    lines = [ln.strip() for ln in doc.strip().splitlines()]
    if lines[0].startswith("python "):
        return lines[0]
    assert len(lines) > 2 and lines[1] == "", "the command must open the docstring (or follow a one-line title)"
    return lines[2]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_docstring_opens_with_the_command_that_runs_it(path):
    doc = _module(path).__doc__
    assert doc and doc.strip(), f"{path.name} has no docstring"
    argv = shlex.split(_command_line(doc))
    assert argv[:2] == ["python", "-m"] and argv[2] in COMMANDS, argv
    i = argv.index("--config")
    assert argv[i + 1].partition(":")[0] == f"configs/{path.name}", argv
    members = {m.partition(":")[2] for m in MEMBERS if m.partition(":")[0] == path.name}
    assert argv[i + 1].partition(":")[2] in members, (argv, members)  # a shipped member of the family
    assert all(a.startswith("--config.") for a in argv[i + 2 :]), argv  # overrides only, one form


@pytest.mark.parametrize("member", MEMBERS)
def test_config_is_valid(member, tmp_path, monkeypatch):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from csfcn.model_config import MODEL_NAMES, ModelConfig
    from jax_csfcn.config import get_config as base
    from jax_csfcn.data.sources import DATASETS, num_classes
    from jax_csfcn.model import build_model
    from jax_csfcn.step import model_config
    from jax_csfcn.training import _validate

    if member.startswith("folder.py"):  # its class count comes from the dataset's table
        from jax_csfcn.data.folder import write_synthetic_folder

        monkeypatch.chdir(tmp_path)
        write_synthetic_folder(tmp_path / "data/folder", splits={"train": 1}, size=(32, 32))
    cfg = _load(member)
    # only existing fields are set (a new key would be a typo the trainer never reads)
    assert _flat_keys(cfg.to_dict()) == _flat_keys(base().to_dict())
    assert cfg.data.dataset in DATASETS
    assert cfg.model.num_classes == num_classes(cfg.data.dataset, cfg.data.root)
    mc = model_config(cfg)
    assert isinstance(mc, ModelConfig) and mc.name in MODEL_NAMES
    _validate(cfg)  # what the trainer checks before anything else (batch, steps, dtype, OHEM)

    crop, image = tuple(cfg.data.crop_size), tuple(cfg.data.image_size)
    # Multiples of 32: the stride of the backbone.  CamVid's 720x960 crop is its whole image;
    # 720 is a multiple of 8 only, which the network also maps exactly (checked below).
    assert all(s % 32 == 0 for s in crop) or (cfg.data.dataset == "camvid" and crop == image), crop
    for name in ("eval_size", "base_size"):
        size = cfg.data[name]
        if size is not None:
            assert len(size) == 2 and all(s % 32 == 0 for s in size), (name, size)
    if cfg.data.eval_size is not None:  # the reduced-size models: summary's size = evaluation size
        assert tuple(cfg.data.eval_size) == image
    assert cfg.train.batch_size >= 1 and cfg.eval.batch_size >= 1
    assert 0 < cfg.data.scale_range[0] <= cfg.data.scale_range[1]

    # the network builds and its output has the training crop's size (the train step needs it)
    model = nnx.eval_shape(lambda: build_model(mc))
    model.eval()
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(
        lambda s, x: nnx.merge(graphdef, s)(x), state, jax.ShapeDtypeStruct((1, *crop, 3), jnp.float32)
    )
    assert out.shape == (1, *crop, cfg.model.num_classes)


def test_sizes_of_the_upstream_models():
    want = {"50": (512, 1024), "75": (768, 1536), "100": (1024, 2048)}
    for variant in ("csfcn", "csfcn_tiny"):
        for tag, size in want.items():
            cfg = _load(f"cityscapes.py:{variant},{tag}")
            assert cfg.model.name == variant and cfg.data.dataset == "cityscapes"
            assert tuple(cfg.data.image_size) == size
            evaluated = tuple(cfg.data.eval_size) if cfg.data.eval_size is not None else None
            assert evaluated == (None if tag == "100" else size)
            assert cfg.workdir == f"runs/cityscapes_{variant}_{tag}"
    camvid = _load("camvid.py:csfcn")
    assert tuple(camvid.data.image_size) == (720, 960) and camvid.model.num_classes == 11
    assert _load("camvid.py:csfcn_tiny").model.name == "csfcn_tiny"
    csfcn_p = _load("camvid.py:csfcn_p")  # CSFCN-P: the CamVid recipe from the Cityscapes model
    assert csfcn_p.model.name == "csfcn" and csfcn_p.model.init_from_classes == "cityscapes"
    assert csfcn_p.model.init_from == _load("cityscapes.py:csfcn,100").workdir
    assert {k: v for k, v in csfcn_p.to_dict().items() if k not in ("model", "workdir")} == {
        k: v for k, v in camvid.to_dict().items() if k not in ("model", "workdir")
    }
    trainval = _load("cityscapes.py:csfcn,100,trainval")
    assert trainval.data.train_split == "train+val" and trainval.train.steps == 139200
    tfds = _load("cityscapes.py:tfds")  # order and defaults: csfcn, 100
    assert tfds.data.dataset == "tfds_cityscapes" and tfds.data.val_split == "validation"
    assert _load("cityscapes.py").to_dict() == _load("cityscapes.py:csfcn,100").to_dict()


@pytest.mark.parametrize("bad", ["cityscapes.py:csfcn,90", "cityscapes.py:pspnet", "camvid.py:csfcn,75"])
def test_unknown_family_argument_is_named(bad):
    with pytest.raises(ValueError, match="unknown (token|variant|model)"):
        _load(bad)


def test_family_argument_through_the_command_line():
    """`--config configs/cityscapes.py:csfcn_tiny,75` reaches get_config (ml_collections' idiom)."""
    cmd = [sys.executable, "-m", "tools.summary", "--config", "configs/cityscapes.py:csfcn_tiny,75"]
    cmd += ["--config.data.image_size=(64, 128)"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "csfcn_tiny" in r.stdout


def test_command_line_overrides(monkeypatch):
    """--config.<key>=<value> and --config.<key> <value>, parsed as each field's type."""
    from jax_csfcn.cli import config_parser, parse_config_args

    monkeypatch.chdir(ROOT)
    argv = ["--config", "configs/cityscapes.py:csfcn,50", "--config.data.root=/data/cs", "--config.eval.flip", "true"]
    argv += ["--config.data.eval_size=(256, 512)", "--config.eval.scales=(0.75, 1.0)", "--config.train.batch_size=4"]
    argv += ["--config.train.base_lr=1", "--debug"]
    args, c = parse_config_args(config_parser("prog", "test"), argv)
    assert args.debug and args.config == "configs/cityscapes.py:csfcn,50"
    assert c.data.root == "/data/cs" and c.train.batch_size == 4 and c.eval.flip is True
    assert c.train.base_lr == 1.0 and isinstance(c.train.base_lr, float)
    assert tuple(c.data.eval_size) == (256, 512) and tuple(c.eval.scales) == (0.75, 1.0)
    assert tuple(c.data.crop_size) == (512, 1024)  # the file's own value, untouched
    with pytest.raises(AttributeError):  # locked: a typo in code cannot add a field either
        c.train.batchsize = 3


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.train.batch_size=four", "'four' is not a int"),
        ("--config.eval.flip=maybe", "expected true or false"),
        ("--config.data.eval_size=512", "'512' is not a tuple"),
        ("--config.train=3", "is a group of fields"),
        ("--config.train.nonexistent=1", "train has no field 'nonexistent'"),
        ("--batch-size=3", "unrecognized arguments: --batch-size=3"),
    ],
)
def test_bad_overrides_are_one_line_usage_errors(monkeypatch, capsys, override, message):
    from jax_csfcn.cli import config_parser, parse_config_args

    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as e:
        parse_config_args(config_parser("prog", "test"), ["--config", "configs/synthetic.py", override])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _override(monkeypatch, *argv):
    from jax_csfcn.cli import config_parser, parse_config_args

    monkeypatch.chdir(ROOT)
    return parse_config_args(config_parser("prog", "test"), ["--config", "configs/synthetic.py", *argv])[1]


def test_an_override_value_may_contain_equals_signs(monkeypatch):
    """Only the first '=' separates key and value: a path or an expression keeps the rest."""
    c = _override(monkeypatch, "--config.data.root=/data/run=3,mode=a=b")
    assert c.data.root == "/data/run=3,mode=a=b", f"value cut at an '=': {c.data.root!r}"
    assert _override(monkeypatch, "--config.workdir", "a=b").workdir == "a=b"


@pytest.mark.parametrize(
    "text,value",
    [("false", False), ("False", False), ("FALSE", False), ("0", False), ("no", False), ("off", False)]
    + [("true", True), ("True", True), ("1", True), ("yes", True), ("on", True)],
)
def test_bool_overrides_parse_false_as_false(monkeypatch, text, value):
    c = _override(monkeypatch, f"--config.data.flip={text}", f"--config.eval.flip={text}")  # defaults True, False
    assert (c.data.flip, c.eval.flip) == (value, value), f"flip={text} gave {(c.data.flip, c.eval.flip)}, not {value}"
    assert type(c.data.flip) is bool and type(c.eval.flip) is bool


@pytest.mark.parametrize("text", ["true", "True", "false", "False"])
def test_an_int_field_refuses_a_bool(monkeypatch, capsys, text):
    """An int field given a boolean is an error, not silently 1 or 0."""
    with pytest.raises(SystemExit) as e:
        _override(monkeypatch, f"--config.train.batch_size={text}")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{text!r} is not a int" in err, f"batch_size={text} was not refused: {err}"


def test_unknown_key_is_an_error_naming_it():
    cmd = [sys.executable, "-m", "jax_csfcn.train", "--config", "configs/synthetic.py", "--config.train.nonexistent=1"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "nonexistent" in r.stderr
    assert "synthetic ->" not in r.stderr and "step/s" not in r.stderr  # failed at parsing, before any work
