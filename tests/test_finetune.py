"""Your own data after training, and fine-tuning across class counts.

The source model is CSFCN-Tiny trained for a few steps in PyTorch (cheap on CPU; JAX training
on a folder dataset runs in the README's commands) on a colour-mask folder dataset the test
writes (5 classes), saved as a ``.safetensors`` that carries its class table.  Then: evaluate
(with the dataset's own mask values dumped) -> convert -> predict name and colour the user's
classes; and fine-tuning onto another label space (4 classes, index masks, classes re-ordered
and merged) with a class mapping copies exactly the mapped classifier rows and starts at a
first loss far below a start from scratch or from the backbone alone (the role of an ImageNet
initialisation).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jax_csfcn.data.folder import EXAMPLE_CLASSES, write_synthetic_folder

SIZE = (48, 96)
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

    return tiny_config(root, workdir, **{"data.dataset": "folder", "model.num_classes": 5, **over})


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(dataset root, .safetensors of a CSFCN-Tiny trained 8 Adam steps on it in PyTorch, config)."""
    import torch

    from csfcn.model_config import ModelConfig
    from jax_csfcn.data.folder import FolderSource
    from torch_deploy.checkpoint import write_torch_checkpoint
    from torch_deploy.model import CSFCN
    from torch_deploy.predictor import normalise

    tmp = tmp_path_factory.mktemp("finetune")
    root = tmp / "colour"
    write_synthetic_folder(root, splits={"train": 8, "val": 2}, size=SIZE, seed=5)
    src = FolderSource(root, "train")
    config = ModelConfig(name="csfcn_tiny", num_classes=5, classes=src.table.model_classes())
    torch.manual_seed(0)
    model = CSFCN(config).train()
    x = normalise(np.stack([src[i]["image"] for i in range(len(src))]))
    y = torch.from_numpy(np.stack([src[i]["label"] for i in range(len(src))]).astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(8):
        idx = torch.arange(4) + 4 * (step % 2)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp / "source.safetensors"
    write_torch_checkpoint(path, config, {k: v.detach().numpy() for k, v in model.state_dict().items()})
    return root, path, _config(root, tmp / "unused")


def test_own_classes_evaluate_convert_predict(source, tmp_path):
    from convert.__main__ import main as convert_main
    from tools.evaluate import evaluate_checkpoint
    from tools.predict import main as predict_main

    root, st, cfg = source
    grid = tmp_path / "val.png"
    res = evaluate_checkpoint(
        cfg, str(st), split="val", dump_dir=tmp_path / "dump", dump_format="raw", pictures=grid, picture_rows=2
    )
    assert Image.open(grid).size[0] > 3 * SIZE[1] and Image.open(grid).size[1] > 2 * SIZE[0]  # + legend
    assert list(res["scores"]["iou"]) == [n for n, _, _ in EXAMPLE_CLASSES]  # the table's names
    dumped = np.asarray(Image.open(tmp_path / "dump" / "scene_0000.png"))
    colours = {tuple(c) for _, c, _ in EXAMPLE_CLASSES}
    assert dumped.shape == (*SIZE, 3) and {tuple(c) for c in dumped.reshape(-1, 3)} <= colours

    # Orbax params and back: the class table survives both formats
    assert convert_main([str(st), str(tmp_path / "flax")]) in (0, None)
    back = tmp_path / "back.safetensors"
    assert convert_main([str(tmp_path / "flax"), str(back)]) in (0, None)
    from safetensors import safe_open

    with safe_open(str(back), "np") as f:
        meta = json.loads(f.metadata()["csfcn_config"])
    assert [c[0] for c in meta["classes"]] == [n for n, _, _ in EXAMPLE_CLASSES]

    out = tmp_path / "pred"
    code = predict_main(
        ["--checkpoint", str(back), "--input", str(root / "images" / "val"), "--out", str(out), "--format", "raw"]
        + ["--quiet", "--precision", "fp32"]
    )
    assert code in (0, None)
    raw = np.asarray(Image.open(out / "labels" / "scene_0001.png"))
    colour = np.asarray(Image.open(out / "color" / "scene_0001.png"))
    assert raw.shape == (*SIZE, 3) and {tuple(c) for c in raw.reshape(-1, 3)} <= colours
    np.testing.assert_array_equal(raw, colour)  # display colours are the mask colours in this table
    assert Image.open(out / "legend.png").size[1] > 5 * 20  # one row per class of the table


def test_evaluating_on_another_label_space_is_refused(source, tmp_path):
    from jax_csfcn.step import TrainError
    from tools.evaluate import evaluate_checkpoint

    _, st, _ = source
    other = tmp_path / "other"  # five classes too, other names: the same ids would mean other things
    renamed = tuple((f"c{i}", c, m) for i, (_, c, m) in enumerate(EXAMPLE_CLASSES))
    write_synthetic_folder(other, splits={"val": 1}, size=SIZE, classes=renamed)
    with pytest.raises(TrainError, match=r"trained on classes \['flat'.*lists \['c0'"):
        evaluate_checkpoint(_config(other, tmp_path / "unused"), str(st), split="val")


def _first_losses(configs: dict, root) -> dict[str, float]:
    """Cross-entropy of each config's initial model (train-mode BN) on the whole train split, as
    step 1 sees it; one compile (the models share their graph)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from convert.formats import init_backbone, init_from_checkpoint
    from jax_csfcn.data.folder import FolderSource
    from jax_csfcn.losses import cross_entropy
    from jax_csfcn.ops import normalize_on_device
    from jax_csfcn.step import init_state, model_config

    src = FolderSource(root, "train")
    x = jnp.asarray(np.stack([src[i]["image"] for i in range(len(src))]))
    y = jnp.asarray(np.stack([src[i]["label"] for i in range(len(src))]))
    states = {n: init_state(c, model_config(c), init_backbone, init_from_checkpoint) for n, c in configs.items()}
    graphdef = next(iter(states.values()))[0]

    @jax.jit
    def loss(p, s):
        return cross_entropy(nnx.merge(graphdef, p, s)(normalize_on_device(x)), y)

    return {n: float(loss(p, s)) for n, (_, _, p, s) in states.items()}


def test_finetune_with_a_class_mapping_starts_far_lower(source, tmp_path):
    import torch

    from convert.formats import finetune_params, load_torch_model, read_checkpoint
    from jax_csfcn.checkpointing import model_flat
    from jax_csfcn.model import build_model
    from jax_csfcn.step import model_config

    _, workdir, _ = source
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
    losses = _first_losses({"scratch": scratch, "imagenet": imagenet, "mapped": mapped}, root)
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


def test_finetune_refuses_another_architecture_and_bad_mappings(source, tmp_path):
    from convert.formats import ConversionError, finetune_params
    from csfcn.model_config import ModelConfig
    from jax_csfcn.checkpointing import model_template

    _, workdir, _ = source
    other = ModelConfig(name="csfcn", num_classes=4)  # the run is csfcn_tiny
    fresh = {p: np.zeros(s, np.float32) for p, s in model_template(other).items()}
    with pytest.raises(ConversionError, match="cannot initialise csfcn.*(wrong shape|missing|unexpected)"):
        finetune_params(other, fresh, str(workdir))
    tiny = ModelConfig(name="csfcn_tiny", num_classes=4)
    fresh = {p: np.zeros(s, np.float32) for p, s in model_template(tiny).items()}
    for bad, message in (
        ("0:9", "out of range"),
        ("0:1,0:2", "mapped twice"),
        ("x", "not NEW:OLD"),
        ("cityscapes", "CamVid"),
    ):
        with pytest.raises(ConversionError, match=message):
            finetune_params(tiny, fresh, str(workdir), class_map=bad)


@pytest.mark.parametrize("new_k,old_k", [(4, 5), (11, 19), (1, 1)])
def test_class_mapping_accepts_the_last_class_and_refuses_one_past_it(new_k, old_k):
    """Train ids of a K-class model are 0..K-1: class K-1 on either side maps, class K is named out of range."""
    from csfcn.classes import class_mapping

    last = f"{new_k - 1}:{old_k - 1}"
    assert class_mapping(last, new_k, old_k) == {new_k - 1: old_k - 1}, f"{last} refused for {old_k} -> {new_k}"
    for bad in (f"{new_k}:0", f"0:{old_k}", "-1:0", "0:-1"):
        with pytest.raises(
            ValueError, match=rf"'{bad}' is out of range \(new classes 0\.\.{new_k - 1}, old 0\.\.{old_k - 1}\)"
        ):
            class_mapping(bad, new_k, old_k)
