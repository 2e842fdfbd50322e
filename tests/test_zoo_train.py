"""The zoo models (docs/zoo.md) on the training side: factory, auxiliary losses, ImageNet
initialisation, and a real training run through tools/train.py (python -m jax_csfcn.train)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from convert.formats import init_backbone
from csfcn.checkpoints import ConversionError
from csfcn.model_config import ZOO_NAMES, ModelConfig
from jax_csfcn.checkpointing import model_flat
from jax_csfcn.losses import cross_entropy
from jax_csfcn.model import build_model
from jax_csfcn.step import weighted_loss
from jax_csfcn.zoo import zoo_class
from torch_deploy.model import ResNet18, build_twin

# The upstream constructors' parameter counts at 19 classes, auxiliary heads included
# (SFANet/MGSeg output_aux=True, ICNet with its unused fc, BiSeNetV1 aux_mode="train").
UPSTREAM_PARAMS = {
    "sfanet": 12_793_438,
    "mgseg": 13_811_840,
    "icnet": 28_298_376,
    "bisenetv1": 13_425_721,
    "swiftnet": 11_797_071,
}


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_one_factory_per_framework(name):
    config = ModelConfig(name=name, num_classes=19)
    model = nnx.eval_shape(lambda: build_model(config))
    assert isinstance(model, zoo_class(name)) and model.config == config
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    twin = build_twin(config)
    assert n == sum(p.numel() for p in twin.parameters()) == UPSTREAM_PARAMS[name]
    assert twin.config == config and len(model.LOSS_WEIGHTS) == len(twin.LOSS_WEIGHTS)


def test_model_config_refuses_a_stem_for_zoo_models():
    with pytest.raises(ValueError, match="stem"):
        ModelConfig(name="sfanet", stem="deep")
    assert ModelConfig.from_mapping({"variant": "csfcn_tiny"}).name == "csfcn_tiny"  # older checkpoints


def test_weighted_loss_reads_labels_at_each_output_size(rng):
    """Full-size heads read the labels as they are, a 1/4 output reads them nearest-resized
    (real ids only), weight 0 is skipped, and the sum is weighted."""
    labels = jnp.asarray(rng.integers(0, 4, (2, 16, 24)).astype(np.int32)).at[:, :3].set(255)
    full = jnp.asarray(rng.standard_normal((2, 16, 24, 4)), jnp.float32)
    quarter = jnp.asarray(rng.standard_normal((2, 4, 6, 4)), jnp.float32)

    def term(logits, lab):
        return cross_entropy(logits, lab, 255), jnp.float32(0.5)

    loss, kept = weighted_loss((full, quarter, full), (0.0, 1.0, 0.4), labels, term)
    small = labels[:, ::4, ::4]  # nearest at an exact factor 4: rows 0, 4, 8, 12
    want = cross_entropy(quarter, small, 255) + 0.4 * cross_entropy(full, labels, 255)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    assert float(kept) == 0.5


def _imagenet_resnet18(path, seed=0) -> dict:
    torch.manual_seed(seed)
    sd = {k: v for k, v in ResNet18("torchvision").state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    torch.save(sd, path)
    return sd


@pytest.mark.parametrize("name", ["sfanet", "mgseg", "bisenetv1", "swiftnet"])
def test_imagenet_resnet18_initialises_each_backbone(tmp_path, name):
    sd = _imagenet_resnet18(tmp_path / "resnet18.pth")
    config = ModelConfig(name=name, num_classes=3)
    model = build_model(config)
    n = init_backbone(model, config, tmp_path / "resnet18.pth")
    cls = zoo_class(name)
    mapped = {cls.imagenet_key(k): v for k, v in sd.items() if cls.imagenet_key(k) is not None}
    assert n == len(mapped) >= 60
    twin = build_twin(config)
    from convert.formats import flax_to_torch
    from torch_deploy.checkpoint import twin_shapes

    tensors = flax_to_torch(model_flat(model), torch_shapes=twin_shapes(config))
    for key, v in mapped.items():
        np.testing.assert_array_equal(tensors[key], v.numpy(), err_msg=key)
    assert twin is not None


def test_icnet_refuses_a_resnet18_and_names_the_backbone_it_needs(tmp_path):
    _imagenet_resnet18(tmp_path / "resnet18.pth")
    config = ModelConfig(name="icnet", num_classes=3)
    with pytest.raises(ConversionError, match="50"):
        init_backbone(nnx.eval_shape(lambda: build_model(config)), config, tmp_path / "resnet18.pth")


def test_a_zoo_model_trains_with_its_auxiliary_heads(tmp_path):
    """BiSeNetV1 (main + two auxiliary heads, OHEM on each) through jax_csfcn.train: finite,
    decreasing loss, a checkpoint that converts to the twin."""
    from test_train import tiny_config

    from jax_csfcn.data.synthetic import write_synthetic_cityscapes
    from tools.train import train

    root = tmp_path / "data"
    write_synthetic_cityscapes(root, splits={"train": 4, "val": 2}, size=(64, 128), seed=5, progress=False)
    cfg = tiny_config(root, tmp_path / "run", **{"model.name": "bisenetv1", "train.steps": 4, "checkpoint.every": 4})
    summary = train(cfg, progress=False)
    assert summary["step"] == 4 and np.isfinite(summary["val"]["miou"])
    import json

    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    from convert.formats import load_torch_model

    assert type(load_torch_model(tmp_path / "run")).__name__ == "BiSeNetV1"


def test_icnet_takes_a_resnet50s_file(tmp_path):
    """timm ``resnet50s`` (gluon ResNet-50-v1s) names map 1:1 under ``pretrained.``; a resnet50d
    file (average-pool shortcut, ``downsample.2``) is refused by name."""
    config = ModelConfig(name="icnet", num_classes=3)
    torch.manual_seed(1)
    backbone = {
        k[len("pretrained.") :]: torch.randn(v.shape) if v.is_floating_point() else v
        for k, v in build_twin(config).state_dict().items()
        if k.startswith("pretrained.")
    }
    torch.save(backbone, tmp_path / "resnet50s.pth")
    model = build_model(config)
    n = init_backbone(model, config, tmp_path / "resnet50s.pth")
    assert n == len(backbone)  # every tensor of the file, BN counters included
    from convert.formats import flax_to_torch
    from torch_deploy.checkpoint import twin_shapes

    tensors = flax_to_torch(model_flat(model), torch_shapes=twin_shapes(config))
    for key in ("conv1.0.weight", "layer3.5.conv2.weight", "layer4.0.downsample.1.running_var", "fc.weight"):
        np.testing.assert_array_equal(tensors["pretrained." + key], backbone[key].numpy(), err_msg=key)
    backbone["layer1.0.downsample.2.weight"] = backbone.pop("layer1.0.downsample.1.weight")
    torch.save(backbone, tmp_path / "resnet50d.pth")
    with pytest.raises(ConversionError, match="downsample"):
        init_backbone(model, config, tmp_path / "resnet50d.pth")
