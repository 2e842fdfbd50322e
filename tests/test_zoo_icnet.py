"""ICNet (jax_csfcn.zoo.icnet) and its PyTorch twin (torch_deploy.zoo.icnet) against upstream.

The upstream numbers (kaigelee/CSFCN ``ICNet(nclass, pretrained_base=False)`` on liminn's
``resnet50_v1s``, /work/notes/zoo_facts.md section 3) are constants here; the twin was checked
bit-exact against the upstream module outside the repository.

The parity checks shared by the zoo are in tests/test_zoo_parity.py, whose fp32 check relies on
this: PyTorch's fp32 ``F.interpolate`` computes its source coordinates in fp32 (the input's x0.5
and x0.25 resizes are off by ~6e-6 relative on a random image), and 16 bottlenecks with
trained-like random weights amplify that ~30x: the twin in fp32 is 1-2e-4 from fp64, the Flax
model (interpolation weights built in fp64) ~2e-5, and the twin alone flips the argmax of about
one pixel in 10^4 near ties.  So the harness's fp32 check takes argmax agreement against the
fp64 twin.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx
from zoo_harness import count_params

import jax_csfcn.zoo.icnet as fx
import torch_deploy.zoo.icnet as tx

UPSTREAM_PARAMS = {19: 28_298_376, 11: 28_295_304}  # incl. the unused pretrained.fc (2,049,000)
UPSTREAM_ENTRIES = 377  # 191 parameters, 186 BN buffers


@pytest.mark.parametrize("k", [19, 11])
def test_parameter_counts_and_state_dict(k):
    model = nnx.eval_shape(lambda: fx.ICNet(k, rngs=nnx.Rngs(0)))  # no weights drawn
    twin = tx.ICNet(k)
    assert count_params(model) == UPSTREAM_PARAMS[k]
    assert sum(p.numel() for p in twin.parameters()) == UPSTREAM_PARAMS[k]
    assert fx.ICNet.LOSS_WEIGHTS == tx.ICNet.LOSS_WEIGHTS == (0.0, 1.0, 0.4, 0.4)
    sd = twin.state_dict()
    assert len(sd) == UPSTREAM_ENTRIES
    keys = list(sd)
    assert keys[:3] == ["pretrained.conv1.0.weight", "pretrained.conv1.1.weight", "pretrained.conv1.1.bias"]
    i = keys.index("pretrained.fc.weight")
    assert keys[i : i + 3] == ["pretrained.fc.weight", "pretrained.fc.bias", "conv_sub1.0.conv.weight"]
    assert keys[-3:] == ["head.cff_24.conv_high.1.num_batches_tracked", "head.cff_24.conv_low_cls.weight",
                         "head.conv_cls.weight"]  # fmt: skip
    assert keys.index("head.cff_12.conv_low.0.weight") < keys.index("head.cff_24.conv_low.0.weight")
    shapes = {key: tuple(v.shape) for key, v in sd.items()}
    assert shapes["pretrained.conv1.6.weight"] == (128, 64, 3, 3)
    assert shapes["pretrained.layer1.0.conv1.weight"] == (64, 128, 1, 1)
    assert shapes["pretrained.layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert shapes["pretrained.fc.weight"] == (1000, 2048)
    assert shapes["head.cff_24.conv_low.0.weight"] == (128, 2048, 3, 3)
    for key in ("head.cff_12.conv_low_cls.weight", "head.cff_24.conv_low_cls.weight", "head.conv_cls.weight"):
        assert shapes[key] == (k, 128, 1, 1)
    # the dilated trunk: layer3 block 0 at 1, blocks 1-5 at 2; layer4 block 0 at 2, blocks 1-2 at 4
    dil = [b.conv2.dilation[0] for layer in (twin.pretrained.layer3, twin.pretrained.layer4) for b in layer]
    assert dil == [1, 2, 2, 2, 2, 2, 2, 4, 4]
    assert twin.pretrained.layer2[0].conv2.stride == (2, 2)
    assert all(b.conv2.stride == (1, 1) for layer in (twin.pretrained.layer3, twin.pretrained.layer4) for b in layer)


def test_imagenet_key():
    key = fx.ICNet.imagenet_key
    assert fx.ICNet.IMAGENET == "resnet50s"
    for k in ("conv1.0.weight", "conv1.4.running_var", "conv1.6.weight", "bn1.num_batches_tracked",
              "layer1.0.downsample.0.weight", "layer2.3.bn3.bias", "layer3.5.conv2.weight",
              "layer4.0.downsample.1.running_mean", "fc.weight", "fc.bias"):  # fmt: skip
        assert key(k) == "pretrained." + k
    with pytest.raises(ValueError, match="7x7 stem"):
        key("conv1.weight")
    with pytest.raises(ValueError, match="resnet50d"):
        key("layer1.0.downsample.2.weight")
    for bad in ("layer3.6.conv1.weight", "layer1.0.se.fc1.weight", "head.weight"):
        with pytest.raises(ValueError):
            key(bad)
    # every key of the twin's backbone has its ImageNet name
    twin_keys = [k for k in tx.ICNet(19).state_dict() if k.startswith("pretrained.")]
    assert [key(k.removeprefix("pretrained.")) for k in twin_keys] == twin_keys


def test_output_sizes_and_unused_fc(rng):
    """The outputs' sizes at an odd input size (full at exactly H x W; upstream gives 8 ceil(H/8)),
    the BN updates of one train-mode forward, and no gradient into the unused fc (the Flax side's
    sizes and running statistics equal the twin's: test_zoo_parity.py's test_fp64_outputs_and_main
    and test_train_mode)."""
    twin = tx.ICNet(5).train()
    x = torch.from_numpy(rng.standard_normal((2, 3, 45, 61)).astype(np.float32))
    outs = twin.outputs(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(45, 61), (12, 16), (6, 8), (3, 4)]
    # the stem..layer2 BNs run on the 1/2 and the 1/4 pass, layer3/layer4 on the 1/4 pass only
    sd = twin.state_dict()
    assert sd["pretrained.bn1.num_batches_tracked"] == sd["pretrained.layer2.3.bn3.num_batches_tracked"] == 2
    assert sd["pretrained.layer3.0.bn1.num_batches_tracked"] == sd["head.cff_24.conv_low.1.num_batches_tracked"] == 1
    sum(o.square().mean() for o in outs).backward()
    assert twin.pretrained.fc.weight.grad is None and twin.pretrained.layer4[2].conv3.weight.grad is not None
