"""SwiftNet-RN18 (jax_csfcn.zoo.swiftnet) and its PyTorch twin (torch_deploy.zoo.swiftnet) against upstream.

The upstream numbers (orsic/swiftnet ``SemsegModel(resnet18(efficient=False, mean, std), K)``,
/work/notes/zoo_facts.md section 5) are constants here; the twin was checked bit-exact against
the upstream module outside the repository.  The parity checks shared by the zoo (fp64, fp32,
train mode with the SPP momentum, CamVid sizes, bf16) are in tests/test_zoo_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx
from zoo_harness import K, count_params, pair

import jax_csfcn.zoo.swiftnet as fx
import torch_deploy.zoo.swiftnet as tx
from jax_csfcn.layers import BatchNorm2d
from torch_deploy.model import ResNet18

NAME = "swiftnet"
UPSTREAM_PARAMS = {19: 11_797_071, 11: 11_796_039}
UPSTREAM_ENTRIES = 195  # 97 parameters, 96 BN buffers, img_mean and img_std


@pytest.mark.parametrize("k", [K, pytest.param(19, marks=pytest.mark.slow)])
def test_harness_pair_keeps_spp_momentum(k):
    """The harness pair that tests/test_zoo_parity.py checks (tests/random_weights.py keeps the SPP
    BNs' momentum of 0.005); at 19 classes, the pair of the CamVid-size checks."""
    model, _, _ = pair(NAME, k)
    for path, m in nnx.iter_modules(model):
        if isinstance(m, BatchNorm2d):
            assert m.momentum == (fx.SPP_MOMENTUM if "spp" in path else 0.1), f"{path}: momentum {m.momentum}"


@pytest.mark.parametrize("k", [19, 11])
def test_parameter_counts_and_state_dict(k):
    model = nnx.eval_shape(lambda: fx.SwiftNet(k, rngs=nnx.Rngs(0)))  # shapes only: nothing to compile
    twin = tx.SwiftNet(k)
    assert count_params(model) == UPSTREAM_PARAMS[k]
    assert sum(p.numel() for p in twin.parameters()) == UPSTREAM_PARAMS[k]
    sd = twin.state_dict()
    assert len(sd) == UPSTREAM_ENTRIES
    keys = list(sd)
    assert keys[:3] == ["backbone.img_mean", "backbone.img_std", "backbone.conv1.weight"]
    assert keys[-7:] == [
        "logits.norm.weight",
        "logits.norm.bias",
        "logits.norm.running_mean",
        "logits.norm.running_var",
        "logits.norm.num_batches_tracked",
        "logits.conv.weight",
        "logits.conv.bias",
    ]
    shapes = {key: tuple(v.shape) for key, v in sd.items()}
    assert shapes["backbone.img_mean"] == shapes["backbone.img_std"] == (1, 3, 1, 1)
    assert shapes["logits.conv.weight"] == (k, 128, 1, 1) and shapes["logits.conv.bias"] == (k,)
    assert shapes["backbone.spp.spp.spp0.conv.weight"] == (42, 128, 1, 1)
    assert shapes["backbone.spp.spp.spp_fuse.norm.weight"] == (254,)
    assert shapes["backbone.upsample.0.bottleneck.conv.weight"] == (128, 256, 1, 1)
    assert shapes["backbone.upsample.2.blend_conv.conv.weight"] == (128, 128, 3, 3)
    np.testing.assert_array_equal(sd["backbone.img_mean"].flatten().numpy(), np.float32(fx.SWIFTNET_MEAN))
    np.testing.assert_array_equal(sd["backbone.img_std"].flatten().numpy(), np.float32(fx.SWIFTNET_STD))
    # Five SPP BNs at momentum 0.005, the other 27 at 0.1, on both sides.
    tmom = {n: m.momentum for n, m in twin.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    fmom = {".".join(map(str, p)): m.momentum for p, m in nnx.iter_modules(model) if isinstance(m, BatchNorm2d)}
    assert tmom == fmom and len(tmom) == 32
    assert sorted(n for n, v in tmom.items() if v == 0.005) == sorted(
        f"backbone.spp.spp.{u}.norm" for u in ("spp_bn", "spp0", "spp1", "spp2", "spp_fuse")
    )
    assert (fx.SWIFTNET_MEAN, fx.SWIFTNET_STD, fx.SPP_GRIDS) == (tx.SWIFTNET_MEAN, tx.SWIFTNET_STD, tx.SPP_GRIDS)
    assert fx.SwiftNet.LOSS_WEIGHTS == tx.SwiftNet.LOSS_WEIGHTS == (1.0,)


def test_imagenet_keys_cover_the_backbone():
    twin = tx.SwiftNet(19)
    sd = {key: tuple(v.shape) for key, v in twin.state_dict().items()}
    tv = {key: tuple(v.shape) for key, v in ResNet18("torchvision").state_dict().items()}  # torchvision names
    tv.update({"fc.weight": (1000, 512), "fc.bias": (1000,)})
    mapped = {}
    for key, shape in tv.items():
        for cls in (fx.SwiftNet, tx.SwiftNet):
            assert cls.IMAGENET == "resnet18"
            assert cls.imagenet_key(key) == fx.SwiftNet.imagenet_key(key)
        target = fx.SwiftNet.imagenet_key(key)
        if target is not None:
            assert sd[target] == shape, key
            mapped[target] = key
    assert fx.SwiftNet.imagenet_key("fc.weight") is None
    backbone_trunk = [k for k in sd if k.startswith("backbone.") and not k.startswith(("backbone.spp", "backbone.up"))]
    assert sorted(mapped) == sorted(k for k in backbone_trunk if not k.startswith("backbone.img_"))
