"""Your own data end to end, and fine-tuning across class counts.

One small run trains on a colour-mask folder dataset the test writes (5 classes); then:
evaluate (with the dataset's own mask values dumped) -> convert -> predict, with the class table
carried by every checkpoint; and fine-tuning that run onto another label space (4 classes,
index masks, classes re-ordered and merged) with a class mapping: the mapped classifier rows
are exactly the source rows, and the first loss is far below a start from scratch or from the
backbone alone (the role of an ImageNet initialisation).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jax_csfcn.data.folder import EXAMPLE_CLASSES, write_synthetic_folder

SIZE = (64, 128)
# The fine-tuning label space: the example's classes re-ordered, "construction" and "object"
# merged into "structure" (which starts from the old "construction" rows).
TARGET = (
    ("sky", (70, 130, 180), EXAMPLE_CLASSES[3][2]),
    ("flat", (128, 64, 128), EXAMPLE_CLASSES[0][2]),
    ("nature", (107, 142, 35), EXAMPLE_CLASSES[2][2]),
    ("structure", (90, 90, 90), EXAMPLE_CLASSES[1][2] + EXAMPLE_CLASSES[4][2]),
)
MAPPING = "0:3,1:0,2:2,3:1"  # new:old


def _config(root, workdir, **over):
    from test_train import tiny_config

    base = {"data.dataset": "folder", "model.num_classes": 5, "train.base_lr": 0.05, "train.warmup_steps": 5}
    return tiny_config(root, workdir, **{**base, **over})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A csfcn_tiny run of 60 steps on a colour-mask folder dataset; (dataset root, run dir, config)."""
    from jax_csfcn.train import train

    tmp = tmp_path_factory.mktemp("finetune")
    root = tmp / "colour"
    write_synthetic_folder(root, splits={"train": 8, "val": 2}, size=SIZE, seed=5)
    cfg = _config(root, tmp / "run", **{"train.steps": 60, "checkpoint.every": 60, "train.batch_size": 4})
    train(cfg, progress=False)
    return root, tmp / "run", cfg


def test_own_classes_train_evaluate_convert_predict(run, tmp_path):
    from convert.__main__ import main as convert_main
    from jax_csfcn.evaluate import evaluate_checkpoint
    from torch_deploy.predict import main as predict_main

    root, workdir, cfg = run
    res = evaluate_checkpoint(cfg, str(workdir), split="val", dump_dir=tmp_path / "dump", dump_format="raw")
    assert list(res["scores"]["iou"]) == [n for n, _, _ in EXAMPLE_CLASSES]  # the table's names
    assert "flat" in res["table"]
    dumped = np.asarray(Image.open(tmp_path / "dump" / "scene_0000.png"))
    colours = {tuple(c) for _, c, _ in EXAMPLE_CLASSES}
    assert dumped.shape == (*SIZE, 3) and {tuple(c) for c in dumped.reshape(-1, 3)} <= colours

    st = tmp_path / "model.safetensors"
    assert convert_main([str(workdir), str(st)]) in (0, None)
    from safetensors import safe_open

    with safe_open(str(st), "np") as f:
        meta = json.loads(f.metadata()["csfcn_config"])
    assert [c[0] for c in meta["classes"]] == [n for n, _, _ in EXAMPLE_CLASSES]

    out = tmp_path / "pred"
    code = predict_main(
        ["--checkpoint", str(st), "--input", str(root / "images" / "val"), "--out", str(out), "--format", "raw"]
        + ["--quiet", "--precision", "fp32"]
    )
    assert code in (0, None)
    raw = np.asarray(Image.open(out / "labels" / "scene_0001.png"))
    colour = np.asarray(Image.open(out / "color" / "scene_0001.png"))
    assert raw.shape == (*SIZE, 3) and {tuple(c) for c in raw.reshape(-1, 3)} <= colours
    np.testing.assert_array_equal(raw, colour)  # display colours are the mask colours in this table
    assert Image.open(out / "legend.png").size[1] > 5 * 20  # one row per class of the table


def _first_loss(cfg, root) -> float:
    """Cross-entropy of the initial model (train-mode BN) on the whole train split, as step 1 sees it."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from convert.formats import init_backbone, init_from_checkpoint
    from jax_csfcn.data.folder import FolderSource
    from jax_csfcn.losses import cross_entropy
    from jax_csfcn.ops import normalize_on_device
    from jax_csfcn.step import _init_state, model_config

    graphdef, _, params, stats = _init_state(cfg, model_config(cfg), init_backbone, init_from_checkpoint)
    src = FolderSource(root, "train")
    x = jnp.asarray(np.stack([src[i]["image"] for i in range(len(src))]))
    y = jnp.asarray(np.stack([src[i]["label"] for i in range(len(src))]))

    @jax.jit
    def loss(p, s):
        return cross_entropy(nnx.merge(graphdef, p, s)(normalize_on_device(x)), y)

    return float(loss(params, stats))


def test_finetune_with_a_class_mapping_starts_far_lower(run, tmp_path):
    import torch

    from convert.formats import finetune_params, load_torch_model, read_checkpoint
    from jax_csfcn.checkpointing import model_flat
    from jax_csfcn.model import build_model
    from jax_csfcn.step import model_config

    src_root, workdir, _ = run
    root = tmp_path / "target"
    write_synthetic_folder(root, splits={"train": 6}, size=SIZE, seed=9, classes=TARGET, mask="index")
    # the backbone alone, as an ImageNet file would bring it (torchvision names)
    twin = load_torch_model(str(workdir))
    backbone = {k[len("resnet.") :]: v for k, v in twin.state_dict().items() if k.startswith("resnet.")}
    torch.save(backbone, tmp_path / "backbone.pth")

    over = {"model.num_classes": 4}
    scratch = _config(root, tmp_path / "a", **over)
    imagenet = _config(root, tmp_path / "b", **over, **{"model.imagenet_init": str(tmp_path / "backbone.pth")})
    mapped = _config(
        root, tmp_path / "c", **over, **{"model.init_from": str(workdir), "model.init_from_classes": MAPPING}
    )
    losses = {name: _first_loss(c, root) for name, c in (("scratch", scratch), ("imagenet", imagenet), ("mapped", mapped))}
    print("first losses", losses)
    assert losses["mapped"] < 0.6 * min(losses["scratch"], losses["imagenet"]), losses

    # the mapped rows are the source rows, bit for bit; everything else is the checkpoint's
    _, src = read_checkpoint(str(workdir))
    flat, report = finetune_params(
        model_config(mapped), model_flat(build_model(model_config(mapped))), str(workdir), class_map=MAPPING
    )
    for name in ("kernel", "bias"):
        new, old = flat[("conv_out32", "conv_out", name)], src[("conv_out32", "conv_out", name)]
        assert new.shape[-1] == 4 and old.shape[-1] == 5  # csfcn_tiny: one channel per class
        for i, j in ((0, 3), (1, 0), (2, 2), (3, 1)):
            np.testing.assert_array_equal(new[..., i], old[..., j])
    assert all(np.array_equal(flat[p], src[p]) for p in flat if p[0] != "conv_out32" or p[1] != "conv_out")
    assert report["mapped"] == {0: 3, 1: 0, 2: 2, 3: 1} and report["reinitialised"] == []
    assert len(report["loaded"]) == len(flat)  # every new class has its rows: the classifier counts as loaded


def test_finetune_refuses_another_architecture_and_bad_mappings(run, tmp_path):
    from convert.formats import ConversionError, finetune_params
    from csfcn.model_config import ModelConfig
    from jax_csfcn.checkpointing import model_template

    _, workdir, _ = run
    other = ModelConfig(variant="csfcn", num_classes=4)  # the run is csfcn_tiny
    fresh = {p: np.zeros(s, np.float32) for p, s in model_template(other).items()}
    with pytest.raises(ConversionError, match="cannot initialise csfcn.*(wrong shape|missing|unexpected)"):
        finetune_params(other, fresh, str(workdir))
    tiny = ModelConfig(variant="csfcn_tiny", num_classes=4)
    fresh = {p: np.zeros(s, np.float32) for p, s in model_template(tiny).items()}
    for bad, message in (("0:9", "out of range"), ("0:1,0:2", "mapped twice"), ("x", "not NEW:OLD"), ("cityscapes", "CamVid")):
        with pytest.raises(ConversionError, match=message):
            finetune_params(tiny, fresh, str(workdir), class_map=bad)
