"""The zoo models (docs/zoo.md) through the PyTorch side: factory, checkpoints, fast path, ONNX.

Torch only (no JAX compile): each model's twin with trained-like random weights
(tests/torch_checkpoints.py) on a size that is not a multiple of 32.
"""

from __future__ import annotations

import copy
import functools
import os

import torch

if not torch.cuda.is_available():  # the Triton kernels run under the interpreter on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from torch import nn  # noqa: E402
from torch_checkpoints import random_image, random_model, save  # noqa: E402

from csfcn.checkpoints import ConversionError, infer_config  # noqa: E402
from csfcn.model_config import ZOO_NAMES, ModelConfig  # noqa: E402
from torch_deploy.checkpoint import load_model, read_torch_file, write_pth  # noqa: E402
from torch_deploy.optimize import fold_conv_bn_pairs, optimize  # noqa: E402

SIZE = (1, 3, 72, 104)


def rel_l2(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


@functools.cache
def twin(name: str, k: int = 5):
    return random_model(ModelConfig(name=name, num_classes=k), seed=len(name), calib_shape=(2, 3, 64, 96))


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_upstream_pth_is_recognised_and_loads(tmp_path, name):
    """An upstream-named .pth (no metadata): the model and K come from its keys and shapes."""
    model = twin(name)
    path = tmp_path / "upstream.pth"
    write_pth(path, {k: v.numpy() for k, v in model.state_dict().items()})
    tensors, _ = read_torch_file(path)
    assert infer_config(tensors, str(path)) == ModelConfig(name=name, num_classes=5)
    loaded = load_model(path)
    x = torch.randn(SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # and through our .safetensors export, config in the metadata
    assert type(load_model(save(model, tmp_path / "m.safetensors"))) is type(model)


def test_upstream_mgseg_class_count_and_zoo_stems():
    """MGSeg's class count is read where the upstream writes it (the 1/16 head, 256 rows per
    class), not from ``hafa.predictor``, which the upstream always builds for 19; a zoo model
    reports no CSFCN stem (ICNet's is its own deep stem)."""
    shapes = {k: tuple(v.shape) for k, v in twin("mgseg", 19).state_dict().items()}
    upstream_11 = {k: np.zeros(s, np.float32) for k, s in shapes.items()}  # the upstream's MGSeg(11)
    upstream_11["conv_out16.conv_out.weight"] = np.zeros((11 * 256, 64, 1, 1), np.float32)
    upstream_11["conv_out16.conv_out.bias"] = np.zeros(11 * 256, np.float32)
    with pytest.raises(ConversionError, match=r"mgseg for 11 classes .* hafa\.predictor\.weight has 19"):
        infer_config(upstream_11, "mgseg11.pth")
    ours_11 = {k: np.zeros(tuple(v.shape), np.float32) for k, v in twin("mgseg", 11).state_dict().items()}
    assert infer_config(ours_11).num_classes == 11
    odd = dict(ours_11, **{"conv_out16.conv_out.weight": np.zeros((11 * 256 + 3, 64, 1, 1), np.float32)})
    with pytest.raises(ConversionError, match="not a multiple of 256"):
        infer_config(odd)
    for name in ZOO_NAMES:
        config = infer_config({k: np.zeros(tuple(v.shape)) for k, v in twin(name).state_dict().items()})
        assert config.stem is None and "stem" not in config.as_dict() and config.label == name, config
    # older metadata wrote the config default "torchvision" for a zoo model: still read, as no stem
    assert ModelConfig.from_mapping({"name": "icnet", "num_classes": 5, "stem": "torchvision"}).stem is None
    assert ModelConfig("csfcn", 5).stem == "torchvision" and ModelConfig("csfcn", 5).label == "csfcn, stem torchvision"


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_fast_path_is_the_same_function(name):
    """optimize: the folded graph equals the twin in fp64 (the algebra is exact) and in fp32 to
    rounding; labels agree with the twin's argmax."""
    model = twin(name)
    model64 = copy.deepcopy(model).double()
    x = torch.randn(SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model64(x.double())
        y64 = optimize(model64, "fp64", "logits", kernels=False)(x.double())
        y32 = optimize(model, "fp32", "logits", kernels=False)(x)
        labels = optimize(model, "fp32", "labels", kernels=False)(x)
    assert rel_l2(y64, ref) <= 1e-12
    assert rel_l2(y32, ref) <= 1e-4
    assert labels.dtype == torch.uint8 and labels.shape == (1, *SIZE[2:])
    assert float((labels.long() == ref.argmax(1)).double().mean()) >= 0.999


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_folding_removes_exactly_the_foldable_batchnorms(name):
    """Every BN left after folding is one the data flow keeps (documented per model): none but
    SwiftNet's pre-activation BNs."""
    folded = fold_conv_bn_pairs(twin(name))
    left = [n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    total = sum(isinstance(m, nn.BatchNorm2d) for m in twin(name).modules())
    if name == "swiftnet":  # BN -> ReLU -> conv units: all but logits.norm, which reads a conv
        assert len(left) == 11 and total == 32 and "logits.norm" not in left, left
    elif name == "sfanet":  # FEB's first BN: the raw depthwise output also goes into the concat
        assert left == ["sfa4.feb.bn_1", "sfa3.feb.bn_1"], left
    else:
        assert left == [], left


def test_sfanet_alignment_runs_through_sfc_fuse(monkeypatch):
    """SFANet's four FAA samplings go through CSFCN's sfc_fuse kernel (one group, zero cp
    offsets and gates) when optimize uses the kernels; same function as the twin."""
    import kernels.sfc_fuse as k

    calls = []
    real = k.sfc_fuse
    monkeypatch.setattr(k, "sfc_fuse", lambda *a, **kw: calls.append(a[2].shape) or real(*a, **kw))
    model = twin("sfanet")
    x = torch.randn(SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(x.double())
        y = optimize(model, "fp32", "logits", kernels=True, channels_last=False)(x)
    assert len(calls) == 4 and all(c[1] == 6 for c in calls)  # r: 4G + 2 channels, G = 1
    assert rel_l2(y, ref) <= 1e-4


def test_predict_cli_runs_a_zoo_checkpoint(tmp_path):
    from PIL import Image

    from tools.predict import main

    path = save(twin("bisenetv1", 19), tmp_path / "bisenet.safetensors")  # 19: the Cityscapes palette
    Image.fromarray(random_image(np.random.default_rng(0), 60, 90)).save(tmp_path / "a.png")
    rc = main(["--checkpoint", path, "--input", str(tmp_path / "a.png"), "--out", str(tmp_path / "pred"), "--quiet"])
    assert rc == 0
    assert any(p.suffix == ".png" for p in (tmp_path / "pred").rglob("*"))


def _export(name, tmp_path):
    from tools.export_onnx import export_onnx

    path = save(twin(name), tmp_path / f"{name}.safetensors")
    return export_onnx(path, tmp_path / f"{name}.onnx", size=(64, 96))


def test_onnx_export_of_a_zoo_model(tmp_path):
    """SwiftNet: the model with BatchNorms that cannot fold (exported as BatchNormalization)."""
    pytest.importorskip("onnxruntime")
    report = _export("swiftnet", tmp_path)
    assert "BatchNormalization" in report["ops"]
    assert all(c["rel_l2"] <= 1e-4 for c in report["checks"])


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ZOO_NAMES if n != "swiftnet"])
def test_onnx_export_of_every_zoo_model(tmp_path, name):
    pytest.importorskip("onnxruntime")
    report = _export(name, tmp_path)
    # the export's own bound (tools/export_onnx.py): 3x the twin's fp32 distance to fp64, >= 1e-4
    assert all(c["rel_l2"] <= c["max_rel_l2"] and c["argmax_agreement"] >= 0.999 for c in report["checks"]), report
    assert ("GridSample" in report["ops"]) == (name == "sfanet")


def test_benchmark_compares_models_in_one_run(tmp_path):
    from tools.benchmark import main

    out = tmp_path / "cmp.json"
    rc = main(["--model", "csfcn_tiny,swiftnet", "--size", "64", "96", "--repeats", "2", "--warmup", "1",
               "--device", "cpu", "--json", str(out)])  # fmt: skip
    assert rc == 0
    import json

    rows = json.loads(out.read_text())["comparison"]
    assert {r["model"] for r in rows} == {"csfcn_tiny", "swiftnet"}
    assert all(r["median_ms"] > 0 and r["params"] > 1e6 for r in rows)
    assert os.path.getsize(out) > 0
