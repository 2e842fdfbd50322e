"""CSFCN in PyTorch for deployment: the reference twin and (later) the fast path.

import torch_deploy
model = torch_deploy.load_model("model.safetensors")   # eval mode, NCHW logits
"""

from __future__ import annotations


def load_model(path, *, strict: bool = True, map_location="cpu"):
    """The PyTorch twin in eval mode from any supported checkpoint.

    ``path``: our ``.safetensors`` export, an upstream ``.pth`` state_dict (config inferred
    from the tensor shapes), or an Orbax directory of Flax params (converted on the fly).
    """
    import torch

    from convert.formats import config_of, kind_of, read_checkpoint, read_torch_file
    from convert.table import flax_to_torch
    from torch_deploy.model import CSFCN

    if kind_of(path) == "orbax":
        config, flat = read_checkpoint(path, strict=strict)
        tensors = flax_to_torch(flat)
    else:
        tensors, meta = read_torch_file(path)
        config = config_of(tensors, meta, str(path))
    model = CSFCN(config)
    sd = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # a diverged run's weights: every prediction would be garbage (class 0 everywhere)
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"{path}: {len(bad)} tensor(s) hold NaN or infinite values ({shown}); this checkpoint cannot predict"
        )
    result = model.load_state_dict(sd, strict=strict)
    if not strict and (result.missing_keys or result.unexpected_keys):
        import warnings

        warnings.warn(f"{path}: missing {result.missing_keys}, unexpected {result.unexpected_keys}", stacklevel=2)
    return model.to(map_location).eval()


from torch_deploy.optimize import optimize  # noqa: E402
from torch_deploy.predictor import Predictor  # noqa: E402

__all__ = ["Predictor", "load_model", "optimize"]
