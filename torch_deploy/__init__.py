"""CSFCN and the zoo models (docs/zoo.md) in PyTorch for deployment: the twin, its fast path, prediction.

    import torch_deploy
    model = torch_deploy.load_model("model.safetensors")   # eval mode, NCHW logits (.safetensors or upstream .pth)
    fast = torch_deploy.optimize(model, precision="fp16", output="labels")

A training run or Orbax directory loads with ``convert.load_torch_model`` (training extra).
"""

from __future__ import annotations

from torch_deploy.checkpoint import load_model
from torch_deploy.model import build_twin
from torch_deploy.optimize import optimize
from torch_deploy.predictor import Predictor

__all__ = ["Predictor", "build_twin", "load_model", "optimize"]
