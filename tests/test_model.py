"""Model structure: parameter counts, names, shapes, initialisation, FLOPs, config errors."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convert import flax_to_torch
from csfcn.model_config import ModelConfig
from jax_csfcn.checkpointing import model_flat, model_template
from jax_csfcn.model import build_model, count_params, sfc_sample_and_gate
from jax_csfcn.summary import module_table
from torch_deploy.model import CSFCN as TorchCSFCN


@pytest.mark.parametrize(
    "variant,k,stem,expected",
    [
        ("csfcn", 19, "torchvision", 13_368_512),
        ("csfcn", 11, "torchvision", 13_302_464),
        ("csfcn_tiny", 19, "torchvision", 13_136_211),
        ("csfcn", 19, "deep", 13_387_744),
        ("csfcn", 19, "deep128", 13_516_992),
    ],
)
def test_parameter_counts(variant, k, stem, expected):
    model = nnx.eval_shape(lambda: build_model({"name": variant, "num_classes": k, "stem": stem}))
    assert count_params(model) == expected
    assert sum(p.numel() for p in TorchCSFCN(ModelConfig(variant, k, stem)).parameters()) == expected


def test_deep128_stem_is_the_upstream_resnet18():
    """The upstream's ResNet-18 (its deep-inplane128 ImageNet weights): three 3x3 convs
    3->64/2, 64->64, 64->128 at Sequential indices 0, 3, 6 with BNs at 1, 4, then bn1 over 128
    channels; layer1's first block takes 128 channels, so it has a 1x1/1 projection shortcut."""
    sd = {k: tuple(v.shape) for k, v in TorchCSFCN(ModelConfig(stem="deep128")).state_dict().items()}
    assert {k: s for k, s in sd.items() if k.startswith("resnet.conv1.") and k.endswith("weight")} == {
        "resnet.conv1.0.weight": (64, 3, 3, 3),
        "resnet.conv1.1.weight": (64,),
        "resnet.conv1.3.weight": (64, 64, 3, 3),
        "resnet.conv1.4.weight": (64,),
        "resnet.conv1.6.weight": (128, 64, 3, 3),
    }
    assert sd["resnet.bn1.running_var"] == (128,)
    assert sd["resnet.layer1.0.conv1.weight"] == (64, 128, 3, 3)
    assert sd["resnet.layer1.0.downsample.0.weight"] == (64, 128, 1, 1)
    assert sd["resnet.layer1.0.downsample.1.running_mean"] == (64,)
    assert "resnet.layer1.1.downsample.0.weight" not in sd and "resnet.conv1.weight" not in sd
    assert TorchCSFCN(ModelConfig(stem="deep128")).resnet.layer1[0].downsample[0].stride == (1, 1)
    with pytest.raises(ValueError, match="model.stem='deep64'"):
        ModelConfig(stem="deep64")


@pytest.mark.parametrize("variant,keys", [("csfcn", 168), ("csfcn_tiny", 166)])
@pytest.mark.parametrize("stem", ["torchvision", "deep", "deep128"])
def test_flax_paths_are_the_upstream_state_dict(variant, keys, stem):
    config = ModelConfig(variant, 19, stem)
    torch_sd = TorchCSFCN(config).state_dict()
    names = flax_to_torch({p: np.zeros(s, np.float32) for p, s in model_template(config).items()})
    assert set(names) == set(torch_sd)
    assert {k: tuple(v.shape) for k, v in names.items()} == {k: tuple(v.shape) for k, v in torch_sd.items()}
    if stem == "torchvision":
        assert len(torch_sd) == keys
    prefixes = {k.split(".")[0] for k in torch_sd}
    assert prefixes == {"resnet", "cfc", "sfc", "conv_out32"}
    for key in ("cfc.local_attention.conv.0.bn.running_var", "sfc.conv_offset.1.weight", "conv_out32.conv_out.bias"):
        assert key in torch_sd
    assert ("sfc.cp1x1.weight" in torch_sd) == (variant == "csfcn")
    assert torch_sd["cfc.key_conv.weight"].shape == (32, 256, 1)  # Conv1d layout


@pytest.mark.parametrize("shape", [(1, 64, 128), (2, 72, 96), (1, 360, 480), (1, 40, 56)])
@pytest.mark.parametrize("variant,k", [("csfcn", 3), ("csfcn_tiny", 1)])
def test_output_shape_is_eight_times_feat8(variant, k, shape):
    model = build_model({"name": variant, "num_classes": k})
    out = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((*shape, 3), jnp.float32))
    h8, w8 = -(-shape[1] // 8), -(-shape[2] // 8)  # conv arithmetic rounds up at each stride
    assert out.shape == (shape[0], 8 * h8, 8 * w8, k)


def test_gate_convs_start_at_zero_and_sfc_starts_as_identity(rng):
    model = build_model({}, seed=5)
    flat = model_flat(model)
    assert not np.any(flat[("sfc", "conv_offset", 1, "kernel")])
    assert not np.any(flat[("cfc", "local_attention", "conv", 1, "kernel")])
    assert np.std(flat[("sfc", "conv_8", "conv", "kernel")]) > 0
    # zero offsets and gate logits: exact resampling at the pixel centres, unit gates
    cp = jnp.asarray(rng.standard_normal((2, 9, 13, 128)), jnp.float32)
    sp = jnp.asarray(rng.standard_normal((2, 9, 13, 128)), jnp.float32)
    out = sfc_sample_and_gate(cp, sp, jnp.zeros((2, 9, 13, 10)))
    np.testing.assert_allclose(np.asarray(out), np.asarray(cp + sp), rtol=1e-5, atol=1e-5)


def test_kaiming_fan_out_init_scale():
    flat = model_flat(build_model({}, seed=0))
    w = flat[("resnet", "layer4", 0, "conv2", "kernel")]  # 3x3x512x512
    assert abs(np.std(w) - np.sqrt(2.0 / (512 * 9))) < 0.02 * np.sqrt(2.0 / (512 * 9))


def test_batchnorm_momentum_matches_torch():
    model = build_model({})
    bn = model.resnet.bn1
    assert bn.momentum == 0.1 and bn.eps == 1e-5
    model.eval()
    assert bn.use_running_average


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="model.name='csfcn_huge'"):
        build_model({"name": "csfcn_huge"})
    with pytest.raises(ValueError, match="model.stem"):
        ModelConfig(stem="v1d")
    with pytest.raises(ValueError, match="num_classes=0"):
        ModelConfig(num_classes=0)
    with pytest.raises(KeyError, match="unknown model config keys \\['n_classes'\\]"):
        build_model({"n_classes": 19})
    with pytest.raises(ValueError, match="model.classes=19: expected a list"):
        build_model({"classes": 19})


@pytest.mark.parametrize("size,total", [((1024, 2048), 189.2), ((512, 1024), 47.3), ((768, 1536), 106.4)])
def test_flops_match_model_md(size, total):
    model = nnx.eval_shape(lambda: build_model({}))
    rows = dict((name, flops / 1e9) for name, _, flops in module_table(model, size))
    assert abs(sum(rows.values()) - total) <= 0.01 * total
    if size == (1024, 2048):
        for name, ref in (("resnet", 151.6), ("cfc", 5.7), ("sfc", 12.1), ("conv_out32", 19.9)):
            assert abs(rows[name] - ref) <= 0.01 * ref, (name, rows[name])


def test_summary_cli():
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "-m",
        "tools.summary",
        "--config",
        "configs/camvid.py:csfcn",
        "--config.model.num_classes=19",
    ]
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=root).stdout
    assert "input 1x3x720x960" in out
    total = float(out.strip().splitlines()[-1].split()[-1])
    assert abs(total - 62.6) <= 0.01 * 62.6  # docs/architecture.md, Cost: 62.6 GFLOPs at 720x960 (K = 19)


def test_kaiming_fan_out_draws_what_flax_variance_scaling_draws():
    """The flat draw (one compiled sampler per kernel size) gives Flax's values bit for bit."""
    from jax_csfcn.layers import kaiming_fan_out

    ref = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
    for i, shape in enumerate([(3, 3, 32, 11), (7, 7, 3, 64), (256, 32), (3, 1, 1), (1, 1, 128, 76)]):
        key = jax.random.key(i)
        np.testing.assert_array_equal(np.asarray(kaiming_fan_out(key, shape)), np.asarray(ref(key, shape)))
