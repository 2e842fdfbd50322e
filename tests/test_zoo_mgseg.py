"""MGSeg (jax_csfcn/zoo/mgseg.py) against its PyTorch twin (torch_deploy/zoo/mgseg.py).

Parameter counts: at K=19 the upstream ``MGSeg(19, output_aux=True)``'s (13,811,840, 161
state_dict entries); at K=11 ours (13,665,920), since the class count is K everywhere here while
upstream hard-codes 19 in its main path (module docstring).  Parity runs at K=11 and at input
sizes that are not multiples of 32, which the upstream cannot run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import zoo_harness as zh
from flax import nnx

from jax_csfcn.zoo.mgseg import MGSeg as FlaxMGSeg
from torch_deploy.zoo.mgseg import MGSeg as TorchMGSeg

NAME = "mgseg"
K = 11
UPSTREAM_PARAMS_19 = 13_811_840
PARAMS_11 = 13_665_920  # 13,465,280 + 18,240 * K


def _flax_params(k: int) -> int:
    return zh.count_params(nnx.eval_shape(lambda: FlaxMGSeg(k, rngs=nnx.Rngs(0))))


def _k_shapes(k: int) -> dict:
    return {
        "hafa.predictor.weight": (k, 32, 3, 3),
        "fgr.gwl.conv_1.1.weight": (8 * k, 128, 1, 1),
        "fgr.gwl.GC_conv.weight": (4 * k, 8, 3, 3),
        "conv_out16.conv_out.weight": (256 * k, 64, 1, 1),
        "conv_out16.conv_out.bias": (256 * k,),
    }


@pytest.mark.parametrize("k, total", [(19, UPSTREAM_PARAMS_19), (K, PARAMS_11)])
def test_parameter_counts_and_shapes(k, total):
    assert _flax_params(k) == total
    twin = TorchMGSeg(k)
    assert sum(p.numel() for p in twin.parameters()) == total
    sd = twin.state_dict()
    assert len(sd) == 161  # 92 parameters + 69 BN buffers, as upstream with its aux head
    keys = list(sd)
    assert keys[0] == "resnet.stem.weight" and keys[-1] == "conv_out16.conv_out.bias"
    tops = [key.split(".")[0] for key in keys]
    assert sorted(set(tops), key=tops.index) == ["resnet", "hafa", "fgr", "conv_out16"]
    assert not any(key.startswith("resnet.bn1") for key in keys)  # the stem has no BN upstream
    for key, shape in {
        **_k_shapes(k),
        "hafa.q3_lwa.fc.2.weight": (128, 64),
        "hafa.q5_slwa.fc.0.weight": (128, 128),
    }.items():
        assert tuple(sd[key].shape) == shape, key
    if k == 19:  # upstream's hard-coded sizes
        assert tuple(sd["fgr.gwl.conv_1.1.weight"].shape) == (152, 128, 1, 1)
        assert tuple(sd["fgr.gwl.GC_conv.weight"].shape) == (76, 8, 3, 3)
        assert twin.fgr.gwl.GC_conv.groups == 19


def test_imagenet_key():
    f = FlaxMGSeg.imagenet_key
    assert FlaxMGSeg.IMAGENET == "resnet18"
    assert f("conv1.weight") == "resnet.stem.weight"
    assert f("bn1.weight") is None and f("bn1.running_var") is None
    assert f("fc.weight") is None and f("fc.bias") is None
    assert f("layer3.0.downsample.1.running_mean") == "resnet.layer3.0.downsample.1.running_mean"
    sd = TorchMGSeg(K).state_dict()
    tv = [f"layer{i}.{j}.{n}.weight" for i in range(1, 5) for j in range(2) for n in ("conv1", "bn1", "conv2", "bn2")]
    for key in ["conv1.weight", *tv, "layer2.0.downsample.0.weight", "layer4.0.downsample.1.bias"]:
        assert f(key) in sd, key


def test_roundtrip():
    zh.check_roundtrip(NAME, K)


def test_fp64_outputs_and_main(rng):
    # 88 x 120: not a multiple of 32 (upstream crashes) nor of 16 (the aux PixelShuffle gives 96 x 128)
    errs = zh.check_fp64(NAME, K, rng.standard_normal((1, 88, 120, 3)))
    assert len(errs) == 4


def test_fp32_main_batch2(rng):
    zh.check_fp32(NAME, K, rng.standard_normal((2, 72, 104, 3)).astype(np.float32))


def test_train_mode(rng):
    zh.check_train_mode(NAME, K, rng.standard_normal((2, 64, 96, 3)).astype(np.float32))


def test_twin_outputs_leave_input_alone(rng):
    _, twin, _ = zh.pair(NAME, K)
    x = torch.from_numpy(rng.standard_normal((1, 3, 40, 56)).astype(np.float32))
    before = x.clone()
    with torch.no_grad():
        outs = twin.outputs(x)
        main = twin(x)
    assert torch.equal(x, before)
    assert [tuple(o.shape) for o in outs] == [(1, K, 40, 56)] * 3
    assert torch.equal(main, outs[0])
    assert len(outs) == len(TorchMGSeg.LOSS_WEIGHTS) == len(FlaxMGSeg.LOSS_WEIGHTS)
    assert TorchMGSeg.LOSS_WEIGHTS == FlaxMGSeg.LOSS_WEIGHTS == (1.0, 0.4, 0.4)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(360, 480), (720, 960)])
def test_camvid_sizes_fp64(size, rng):
    errs = zh.check_fp64(NAME, K, rng.standard_normal((1, *size, 3)))
    print(NAME, size, "fp64 rel-L2 (main, pred, aux, __call__):", [f"{e:.1e}" for e in errs])


@pytest.mark.slow
@pytest.mark.parametrize("size", [(360, 480), (720, 960)])
def test_camvid_sizes_fp32(size, rng):
    res = zh.check_fp32(NAME, K, rng.standard_normal((1, *size, 3)).astype(np.float32))
    print(NAME, size, "fp32:", {k: f"{v:.2e}" for k, v in res.items()})


@pytest.mark.slow
def test_bf16_compute_runs(rng):
    """dtype=bf16 reaches every conv/BN/Linear: bf16 outputs close to the fp32 model's."""
    model, _, _ = zh.pair(NAME, K)
    m16 = FlaxMGSeg(K, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    nnx.update(m16, nnx.state(model))
    m16.eval()
    x = jnp.asarray(rng.standard_normal((1, 64, 96, 3)), jnp.float32)
    ys = nnx.jit(lambda m, x: m.outputs(x))(m16, x.astype(jnp.bfloat16))
    refs = nnx.jit(lambda m, x: m.outputs(x))(model, x)
    for y, r in zip(ys, refs):
        assert y.dtype == jnp.bfloat16
        assert zh.rel_l2(np.asarray(y, np.float32), np.asarray(r)) < 0.1
    assert jax.tree.leaves(nnx.state(m16, nnx.Param))[0].dtype == jnp.float32
