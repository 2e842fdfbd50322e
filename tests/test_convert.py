"""The converter: round trips, every file format, ImageNet backbones, strict errors, CLI."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_csfcn
import torch_deploy
from convert import (
    ConversionError,
    flax_to_torch,
    infer_config,
    load_flax_model,
    load_imagenet_backbone,
    load_torch_model,
    read_checkpoint,
    save_flax_model,
    torch_to_flax,
    write_checkpoint,
)
from convert.__main__ import main as convert_main
from csfcn.model_config import ModelConfig
from jax_csfcn import layers
from jax_csfcn.checkpointing import flatten_state, model_flat, model_template, set_model_flat
from jax_csfcn.model import build_model
from torch_deploy.model import CSFCN as TorchCSFCN

ROOT = Path(__file__).resolve().parents[1]


def random_upstream_state_dict(rng, config: ModelConfig) -> dict[str, torch.Tensor]:
    """An upstream-named state_dict with every tensor (BN stats included) random."""
    sd = TorchCSFCN(config).state_dict()
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(int(rng.integers(0, 10**6)), dtype=torch.int64)
        elif k.endswith("running_var"):
            out[k] = torch.from_numpy(rng.uniform(0.5, 2.0, v.shape).astype(np.float32))
        else:
            out[k] = torch.from_numpy(rng.standard_normal(v.shape).astype(np.float32))
    return out


def assert_flat_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


@pytest.mark.parametrize(
    "variant,k,stem", [("csfcn", 19, "torchvision"), ("csfcn_tiny", 11, "deep"), ("csfcn", 19, "deep128")]
)
def test_flax_torch_flax_round_trip_is_bit_exact(rng, variant, k, stem):
    config = ModelConfig(variant, k, stem)
    flat = {p: rng.standard_normal(s).astype(np.float32) for p, s in model_template(config).items()}
    for p in flat:
        if p[-1] == "num_batches_tracked":
            flat[p] = np.asarray(rng.integers(0, 1000), np.int32)
    back, missing, unexpected = torch_to_flax(model_template(config), flax_to_torch(flat))
    assert not missing and not unexpected
    assert_flat_equal(back, flat)


@pytest.mark.parametrize(
    "variant,stem,keys", [("csfcn", "torchvision", 168), ("csfcn_tiny", "torchvision", 166), ("csfcn", "deep128", 186)]
)
def test_upstream_pth_round_trip_is_exact(tmp_path, rng, variant, stem, keys):
    config = ModelConfig(name=variant, num_classes=19, stem=stem)
    sd = random_upstream_state_dict(rng, config)
    assert len(sd) == keys
    src, dst = tmp_path / "upstream.pth", tmp_path / "again.pth"
    torch.save(sd, src)
    cfg, flat = read_checkpoint(src)
    assert cfg == config
    write_checkpoint(dst, cfg, flat)
    again = torch.load(dst, weights_only=True)
    assert list(again) == list(sd)  # same keys, in the upstream order
    for k in sd:
        assert again[k].dtype == sd[k].dtype, k
        assert torch.equal(again[k], sd[k]), k
    # and it loads into the twin with strict=True
    TorchCSFCN(config).load_state_dict(again, strict=True)


def test_all_formats_carry_config_and_weights(tmp_path, rng):
    config = ModelConfig("csfcn_tiny", 7, "torchvision")
    sd = random_upstream_state_dict(rng, config)
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "wrapped.pth")
    _, flat = read_checkpoint(tmp_path / "wrapped.pth")  # DataParallel + wrapper dict unwrapped
    write_checkpoint(tmp_path / "m.safetensors", config, flat)
    write_checkpoint(tmp_path / "flax", config, flat)
    for path in ("m.safetensors", "flax"):
        cfg, again = read_checkpoint(tmp_path / path)
        assert cfg == config
        assert_flat_equal(again, flat)
        tm = load_torch_model(tmp_path / path)
        assert not tm.training and tm.config == config
        for k, v in tm.state_dict().items():
            assert torch.equal(v, sd[k]), k
    for path in ("flax", "m.safetensors"):
        fm = load_flax_model(tmp_path / path)
        assert fm.config == config
        assert_flat_equal(model_flat(fm), flat)
        assert fm.resnet.bn1.use_running_average  # eval mode
    # each side's own loader reads its own formats and points at the bridge for the others
    assert_flat_equal(model_flat(jax_csfcn.load_model(tmp_path / "flax")), flat)
    assert torch_deploy.load_model(tmp_path / "m.safetensors").config == config
    with pytest.raises(ConversionError, match="convert.load_torch_model"):
        torch_deploy.load_model(tmp_path / "flax")
    with pytest.raises(ConversionError, match="convert.load_flax_model"):
        jax_csfcn.load_model(tmp_path / "m.safetensors")


def test_save_flax_model_writes_orbax_and_refuses_nonempty_dir(tmp_path):
    model = build_model({"name": "csfcn", "num_classes": 2})
    save_flax_model(tmp_path / "export", model)
    assert (tmp_path / "export" / "csfcn_config.json").is_file()
    with pytest.raises(FileExistsError, match="not empty"):
        save_flax_model(tmp_path / "export", model)


def _sd_and_path(tmp_path, rng, mutate):
    config = ModelConfig()
    sd = random_upstream_state_dict(rng, config)
    mutate(sd)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    return path


def test_missing_tensor_is_named(tmp_path, rng):
    path = _sd_and_path(tmp_path, rng, lambda sd: sd.pop("cfc.value_conv.bias"))
    with pytest.raises(ConversionError, match=r"missing 1: cfc\.value_conv\.bias"):
        read_checkpoint(path)
    _, flat = read_checkpoint(path, strict=False)  # the rest loads
    assert ("cfc", "value_conv", "kernel") in flat


def test_unexpected_tensor_is_named(tmp_path, rng):
    path = _sd_and_path(tmp_path, rng, lambda sd: sd.__setitem__("sfc.extra.weight", torch.zeros(3)))
    with pytest.raises(ConversionError, match=r"unexpected 1: sfc\.extra\.weight"):
        read_checkpoint(path)


def test_wrong_shape_is_named_even_without_strict(tmp_path, rng):
    path = _sd_and_path(tmp_path, rng, lambda sd: sd.__setitem__("sfc.conv_8.conv.weight", torch.zeros(128, 128, 1, 1)))
    with pytest.raises(
        ConversionError,
        match=r"sfc\.conv_8\.conv\.weight: checkpoint has \(128, 128, 1, 1\), model expects \(128, 128, 3, 3\)",
    ):
        read_checkpoint(path, strict=False)


def test_config_inference_and_its_errors(rng):
    sd = {k: v.numpy() for k, v in random_upstream_state_dict(rng, ModelConfig("csfcn", 11, "deep")).items()}
    assert infer_config(sd) == ModelConfig("csfcn", 11, "deep")
    # the two deep stems have the same keys: their conv shapes tell them apart
    wide = {k: v.numpy() for k, v in random_upstream_state_dict(rng, ModelConfig("csfcn", 11, "deep128")).items()}
    assert {k for k in wide if k.startswith("resnet.conv1.")} == {k for k in sd if k.startswith("resnet.conv1.")}
    assert infer_config(wide) == ModelConfig("csfcn", 11, "deep128")
    wide["resnet.conv1.6.weight"] = np.zeros((96, 64, 3, 3), np.float32)
    with pytest.raises(ConversionError, match=r"unknown backbone stem \(.*resnet\.conv1\.6\.weight \[96, 64, 3, 3\]"):
        infer_config(wide)
    tiny = {k: v.numpy() for k, v in random_upstream_state_dict(rng, ModelConfig("csfcn_tiny", 3)).items()}
    odd = {**tiny, "resnet.conv1.weight": np.zeros((64, 3, 3, 3), np.float32)}  # 3x3 where torchvision has 7x7
    with pytest.raises(ConversionError, match=r"unknown backbone stem.*torchvision: conv1\.weight \[64, 3, 7, 7\]"):
        infer_config(odd)
    assert infer_config(tiny) == ModelConfig("csfcn_tiny", 3)
    sd["conv_out32.conv_out.bias"] = np.zeros(100, np.float32)
    with pytest.raises(ConversionError, match="not a multiple of 64"):
        infer_config(sd)
    tiny["sfc.cp1x1.weight"] = np.zeros((32, 128, 1, 1), np.float32)
    with pytest.raises(ConversionError, match="ambiguous variant"):
        infer_config(tiny)
    with pytest.raises(ConversionError, match="not a CSFCN state_dict"):
        infer_config({"a": np.zeros(1)})


def test_unreadable_and_unknown_files(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ConversionError, match="broken.pth: not a readable PyTorch checkpoint"):
        read_checkpoint(bad)
    bad_st = tmp_path / "broken.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(ConversionError, match="broken.safetensors: not a readable safetensors"):
        read_checkpoint(bad_st)
    with pytest.raises(ConversionError, match="unknown checkpoint type"):
        read_checkpoint(tmp_path / "weights.npz")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(ConversionError, match="not a csfcn Flax checkpoint"):
        read_checkpoint(tmp_path / "emptydir")


def imagenet_state_dict(rng, stem="torchvision", with_nbt=False) -> dict[str, torch.Tensor]:
    """A torchvision/timm-named ResNet-18 with an fc layer (and old-style: no num_batches_tracked)."""
    sd = random_upstream_state_dict(rng, ModelConfig(stem=stem))
    out = {k[len("resnet.") :]: v for k, v in sd.items() if k.startswith("resnet.")}
    if not with_nbt:
        out = {k: v for k, v in out.items() if not k.endswith("num_batches_tracked")}
    out["fc.weight"] = torch.randn(1000, 512)
    out["fc.bias"] = torch.randn(1000)
    return out


@pytest.mark.parametrize("stem", ["torchvision", "deep", "deep128"])
def test_imagenet_backbone_loads_by_name(tmp_path, rng, stem):
    config = ModelConfig(stem=stem)
    sd = imagenet_state_dict(rng, stem)
    torch.save(sd, tmp_path / "resnet18.pth")
    flat = model_flat(build_model(config))
    new, n = load_imagenet_backbone(config, flat, tmp_path / "resnet18.pth")
    assert n == len(sd) - 2  # everything but fc
    torch_sd = flax_to_torch(new)
    for k, v in sd.items():
        if not k.startswith("fc."):
            np.testing.assert_array_equal(torch_sd["resnet." + k], v.numpy(), err_msg=k)
    np.testing.assert_array_equal(new[("cfc", "query_conv", "kernel")], flat[("cfc", "query_conv", "kernel")])
    with pytest.raises(ConversionError, match="ImageNet ResNet-18"):
        read_checkpoint(tmp_path / "resnet18.pth")
    if stem == "deep128":  # the CLI takes the stem from the file's conv shapes when --stem is not given
        assert convert_main([str(tmp_path / "resnet18.pth"), str(tmp_path / "init.pth"), "--num-classes", "3"]) == 0
        assert read_checkpoint(tmp_path / "init.pth")[0] == ModelConfig("csfcn", 3, "deep128")


def test_imagenet_backbone_rejects_unexpected_and_wrong_stem(tmp_path, rng):
    sd = imagenet_state_dict(rng)
    sd["layer2.0.se.fc.weight"] = torch.zeros(4, 4)
    torch.save(sd, tmp_path / "r.pth")
    config = ModelConfig()
    with pytest.raises(ConversionError, match=r"unexpected 1: layer2\.0\.se\.fc\.weight"):
        load_imagenet_backbone(config, model_flat(build_model(config)), tmp_path / "r.pth")
    flat = model_flat(build_model(config))
    # a known stem other than the model's: named, with the setting that fixes it
    torch.save(imagenet_state_dict(rng, "deep"), tmp_path / "deep.pth")
    with pytest.raises(
        ConversionError, match=r"its stem is 'deep' \(conv1\.0\.weight \[32, 3, 3, 3\].*the model's is 'torchvision'"
    ):
        load_imagenet_backbone(config, flat, tmp_path / "deep.pth")
    new, _ = load_imagenet_backbone(config, flat, tmp_path / "deep.pth", strict=False)  # the rest loads
    np.testing.assert_array_equal(new[("resnet", "conv1", "kernel")], flat[("resnet", "conv1", "kernel")])
    torch.save(imagenet_state_dict(rng, "deep128"), tmp_path / "deep128.pth")
    deep = ModelConfig(stem="deep")
    with pytest.raises(ConversionError, match=r"its stem is 'deep128'.*--stem deep128"):
        load_imagenet_backbone(deep, {}, tmp_path / "deep128.pth")
    # the 128-channel stem's layer1 does not fit a 64-channel one, strict or not
    with pytest.raises(ConversionError, match=r"layer1\.0\.conv1\.weight: checkpoint has \(64, 128, 3, 3\)"):
        load_imagenet_backbone(deep, {}, tmp_path / "deep128.pth", strict=False)


def test_cli_converts_every_direction(tmp_path, rng, capsys):
    config = ModelConfig("csfcn", 19)
    torch.save(random_upstream_state_dict(rng, config), tmp_path / "up.pth")
    assert convert_main([str(tmp_path / "up.pth"), str(tmp_path / "flax")]) == 0
    out = capsys.readouterr().out
    assert "Flax params (Orbax directory)" in out
    assert "total            168   13,368,512" in out
    assert convert_main([str(tmp_path / "flax"), str(tmp_path / "m.safetensors")]) == 0
    assert convert_main([str(tmp_path / "m.safetensors"), str(tmp_path / "back.pth")]) == 0
    a, b = torch.load(tmp_path / "up.pth", weights_only=True), torch.load(tmp_path / "back.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
    capsys.readouterr()

    torch.save(imagenet_state_dict(rng), tmp_path / "resnet18.pth")
    args = [str(tmp_path / "resnet18.pth"), str(tmp_path / "init.safetensors"), "--num-classes", "11"]
    assert convert_main(args) == 0
    # 120 backbone tensors less 20 num_batches_tracked that old torchvision files lack
    assert "ImageNet backbone: 100 tensors" in capsys.readouterr().out
    assert torch_deploy.load_model(tmp_path / "init.safetensors").config.num_classes == 11

    assert convert_main([str(tmp_path / "missing.pth"), str(tmp_path / "x.safetensors")]) == 1
    assert "missing.pth: no such checkpoint file" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


# ---- the layers a model zoo needs: each through the table and against its PyTorch module ----


class TorchSeparable(torch.nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.depthwise = torch.nn.Conv2d(cin, cin, k, stride, k // 2, groups=cin, bias=False)
        self.pointwise = torch.nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class TorchECA(torch.nn.Module):
    def __init__(self, k):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x):  # the channel axis is the Conv1d's length axis
        gate = torch.sigmoid(self.conv(x.mean((2, 3))[:, None, :]))
        return x * gate[:, 0, :, None, None]


def _zoo_pair():
    """The same small layers on both sides, under the same names; each with how its input and
    output change layout (NHWC <-> NCHW, (N, L, C) <-> (N, C, L), or unchanged)."""

    def flax_layers():
        rngs = nnx.Rngs(0)
        return nnx.Dict(
            {
                "grouped": layers.conv2d(6, 9, 3, groups=3, bias=True, rngs=rngs),
                "depthwise": layers.depthwise_conv2d(5, 3, stride=2, bias=True, rngs=rngs),
                "dilated": layers.conv2d(3, 4, 3, dilation=2, rngs=rngs),
                "dilated_dw": layers.depthwise_conv2d(4, 3, dilation=5, rngs=rngs),
                "separable": layers.SeparableConv2d(4, 7, 3, stride=2, rngs=rngs),
                "linear": layers.linear(7, 4, rngs=rngs),
                "conv1d": layers.conv1d(3, 4, 5, bias=True, rngs=rngs),
                "eca": layers.ECA(5, rngs=rngs),
            }
        )

    torch_layers = {
        "grouped": torch.nn.Conv2d(6, 9, 3, padding=1, groups=3),
        "depthwise": torch.nn.Conv2d(5, 5, 3, stride=2, padding=1, groups=5),
        "dilated": torch.nn.Conv2d(3, 4, 3, padding=2, dilation=2, bias=False),  # ICNet's
        "dilated_dw": torch.nn.Conv2d(4, 4, 3, padding=5, dilation=5, groups=4, bias=False),  # SFANet's FEB
        "separable": TorchSeparable(4, 7, 3, 2),
        "linear": torch.nn.Linear(7, 4),
        "conv1d": torch.nn.Conv1d(3, 4, 5, padding=2),
        "eca": TorchECA(5),
    }
    image = (lambda a: a.transpose(0, 3, 1, 2), lambda a: a.transpose(0, 2, 3, 1))
    seq = (lambda a: a.transpose(0, 2, 1), lambda a: a.transpose(0, 2, 1))
    same = (lambda a: a, lambda a: a)
    inputs = {  # input shape on the Flax side (odd sizes) and the layout change
        "grouped": ((2, 7, 9, 6), image),
        "depthwise": ((1, 7, 9, 5), image),
        "dilated": ((1, 9, 11, 3), image),
        "dilated_dw": ((1, 12, 13, 4), image),
        "separable": ((1, 9, 5, 4), image),
        "linear": ((2, 3, 7), same),
        "conv1d": ((2, 11, 3), seq),
        "eca": ((2, 5, 3, 13), image),
    }
    # shapes only: the test writes every value, and initialising would cost seconds of compiles
    return nnx.eval_shape(flax_layers), torch.nn.ModuleDict(torch_layers), inputs


def test_zoo_layers_round_trip_bit_exact_and_compute_what_torch_computes(rng):
    """Grouped, depthwise, dilated and separable convs, Linear, Conv1d with k = 5 and ECA: random params
    go Flax -> PyTorch (strict load) -> Flax bit for bit, and each layer's output and gradients
    (input and every parameter, the latter mapped by the same table) equal PyTorch's in fp64."""
    fmods, tmods, inputs = _zoo_pair()
    template = flatten_state(nnx.to_pure_dict(nnx.state(fmods)), leaf=lambda v: tuple(v.shape))
    flat = {p: rng.standard_normal(shape).astype(np.float32) for p, shape in template.items()}
    set_model_flat(fmods, flat)
    torch_shapes = {k: tuple(v.shape) for k, v in tmods.state_dict().items()}
    tensors = flax_to_torch(flat, torch_shapes)
    assert tensors["linear.weight"].shape == (4, 7) and tensors["eca.conv.weight"].shape == (1, 1, 5)
    assert tensors["separable.depthwise.weight"].shape == (4, 1, 3, 3)
    tmods.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
    back, missing, unexpected = torch_to_flax(template, {k: v.numpy() for k, v in tmods.state_dict().items()})
    assert not missing and not unexpected
    assert_flat_equal(back, flat)

    tmods.double()
    with jax.enable_x64(True):
        for name, (shape, (to_torch, to_flax)) in inputs.items():
            x = rng.standard_normal(shape)
            graphdef, state = nnx.split(fmods[name])
            state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state)
            xt = torch.from_numpy(to_torch(x).copy()).requires_grad_()
            ref = tmods[name](xt)
            cot = rng.standard_normal(tuple(ref.shape))
            ref.backward(torch.from_numpy(cot))
            cot = to_flax(cot)

            @jax.jit
            def forward_and_vjp(s, a, c, graphdef=graphdef):
                out, vjp = jax.vjp(lambda s, a: nnx.merge(graphdef, s)(a), s, a)
                return out, *vjp(c)

            out, gstate, gx = forward_and_vjp(state, jnp.asarray(x), jnp.asarray(cot))
            np.testing.assert_allclose(np.asarray(out), to_flax(ref.detach().numpy()), rtol=0, atol=1e-12, err_msg=name)
            np.testing.assert_allclose(np.asarray(gx), to_flax(xt.grad.numpy()), rtol=0, atol=1e-12, err_msg=name)
            grads = flax_to_torch(
                flatten_state(nnx.to_pure_dict(gstate)),
                torch_shapes={k: tuple(v.shape) for k, v in tmods[name].state_dict().items()},
            )
            named = dict(tmods[name].named_parameters())
            assert grads.keys() == named.keys(), name
            for k, g in grads.items():
                np.testing.assert_allclose(g, named[k].grad.numpy(), rtol=0, atol=1e-12, err_msg=f"{name}.{k}")


def test_dense_kernel_layouts_and_their_errors():
    """A dense kernel is written as CSFCN's Conv1d [o, i, 1] unless the target shapes say
    Linear; both are read back; a layout that fits neither is named."""
    a = np.arange(12, dtype=np.float32).reshape(3, 4)  # [in, out]
    path = ("head", "fc", "kernel")
    assert flax_to_torch({path: a})["head.fc.weight"].shape == (4, 3, 1)
    np.testing.assert_array_equal(flax_to_torch({path: a}, {"head.fc.weight": (4, 3)})["head.fc.weight"], a.T)
    for stored in (a.T, a.T[:, :, None]):
        back, _, _ = torch_to_flax({path: (3, 4)}, {"head.fc.weight": stored})
        np.testing.assert_array_equal(back[path], a)
    with pytest.raises(
        ConversionError, match=r"head\.fc\.weight: Flax shape \(3, 4\) has no PyTorch layout of shape \(3, 4\)"
    ):
        flax_to_torch({path: a}, {"head.fc.weight": (3, 4)})
    with pytest.raises(
        ConversionError, match=r"head\.fc\.weight: checkpoint has \(3, 4\), model expects \(4, 3, 1\) or \(4, 3\)"
    ):
        torch_to_flax({path: (3, 4)}, {"head.fc.weight": a})
    # Conv1d kernel 1 is read into a Conv1d ([1, in, out]) or a dense ([in, out]) template alike
    k1 = np.arange(6, dtype=np.float32).reshape(2, 3, 1)  # [out, in, 1]
    assert torch_to_flax({path: (1, 3, 2)}, {"head.fc.weight": k1})[0][path].shape == (1, 3, 2)
    # a grouped conv's checkpoint with the wrong group count
    with pytest.raises(
        ConversionError, match=r"g\.weight: checkpoint has \(9, 6, 3, 3\), model expects \(9, 2, 3, 3\)"
    ):
        torch_to_flax({("g", "kernel"): (3, 3, 2, 9)}, {"g.weight": np.zeros((9, 6, 3, 3), np.float32)})


def _tiny_pth(path) -> str:
    torch.save(TorchCSFCN(ModelConfig("csfcn_tiny", 3)).state_dict(), path)
    return str(path)


def test_a_full_disk_under_safetensors_is_one_line(tmp_path):
    """safetensors reports a failed write as its own SafetensorError ("I/O error: ... (os error
    28)"), which once escaped the OSError handler as a 36-line traceback: now one line. The real
    library fails here under a file-size limit (ulimit -f, EFBIG), in a child process."""
    import subprocess
    import sys

    from safetensors import SafetensorError

    from torch_deploy.checkpoint import _translate_write_error

    full = _translate_write_error(
        SafetensorError("Error while serializing: I/O error: No space left (os error 28)"), "m"
    )
    assert isinstance(full, OSError) and full.errno == 28 and full.filename == "m"
    src, dst = _tiny_pth(tmp_path / "up.pth"), tmp_path / "new.safetensors"
    child = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "from convert.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    res = subprocess.run([sys.executable, "-c", child, src, str(dst)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 1, res.stderr[-3000:]
    assert res.stderr.startswith(f"error: File too large writing {dst}: free space") and res.stderr.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["up.pth"]  # nothing partial kept


def test_a_killed_writes_temporary_file_is_removed_by_the_next_write(tmp_path, capsys):
    """SIGKILL in the middle of a write leaves its hidden temporary file (nothing can remove it
    then): the next write of the same target removes it and says so; a temporary file in use
    (locked), a fresh one and names of another pattern stay."""
    import fcntl
    import subprocess
    import sys

    src, dst = _tiny_pth(tmp_path / "up.pth"), tmp_path / "model.safetensors"
    child = (
        "import os, signal, sys\n"
        "from csfcn.files import write_atomic\n"
        "def half(tmp):\n"
        "    open(tmp, 'wb').write(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "write_atomic(sys.argv[1], half)\n"
    )
    res = subprocess.run([sys.executable, "-c", child, str(dst)], cwd=ROOT, capture_output=True, timeout=60)
    assert res.returncode == -9
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(".model.")]
    assert left.name.endswith(".safetensors") and left.stat().st_size == 1000
    busy, fresh = tmp_path / ".model.busy0000.safetensors", tmp_path / ".model.fresh000.safetensors"
    keep = [tmp_path / ".model.notes.safetensors", tmp_path / ".model.abcdefgh.txt", busy, fresh]
    for p in keep:
        p.write_text("not ours to remove")
    old = left.stat().st_mtime - 3600
    for p in (left, busy, *keep[:2]):
        os.utime(p, (old, old))
    with open(busy) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a write in progress
        assert convert_main([src, str(dst), "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert f"note: removed {left} (1.0 KB), the temporary file of an earlier write of model.safetensors" in err
    assert not left.exists() and all(p.exists() for p in keep) and dst.stat().st_size > 1000


def test_random_bytes_are_not_a_checkpoint_and_code_is_still_refused(tmp_path, capsys):
    """A .pth of random bytes is "not a PyTorch checkpoint", named, in convert and in the ImageNet
    init path (--model csfcn); a pickle that imports code (zip or plain) is still refused as such."""

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for extra in ([], ["--model", "csfcn"]):
        assert convert_main([str(noise), str(tmp_path / "out.safetensors"), *extra]) == 1
        err = capsys.readouterr().err
        assert f"error: {noise}: not a PyTorch checkpoint (not a zip archive / unpickling failed)" in err
        assert "run code" not in err and err.count("\n") == 1
    torch.save({"w": RunsCode()}, tmp_path / "evil_zip.pth")
    with pytest.raises(ConversionError, match=r"evil_zip.pth: refused: .*imports posix.system.*would run code"):
        read_checkpoint(tmp_path / "evil_zip.pth")
    assert not (tmp_path / "out.safetensors").exists()
