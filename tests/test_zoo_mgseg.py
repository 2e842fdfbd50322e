"""MGSeg (jax_csfcn/zoo/mgseg.py) and its PyTorch twin (torch_deploy/zoo/mgseg.py) against upstream.

Parameter counts: at K=19 the upstream ``MGSeg(19, output_aux=True)``'s (13,811,840, 161
state_dict entries); at K=11 ours (13,665,920), since the class count is K everywhere here while
upstream hard-codes 19 in its main path (module docstring).  Parity runs at K=11 and at input
sizes that are not multiples of 32, which the upstream cannot run (tests/test_zoo_parity.py).
"""

from __future__ import annotations

import pytest
import zoo_harness as zh
from flax import nnx

from jax_csfcn.zoo.mgseg import MGSeg as FlaxMGSeg
from torch_deploy.zoo.mgseg import MGSeg as TorchMGSeg

K = zh.K
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
