"""CSFCN in JAX / Flax NNX: model, input pipeline and training.

    import jax_csfcn
    model = jax_csfcn.build_model({"variant": "csfcn", "num_classes": 19})
    model = jax_csfcn.load_model("model.safetensors")   # eval mode, NHWC in, NHWC logits out

Submodules import JAX lazily so that ``csfcn.model_config`` stays framework-free.
"""

from __future__ import annotations

from csfcn.extras import require

# The model, its step and the losses need JAX, Flax and Optax; the training command also needs
# grain, Orbax and ml_collections, which jax_csfcn.train checks (a GPU machine may lack them).
require("train", "jax_csfcn", modules=("jax", "flax", "optax"))


def build_model(config, *, seed: int = 0, dtype=None):
    """A fresh CSFCN from a :class:`~csfcn.model_config.ModelConfig` or a mapping of its fields."""
    from jax_csfcn.model import build_model as _build

    return _build(config, seed=seed, dtype=dtype)


def load_model(path, *, strict: bool = True, dtype=None):
    """The Flax model in eval mode from any supported checkpoint.

    ``path``: our ``.safetensors`` export, an upstream ``.pth`` state_dict (config inferred
    from the tensor shapes), or an Orbax directory of Flax params.  ``dtype`` is the compute
    dtype (e.g. ``jnp.bfloat16``); parameters stay fp32.
    """
    from convert.formats import read_checkpoint, set_model_flat

    config, flat = read_checkpoint(path, strict=strict)
    model = build_model(config, dtype=dtype)
    set_model_flat(model, flat)
    model.eval()
    return model


__all__ = ["build_model", "load_model"]
