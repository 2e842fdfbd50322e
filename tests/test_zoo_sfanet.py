"""SFANet (jax_csfcn/zoo/sfanet.py) against its PyTorch twin (torch_deploy/zoo/sfanet.py).

The default tests share one model pair at 11 classes (so JAX compiles one set of programs);
the parameter counts are checked at 19 and 11 classes against the upstream constructor's
(kaigelee/CSFCN ``SFANet(n, output_aux=True)``: 12,793,438 and 12,770,398).  The twin itself
was checked against the upstream module outside this repository (bit-exact outputs in fp32).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from zoo_harness import (
    _main,
    check_fp32,
    check_fp64,
    check_roundtrip,
    check_train_mode,
    count_params,
    pair,
    torch_shapes,
)

from convert import flax_to_torch
from jax_csfcn.checkpointing import model_flat
from jax_csfcn.zoo.sfanet import SFANet
from torch_deploy.model import ResNet18 as TorchResNet18
from torch_deploy.zoo.sfanet import SFANet as TorchSFANet

NAME = "sfanet"
K = 11
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


def test_roundtrip():
    check_roundtrip(NAME, K)


def test_fp64_outputs_and_main_at_88x120(rng):
    """88 x 120 is no multiple of 32 (upstream's aux3/aux4 would be 96 x 128): all five outputs
    are at the input size here and match the twin in fp64."""
    errs = check_fp64(NAME, K, rng.standard_normal((1, 88, 120, 3)))
    assert len(errs) == 6


def test_fp32_main_batch2(rng):
    check_fp32(NAME, K, rng.standard_normal((2, 64, 96, 3)).astype(np.float32))


def test_train_mode(rng):
    """Batch statistics everywhere, sfa4's BN over the batch's 1 x 1 global averages included.

    That BN normalises one value per image: when the images' global averages are nearly equal
    (pure-noise images) a channel's batch variance is near BN's eps and the fp32 rounding of
    either side is amplified by up to ~1/sqrt(eps), so the two fp32 results are compared on four
    images that differ in mean and contrast, as real images do."""
    n = 4
    x = rng.standard_normal((n, 32, 48, 3)) * rng.uniform(0.5, 1.5, (n, 1, 1, 3)) + rng.standard_normal((n, 1, 1, 3))
    check_train_mode(NAME, K, x.astype(np.float32))


def test_twin_leaves_its_input_alone(rng):
    _, twin, _ = pair(NAME, K)
    x = torch.from_numpy(rng.standard_normal((1, 3, 40, 56)).astype(np.float32))
    before = x.clone()
    with torch.no_grad():
        outs = twin.outputs(x)
    assert torch.equal(x, before)
    assert [tuple(o.shape) for o in outs] == [(1, K, 40, 56)] * 5


@pytest.mark.slow
@pytest.mark.parametrize("size", [(360, 480), (720, 960)])
def test_fp64_and_fp32_at_camvid_sizes(rng, size):
    """360 x 480 and 720 x 960: upstream's fixed x16 / x32 aux upsampling gives 368 / 384 rows and
    736 rows there; here every output is at the input size and both precisions agree."""
    errs = check_fp64(NAME, K, rng.standard_normal((1, *size, 3)))
    stats = check_fp32(NAME, K, rng.standard_normal((1, *size, 3)).astype(np.float32))
    print(f"\nSFANet {size}: fp64 rel L2 {max(errs):.2e}; fp32 {stats}")


@pytest.mark.slow
def test_bf16_forward(rng):
    """The compute dtype reaches the layers: bf16 logits, finite, near the fp32 ones.  (Loosely:
    with random weights and no BN after the stem some channels are offset far more than they vary,
    and their BNs amplify bf16's rounding; measured 0.28 relative L2 at 64 x 96.)"""
    model, _, _ = pair(NAME, K)
    shell = nnx.eval_shape(lambda: SFANet(K, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    bf16 = nnx.merge(nnx.graphdef(shell), nnx.state(model))
    x = rng.standard_normal((2, 64, 96, 3)).astype(np.float32)
    yb = _main(bf16, jnp.asarray(x, jnp.bfloat16))
    assert yb.dtype == jnp.bfloat16
    y = np.asarray(yb, np.float32)
    ref = np.asarray(_main(model, jnp.asarray(x)))
    assert y.shape == ref.shape and np.isfinite(y).all()
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.5
