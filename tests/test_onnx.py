"""ONNX export: BN folding, the shape-generic ops, static and dynamic export checked by onnxruntime."""

from __future__ import annotations

import copy
import os
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import rel_l2
from torch_checkpoints import make_checkpoint, random_model

from csfcn.model_config import ModelConfig
from tools.export_onnx import ExportError, export_onnx
from tools.export_onnx import main as export_main
from torch_deploy import load_model
from torch_deploy.model import pyramid_pool
from torch_deploy.onnx_graph import ExportOps, export_module, fold_batchnorms, pyramid_pool_masked


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "csfcn19.safetensors", seed=5)


def _ort_vs_twin(path, twin, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = twin(x).numpy()
    return rel_l2(got, ref), float((got.argmax(1) == ref.argmax(1)).mean())


@pytest.mark.parametrize("variant,stem", [("csfcn", "torchvision"), ("csfcn_tiny", "deep")])
def test_fold_batchnorms(variant, stem):
    twin = random_model(ModelConfig(name=variant, num_classes=11, stem=stem), seed=1)
    folded = fold_batchnorms(twin)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in twin.modules())  # the twin is untouched
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        # a wrong fold is an O(1) error; fp32 rounding of the folded weights, amplified by the
        # trained-like random SFC offsets, stays around 1e-5
        assert rel_l2(folded(x), twin(x)) < 1e-4
        assert (folded(x).argmax(1) == twin(x).argmax(1)).float().mean() >= 0.999


@pytest.mark.parametrize("shape", [(2, 5, 2, 4), (1, 3, 3, 5), (1, 4, 7, 3), (1, 2, 4, 13), (1, 2, 6, 6), (1, 1, 1, 1)])
def test_masked_pyramid_pool_equals_adaptive_pooling(shape):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(sum(shape)))
    pooled, valid = pyramid_pool_masked(x.float())
    ref = pyramid_pool(x)
    assert valid.dtype == torch.bool and int(valid.sum()) == ref.shape[2]
    torch.testing.assert_close(pooled[..., valid].double(), ref, rtol=1e-5, atol=1e-6)


def test_dynamic_module_equals_twin():
    """The exported module for --dynamic is the twin's own tree, BN folded, on ExportOps; the twin
    itself keeps its reference backend."""
    twin = random_model(ModelConfig(num_classes=19), seed=4)
    exported = export_module(twin, dynamic=True)
    assert type(exported) is type(twin) and exported.ops.name == "export" and twin.ops.name == "reference"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in exported.modules())
    dyn = copy.deepcopy(twin).use_ops(ExportOps()).eval()  # the shape-generic ops alone, BN unfolded
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for shape in [(1, 3, 64, 128), (2, 3, 40, 56), (1, 3, 96, 48)]:
            x = torch.randn(shape, generator=gen)
            assert rel_l2(dyn(x), twin(x)) < 1e-5


def test_static_export_cli(ckpt, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert export_main(["--checkpoint", ckpt, "--out", str(out), "--size", "64", "128"]) == 0
    text = capsys.readouterr().out
    rel, agree = map(float, re.search(r"rel L2 (\S+) .*argmax agreement (\S+)%", text).groups())
    assert rel <= 1e-4 and agree >= 99.9
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]  # no temporary file left
    graph = onnx.load(str(out))
    ops = {n.op_type for n in graph.graph.node}
    assert "GridSample" in ops and "BatchNormalization" not in ops
    assert "DepthToSpace" in ops or "Transpose" in ops  # the pixel shuffle
    assert graph.graph.input[0].type.tensor_type.shape.dim[2].dim_value == 64
    # an independent check on a fresh input (not the CLI's own)
    x = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(11))
    rel, agree = _ort_vs_twin(out, load_model(ckpt), x)
    print(f"static 64x128: rel L2 {rel:.2e}, argmax agreement {agree:.5f}")
    assert rel <= 1e-4 and agree >= 0.999


def test_dynamic_export(ckpt, tmp_path):
    out = tmp_path / "dyn.onnx"
    report = export_onnx(ckpt, out, size=(64, 128), dynamic=True)
    assert report["dynamic"] and report["opset"] == 18 and len(report["checks"]) == 2
    assert {tuple(c["shape"]) for c in report["checks"]} == {(1, 3, 64, 128), (2, 3, 48, 152)}
    for c in report["checks"]:
        assert c["rel_l2"] <= 1e-4 and c["argmax_agreement"] >= 0.999
    twin = load_model(ckpt)
    gen = torch.Generator().manual_seed(12)
    for shape in [(1, 3, 40, 96), (3, 3, 72, 72)]:  # sizes and batches the export never saw
        rel, agree = _ort_vs_twin(out, twin, torch.randn(shape, generator=gen))
        print(f"dynamic {shape}: rel L2 {rel:.2e}, argmax agreement {agree:.5f}")
        assert rel <= 1e-4 and agree >= 0.999


def test_export_errors(ckpt, tmp_path, capsys):
    with pytest.raises(ExportError, match="multiples of 8"):
        export_onnx(ckpt, tmp_path / "a.onnx", size=(60, 128))
    with pytest.raises(ExportError, match="--opset 16: use >= 18"):
        export_onnx(ckpt, tmp_path / "a.onnx", size=(64, 128), opset=16)
    with pytest.raises(ExportError, match="is a folder"):
        export_onnx(ckpt, tmp_path, size=(64, 128))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="cannot write there"):
        export_onnx(ckpt, tmp_path / "file" / "a.onnx", size=(64, 128))
    (tmp_path / "weights.safetensors").write_bytes(b"\x00" * 64)
    assert export_main(["--checkpoint", str(tmp_path / "weights.safetensors"), "--out", str(tmp_path / "b.onnx")]) == 2
    assert "not a readable safetensors" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["file", "weights.safetensors"]  # no partial .onnx


def test_failed_check_writes_nothing(ckpt, tmp_path, monkeypatch):
    import tools.export_onnx as E

    monkeypatch.setattr(E, "MAX_REL_L2", 0.0)  # no export can meet this
    monkeypatch.setattr(E, "FP32_FACTOR", 0.0)
    with pytest.raises(ExportError, match="disagrees with the PyTorch twin"):
        E.export_onnx(ckpt, tmp_path / "m.onnx", size=(32, 32))
    assert os.listdir(tmp_path) == []
    np.testing.assert_equal(E.MAX_REL_L2, 0.0)


def test_the_check_bound_is_the_twins_own_fp32_error(ckpt, tmp_path):
    """Each check's bound is FP32_FACTOR x the twin's fp32 distance to fp64 on that input (at
    least MAX_REL_L2), and onnxruntime meets it with room: ORT's own fp32 error is of the twin's order."""
    import tools.export_onnx as E

    report = E.export_onnx(ckpt, tmp_path / "m.onnx", size=(32, 64))
    for c in report["checks"]:
        assert 1e-9 < c["twin_vs_fp64"] < 1e-4, c  # fp32 rounding, measured (not zero, not a bug's size)
        assert c["max_rel_l2"] == max(E.MAX_REL_L2, E.FP32_FACTOR * c["twin_vs_fp64"]), c
        assert c["rel_l2"] <= E.FP32_FACTOR * max(c["twin_vs_fp64"], 1e-7), c


def test_cpu_peers_run_our_onnx_and_agree_with_the_twin(ckpt):
    """torch_deploy.cpu_peers: onnxruntime (and OpenVINO where installed) on our export, labels out,
    equal to the twin's argmax; a missing runtime is named with its extra."""
    from torch_deploy.cpu_peers import OnnxPeer, peer_missing

    twin = load_model(ckpt)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ref = twin(x).argmax(1)
    runs = [("onnxruntime", "fp32")] + ([("openvino", "fp32")] if peer_missing("openvino") is None else [])
    for runtime, precision in runs:
        peer = OnnxPeer(twin, runtime, precision)
        got = peer(x)
        assert got.shape == ref.shape and peer(x).shape == ref.shape  # the second call reuses the session
        assert (got == ref).float().mean() >= 0.999, runtime
    if peer_missing("openvino") is not None:
        assert "pip install 'csfcn[openvino]'" in peer_missing("openvino")
    with pytest.raises(ValueError, match="onnxruntime runs our ONNX in fp32"):
        OnnxPeer(twin, "onnxruntime", "bf16")
