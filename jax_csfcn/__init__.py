"""CSFCN in JAX / Flax NNX: model, input pipeline and training.

    import jax_csfcn
    model = jax_csfcn.build_model({"name": "csfcn", "num_classes": 19})
    model = jax_csfcn.load_model("runs/csfcn100")        # eval mode, NHWC in, NHWC logits out

``load_model`` reads the Flax side's checkpoints (a training run, one step of it, Orbax params);
``convert.load_flax_model`` reads any format, PyTorch files included. The two functions import
the model when called, so that the data tools (``python -m jax_csfcn.data.*``) start without it.
"""

from __future__ import annotations

from csfcn.extras import require

# The model, its step and the losses need JAX, Flax and Optax; the training command also needs
# grain, Orbax and ml_collections, which jax_csfcn.training checks (a GPU machine may lack them).
require("train", "jax_csfcn", modules=("jax", "flax", "optax"))


def build_model(config, *, seed: int = 0, dtype=None):
    """A fresh CSFCN from a :class:`~csfcn.model_config.ModelConfig` or a mapping of its fields."""
    from jax_csfcn.model import build_model as _build  # lazy: see the module docstring

    return _build(config, seed=seed, dtype=dtype)


def load_model(path, *, dtype=None):
    """The Flax model in eval mode from a training run (its best, else latest, checkpoint), one
    step of it, or an Orbax params directory. ``dtype`` is the compute dtype (e.g.
    ``jnp.bfloat16``); parameters stay fp32. PyTorch files: ``convert.load_flax_model``.
    """
    from jax_csfcn.checkpointing import read_flax_checkpoint, set_model_flat  # lazy: see the module docstring

    config, flat = read_flax_checkpoint(path)
    model = build_model(config, dtype=dtype)
    set_model_flat(model, flat)
    model.eval()
    return model


__all__ = ["build_model", "load_model"]
