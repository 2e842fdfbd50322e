"""Tiny PyTorch checkpoints (CSFCN or a zoo model) with trained-like random weights, for the deploy tests.

The torch counterpart of ``random_weights.py`` (no JAX needed): kernels N(0, 2 / fan_in)
(the zero-initialised gate convs included, so SFC sampling and CFC's local gate really act),
BN affine random, and BN running statistics calibrated on a random batch then perturbed, so
activations stay O(1) like in a trained network.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from convert.formats import write_safetensors
from csfcn.model_config import ModelConfig
from torch_deploy.model import CSFCN, build_twin


def random_model(config: ModelConfig, seed: int = 0, calib_shape=(2, 3, 64, 128)) -> CSFCN:
    gen = torch.Generator().manual_seed(seed)
    model = build_twin(config)
    momenta = {}
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
                momenta[m], m.momentum = m.momentum, 1.0
        model.train()
        model(torch.randn(calib_shape, generator=gen))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = momenta[m]
                sd = m.running_var.sqrt()
                m.running_mean.add_(0.1 * sd * torch.randn(sd.shape, generator=gen))
                m.running_var.mul_(torch.rand(sd.shape, generator=gen) * 0.7 + 0.7)
    return model.eval()


def save(model: CSFCN, path) -> str:
    tensors = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    write_safetensors(path, model.config, tensors)
    return str(path)


def make_checkpoint(path, *, variant="csfcn", num_classes=19, seed=0) -> str:
    return save(random_model(ModelConfig(name=variant, num_classes=num_classes), seed), path)


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random RGB image (blobs, not white noise), uint8 (H, W, 3)."""
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3)).astype(np.float32)
    from PIL import Image

    img = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.BILINEAR))
    return np.clip(img.astype(np.int16) + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
