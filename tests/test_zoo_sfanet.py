"""SFANet (jax_csfcn/zoo/sfanet.py) and its PyTorch twin (torch_deploy/zoo/sfanet.py) against upstream.

The parameter counts are checked at 19 and 11 classes against the upstream constructor's
(kaigelee/CSFCN ``SFANet(n, output_aux=True)``: 12,793,438 and 12,770,398).  The twin itself
was checked against the upstream module outside this repository (bit-exact outputs in fp32).
The parity checks shared by the zoo (fp64, fp32, train mode, CamVid sizes, bf16) are in
tests/test_zoo_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx
from zoo_harness import K, count_params, torch_shapes

from convert import flax_to_torch
from jax_csfcn.checkpointing import model_flat
from jax_csfcn.zoo.sfanet import SFANet
from torch_deploy.model import ResNet18 as TorchResNet18
from torch_deploy.zoo.sfanet import SFANet as TorchSFANet

UPSTREAM_PARAMS = {19: 12_793_438, 11: 12_770_398}


@pytest.mark.parametrize("k", [19, 11])
def test_parameter_counts_and_state_dict_equal_upstream(k):
    flax_model = nnx.eval_shape(lambda: SFANet(k, rngs=nnx.Rngs(0)))
    assert count_params(flax_model) == UPSTREAM_PARAMS[k]
    twin = TorchSFANet(k)
    assert sum(p.numel() for p in twin.parameters()) == UPSTREAM_PARAMS[k]
    sd = twin.state_dict()
    assert len(sd) == 254  # 143 parameters + 111 BN buffers, aux heads included
    keys = list(sd)
    assert keys[0] == "resnet.stem.weight" and keys[1].startswith("resnet.layer1.0.conv1")
    assert keys[-1] == "conv_out4.block.1.weight"
    shapes = {
        "resnet.stem.weight": (64, 3, 7, 7),
        "resnet.layer2.1.spatial.0.weight": (1, 128, 1, 1),
        "resnet.layer4.1.channel.conv.weight": (1, 1, 3),  # k = 3 even at 512 channels, as upstream
        "resnet.layer4.2.conv2.weight": (512, 512, 3, 3),
        "resnet.cbr3.conv.0.weight": (128, 512, 3, 3),
        "sfa4.cbr.conv.0.weight": (128, 512, 1, 1),
        "sfa4.feb.dw_conv_2.weight": (128, 1, 3, 3),
        "sfa2.feb.conv_2.weight": (128, 128, 3, 3),
        "sfa1.faa.offset.weight": (2, 128, 3, 3),
        "conv_out.block.0.conv.0.weight": (64, 128, 1, 1),
        "conv_out.block.1.weight": (k, 64, 3, 3),
        "conv_out4.block.1.weight": (k, 64, 3, 3),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert "resnet.bn1.weight" not in sd and not any(key.startswith("sfa1.feb.") for key in sd)
    assert SFANet.LOSS_WEIGHTS == TorchSFANet.LOSS_WEIGHTS == (1.0, 0.4, 0.4, 0.4, 0.4)


def test_imagenet_keys_land_on_the_backbone():
    """Every torchvision resnet18 key maps to a twin key of the same shape, or to None (bn1, fc)."""
    tv = dict(TorchResNet18("torchvision").state_dict())
    tv.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    sd = TorchSFANet(19).state_dict()
    mapped = {}
    for key, v in tv.items():
        target = SFANet.imagenet_key(key)
        if key.startswith(("bn1.", "fc.")):
            assert target is None, key
            continue
        assert target in sd and sd[target].shape == v.shape, (key, target)
        mapped[key] = target
    assert mapped["conv1.weight"] == "resnet.stem.weight"
    assert mapped["layer1.1.bn2.running_var"] == "resnet.layer1.1.bn2.running_var"
    assert mapped["layer3.0.downsample.1.weight"] == "resnet.layer3.0.downsample.1.weight"
    assert mapped["layer4.1.conv1.weight"] == "resnet.layer4.2.conv1.weight"
    # the whole ResNet-18 body except the stem BN is covered; the SCAs are not in ImageNet
    body = {k for k in sd if k.startswith("resnet.layer") and ".spatial." not in k and ".channel." not in k}
    assert set(mapped.values()) == body | {"resnet.stem.weight"}
    with pytest.raises(ValueError):
        SFANet.imagenet_key("layer2.2.conv1.weight")


def test_initialisation_draws_what_upstream_draws():
    """A fresh Flax model's kernels have the spread of the twin's, which initialises as upstream does
    (kaiming fan_out in the trunk, kaiming a=1 in FEB/FAA, PyTorch's default elsewhere); BN (1, 0)."""
    flat = model_flat(SFANet(K, rngs=nnx.Rngs(0)))
    torch.manual_seed(0)
    twin = TorchSFANet(K)
    tensors = flax_to_torch(flat, torch_shapes=torch_shapes(twin))
    for key, ref in twin.state_dict().items():
        ref = ref.double().numpy()
        if ref.ndim <= 1:  # BN parameters and statistics
            np.testing.assert_array_equal(tensors[key], ref, err_msg=key)
        elif ref.size >= 1000:
            ratio = tensors[key].std() / ref.std()
            assert 0.8 < ratio < 1.25 and abs(tensors[key].mean()) < 4 * ref.std() / ref.size**0.5, (key, ratio)
