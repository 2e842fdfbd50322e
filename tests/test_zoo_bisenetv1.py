"""BiSeNet V1 (jax_csfcn.zoo.bisenetv1) and its PyTorch twin (torch_deploy.zoo.bisenetv1) against upstream.

Parameter counts are those of the upstream constructor CoinCheung/BiSeNet
``BiSeNetV1(n, aux_mode='train')`` with its aux heads, measured by building it. The tests here
that need weights use the harness's model pair at K = 11, which tests/test_zoo_parity.py (the
parity checks shared by the zoo) uses too: one calibration compile.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from zoo_harness import K, count_params, pair

from jax_csfcn.zoo.bisenetv1 import BiSeNetV1
from torch_deploy.model import ResNet18 as TorchResNet18
from torch_deploy.optimize import remove_bn
from torch_deploy.zoo.bisenetv1 import BiSeNetV1 as TorchBiSeNetV1

NAME = "bisenetv1"
UPSTREAM_PARAMS = {19: 13_425_721, 11: 13_422_625}


@pytest.mark.parametrize("k", [19, 11])
def test_parameter_counts_and_keys_match_upstream(k):
    abstract = nnx.eval_shape(lambda: BiSeNetV1(k, rngs=nnx.Rngs(0)))  # no initialiser runs
    assert count_params(abstract) == UPSTREAM_PARAMS[k]
    twin = TorchBiSeNetV1(k)
    assert sum(p.numel() for p in twin.parameters()) == UPSTREAM_PARAMS[k]
    sd = twin.state_dict()
    assert len(sd) == 222  # 114 parameters + 108 BN buffers, aux heads included
    shapes = {key: tuple(v.shape) for key, v in sd.items()}
    assert shapes["cp.resnet.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["cp.resnet.layer4.0.downsample.0.weight"] == (512, 256, 1, 1)
    assert shapes["cp.arm32.conv_atten.weight"] == (128, 128, 1, 1)
    assert shapes["cp.conv_avg.conv.weight"] == (128, 512, 1, 1)
    assert shapes["sp.conv1.conv.weight"] == (64, 3, 7, 7)
    assert shapes["ffm.convblk.conv.weight"] == (256, 256, 1, 1)
    assert shapes["ffm.bn.running_var"] == (256,)
    assert shapes["conv_out.conv_out.weight"] == (k, 256, 1, 1)
    assert shapes["conv_out16.conv_out.weight"] == (k, 64, 1, 1)
    assert shapes["conv_out32.conv_out.bias"] == (k,)
    assert list(sd)[0] == "cp.resnet.conv1.weight" and list(sd)[-1] == "conv_out32.conv_out.bias"


def test_imagenet_keys_map_onto_the_backbone():
    """Every torchvision ResNet-18 key but ``fc.*`` names a twin tensor of the same shape."""
    tv = {key: tuple(v.shape) for key, v in TorchResNet18("torchvision").state_dict().items()}
    tv.update({"fc.weight": (1000, 512), "fc.bias": (1000,)})
    twin = {key: tuple(v.shape) for key, v in TorchBiSeNetV1(19).state_dict().items()}
    mapped = {key: BiSeNetV1.imagenet_key(key) for key in tv}
    assert mapped["fc.weight"] is None and mapped["fc.bias"] is None
    assert mapped["layer1.0.conv1.weight"] == "cp.resnet.layer1.0.conv1.weight"
    used = {key: dst for key, dst in mapped.items() if dst is not None}
    assert len(used) == len(tv) - 2
    assert all(twin[dst] == tv[key] for key, dst in used.items())
    assert set(used.values()) == {key for key in twin if key.startswith("cp.resnet.")}
    assert BiSeNetV1.IMAGENET == "resnet18"


def test_outputs_at_input_size_where_upstream_crashes():
    """720 x 960 (upstream: broadcast error, 46 vs 45 rows) and an odd size, by shape only."""
    model, twin, _ = pair(NAME, K)  # eval mode
    twin = copy.deepcopy(twin).to("meta")
    for h, w in [(720, 960), (101, 131)]:
        shapes = jax.eval_shape(lambda x: model.outputs(x), jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
        assert [s.shape for s in shapes] == [(1, h, w, K)] * 3
        with torch.no_grad():
            outs = twin.outputs(torch.empty(1, 3, h, w, device="meta"))
        assert [tuple(o.shape) for o in outs] == [(1, K, h, w)] * 3


def test_every_batchnorm_folds_and_input_is_not_modified(rng):
    """All BNs (the attention ones after the global-mean 1x1 convs included) fold into their
    convs (torch_deploy.optimize.remove_bn), and the folded twin computes the same function."""
    twin = pair(NAME, K)[2]  # fp64, random BN statistics
    folded = remove_bn(twin)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.from_numpy(rng.standard_normal((1, 3, 64, 64)))
    x0 = x.clone()
    with torch.no_grad():
        ref, out = twin(x), folded(x)
    assert torch.equal(x, x0)
    assert float((out - ref).norm() / ref.norm()) <= 1e-10


def test_training_loss_adds_both_aux_heads_at_weight_1(rng):
    """Upstream CoinCheung/BiSeNet ``tools/train_amp.py`` trains with ``loss = loss_pre +
    sum(loss_aux)``: the main and both auxiliary OHEM losses unweighted (not SFANet's or ICNet's
    0.4). The training step's loss over (main, aux16, aux32) is their plain sum, in both twins."""
    import functools

    from jax_csfcn.step import loss_term, weighted_loss

    assert BiSeNetV1.LOSS_WEIGHTS == (1.0, 1.0, 1.0), (
        f"BiSeNetV1 loss weights {BiSeNetV1.LOSS_WEIGHTS}, upstream's are 1, 1, 1"
    )
    assert TorchBiSeNetV1.LOSS_WEIGHTS == BiSeNetV1.LOSS_WEIGHTS, "the PyTorch twin weighs its heads otherwise"
    term = functools.partial(loss_term, ohem=True, thresh=0.7, min_kept=16, ignore_index=255)
    outs = [jnp.asarray(rng.standard_normal((2, 8, 12, K)), jnp.float32) for _ in range(3)]
    labels = jnp.asarray(rng.integers(0, K, size=(2, 8, 12)), jnp.int32)
    total, _ = weighted_loss(outs, BiSeNetV1.LOSS_WEIGHTS, labels, term)
    plain = sum(float(term(o, labels)[0]) for o in outs)
    np.testing.assert_allclose(float(total), plain, rtol=1e-6, err_msg="BiSeNetV1 loss is not main + aux16 + aux32")
