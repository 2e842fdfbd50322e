"""Learning-rate schedule and optimizer of the upstream recipe (optax).

* :func:`warmup_poly_schedule`: linear warm-up from ``base_lr * warmup_start_factor`` to
  ``base_lr`` over ``warmup_steps``, then poly decay with ``power`` to exactly 0 at
  ``total_steps``.
* :func:`sgd_optimizer`: SGD with momentum and L2 weight decay on conv/dense kernels only,
  the same update as ``torch.optim.SGD(momentum=0.9, weight_decay=5e-4)`` with BN and bias
  parameters in a ``weight_decay=0`` group.

Step convention: optax calls the schedule with the number of updates already applied, so the
first update uses ``schedule(0) = base_lr * warmup_start_factor`` and the last of
``total_steps`` updates uses ``schedule(total_steps - 1)``, small but non-zero;
``schedule(total_steps) == 0`` and the schedule stays 0 after it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

__all__ = ["decay_mask", "sgd_optimizer", "warmup_poly_schedule"]


def warmup_poly_schedule(
    base_lr: float,
    total_steps: int,
    warmup_steps: int = 2480,
    warmup_start_factor: float = 1 / 3,
    power: float = 0.9,
) -> optax.Schedule:
    """``lr(step)``::

        step <  warmup:  base_lr * (f + (1 - f) * step / warmup)          f = warmup_start_factor
        step >= warmup:  base_lr * (1 - (step - warmup) / (total - warmup)) ** power
        step >= total:   0

    The warm-up is ``torch.optim.lr_scheduler.LinearLR(start_factor=f, total_iters=warmup)``;
    both pieces equal ``base_lr`` at ``step == warmup``, so the joined schedule is continuous.
    """
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")
    decay_steps = total_steps - warmup_steps

    def schedule(step):
        # Steps are exact in fp32 up to 2**24.  The remaining fraction is computed as
        # (total - step) / decay_steps rather than optax's 1 - (step - warmup) / decay_steps,
        # whose cancellation costs ~4e-4 relative error in the last steps of a 119k-step run.
        step = jnp.asarray(step, jnp.float32)
        remaining = jnp.clip(total_steps - step, 0.0, decay_steps) / decay_steps  # 0 after the end
        poly = base_lr * remaining**power
        if warmup_steps == 0:
            return poly
        ramp = base_lr * (warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps)
        return jnp.where(step < warmup_steps, ramp, poly)

    return schedule


def schedule_of(train) -> optax.Schedule:
    """The learning-rate schedule of the ``train`` settings (``cfg.train``): warm-up, then poly."""
    return warmup_poly_schedule(
        train.base_lr,
        train.steps,
        warmup_steps=train.warmup_steps,
        warmup_start_factor=train.warmup_start_factor,
        power=train.poly_power,
    )


def _key_name(entry) -> str | None:
    # The name carried by one entry of a jax key path (dict key, attribute, or sequence index).
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return None


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def decay_mask(params) -> object:
    """Boolean pytree, a prefix of ``params``: True where weight decay applies.

    Decay applies to a leaf exactly when its name, the last key of its path, is ``kernel``
    (the Flax name of every conv and dense weight; ``jax_csfcn.layers`` keeps it), and, when
    the leaf is an ``nnx.Variable``, when it is an ``nnx.Param``.  So BN ``scale``/``bias``,
    conv and dense ``bias`` and BN statistics (``nnx.BatchStat``) get none.

    Works on the trees optax actually sees: an ``nnx.State`` of Variables (what
    ``nnx.Optimizer`` passes to ``tx.init``), the pure array ``nnx.State`` (what it passes to
    ``tx.update``), a ``nnx.split`` params state, or a plain nested dict.  Variables are
    treated as leaves, so the mask of a Variable state holds a bool where the Variable is,
    which is a valid prefix of both the Variable and the pure-array forms of the tree.
    """

    def leaf_mask(path, leaf) -> bool:
        if _is_variable(leaf) and not isinstance(leaf, nnx.Param):
            return False
        return bool(path) and _key_name(path[-1]) == "kernel"

    return jax.tree_util.tree_map_with_path(leaf_mask, params, is_leaf=_is_variable)


def sgd_optimizer(
    schedule: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    params=None,
    clip_norm: float = 0.0,
) -> optax.GradientTransformation:
    """SGD + momentum with coupled (L2) weight decay on kernels only, as ``torch.optim.SGD``.

    The chain is ``g + wd * w`` on the masked leaves (:func:`decay_mask`), then the momentum
    trace ``b = momentum * b + g`` and the step ``-lr * b``: the update order of torch's SGD
    (decay added to the gradient before momentum, no dampening, no Nesterov).  ``clip_norm`` > 0
    first scales the gradients down to that global L2 norm when above it (torch's
    ``clip_grad_norm_`` before ``step()``); 0 leaves the chain as it is, state included.

    ``params``: optional; when given, the mask is built from it once and checked to select at
    least one kernel (a model whose weights are not named ``kernel`` would otherwise silently
    train without weight decay).  Without it the mask is derived from the tree passed to
    ``init``/``update``, which is the same since it depends only on the paths.
    """
    mask: object | Callable = decay_mask
    if params is not None:
        mask = decay_mask(params)
        if weight_decay and not any(jax.tree_util.tree_leaves(mask)):
            raise ValueError("weight decay is on but no parameter named 'kernel' was found to apply it to")
    if clip_norm < 0:
        raise ValueError(f"train.clip_norm={clip_norm}: must be >= 0 (0 = no clipping)")
    clip = (optax.clip_by_global_norm(clip_norm),) if clip_norm else ()
    return optax.chain(
        *clip,
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.sgd(learning_rate=schedule, momentum=momentum),
    )


def optimizer_of(train, params) -> optax.GradientTransformation:
    """The optimizer of the ``train`` settings (``cfg.train``): schedule, momentum, decay, clipping."""
    return sgd_optimizer(
        schedule_of(train),
        train.momentum,
        train.weight_decay,
        params=params,
        clip_norm=train.clip_norm,
    )
