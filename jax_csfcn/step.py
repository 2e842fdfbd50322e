"""The CSFCN train step and its state, without the training run around it.

    from jax_csfcn.step import default_settings, make_train_step, model_config, init_state, replicate

    cfg = default_settings()            # or a ConfigDict of jax_csfcn.config: any object with the fields
    graphdef, _, params, stats = init_state(cfg, model_config(cfg))
    tx = optimizer_of(cfg.train, params)
    state = replicate({"params": params, "batch_stats": stats, "opt_state": tx.init(params)}, mesh)
    step = make_train_step(graphdef, tx, cfg, mesh)
    state, metrics = step(state, images_uint8_nhwc, labels_uint8_nhw)

:func:`jax_csfcn.training.train` runs this step in its loop (and re-exports these names); the
benchmark of one step (:func:`tools.benchmark_train.bench_train`) uses it directly.  ``cfg`` is
read by attribute only (``cfg.model.*``, ``cfg.train.*``, ``cfg.loss.*``, ``cfg.data.*``,
``cfg.seed``): an ``ml_collections.ConfigDict`` or the ``types.SimpleNamespace`` of
:func:`jax_csfcn.defaults.default_settings`.

This module, and everything it imports or calls, needs only JAX, Flax, Optax, NumPy and Pillow: no
grain, ml_collections, Orbax or TensorFlow (tests/test_step_imports.py runs it with those
imports refused), so the step runs on a machine with just the JAX and PyTorch stacks.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from csfcn.model_config import ModelConfig
from jax_csfcn.data.augment import augment_on_device
from jax_csfcn.defaults import default_settings
from jax_csfcn.losses import cross_entropy, ohem_cross_entropy
from jax_csfcn.model import build_model
from jax_csfcn.ops import normalize_on_device, resize_nearest

__all__ = ["DTYPES", "TrainError", "default_settings", "make_train_step", "model_config", "replicate"]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


def model_config(cfg) -> ModelConfig:
    return ModelConfig(name=cfg.model.name, num_classes=cfg.model.num_classes, stem=cfg.model.stem)


def finetune_summary(path, report: dict) -> str:
    """What fine-tuning from ``path`` loaded, re-initialised, mapped and ignored (a few lines)."""
    lines = [f"initialised from {path}: {len(report['loaded'])} tensors loaded"]
    if report["reinitialised"]:
        lines.append(
            f"  re-initialised (the classifier: new classes start fresh): {', '.join(report['reinitialised'])}"
        )
    if report["mapped"]:
        pairs = ", ".join(f"{i}<-{j}" for i, j in sorted(report["mapped"].items()))
        lines.append(f"  classifier rows copied (new<-old class): {pairs}")
    if report["ignored"]:
        lines.append(f"  ignored: {', '.join(report['ignored'])}")
    lines += [f"  warning: {w}" for w in report.get("warnings", ())]
    return "\n".join(lines)


def replicate(tree, mesh):
    """Host values (identical on every process) -> fully replicated global arrays."""
    sharding = NamedSharding(mesh, P())

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _fresh(tree):
    # New Variable objects at the current trace level (merge mutates BN statistics).
    return jax.tree.map(lambda a: a, tree)


def init_state(cfg, config: ModelConfig, init_backbone=None, init_from=None, *, fine_tune: bool = True):
    """``(train graphdef, eval graphdef, params, batch_stats)`` of a fresh model (seed ``cfg.seed``).

    Built in the compute dtype ``cfg.train.dtype`` (parameters stay fp32); the backbone comes
    from ``cfg.model.imagenet_init`` when that names a file, read by ``init_backbone(model,
    config, path) -> tensor count`` (``convert.init_backbone``: the PyTorch file reader lives
    above this package); the whole model from ``cfg.model.init_from`` (a segmentation
    checkpoint, fine-tuning) through ``init_from(model, config, path, class_map) -> report``
    (``convert.formats.init_from_checkpoint``), unless ``fine_tune`` is False (a resumed run
    restores its own state over this one).
    """
    dtype = DTYPES[cfg.train.dtype]
    model = build_model(config, seed=cfg.seed, dtype=dtype if dtype != jnp.float32 else None)
    init_from_path = getattr(cfg.model, "init_from", "") if fine_tune else ""
    if init_from_path:
        if cfg.model.imagenet_init:
            raise TrainError(
                "model.init_from and model.imagenet_init both set: a segmentation checkpoint already holds a "
                "backbone; keep one"
            )
        if init_from is None:
            raise TrainError(
                f"model.init_from={init_from_path!r} needs a checkpoint reader: pass "
                "init_from=convert.formats.init_from_checkpoint"
            )
        report = init_from(model, config, init_from_path, getattr(cfg.model, "init_from_classes", ""))
        if jax.process_index() == 0:
            print(finetune_summary(init_from_path, report))
    elif cfg.model.imagenet_init:
        if init_backbone is None:
            raise TrainError(
                f"model.imagenet_init={cfg.model.imagenet_init!r} needs a backbone reader: pass "
                "init_backbone=convert.init_backbone"
            )
        n = init_backbone(model, config, cfg.model.imagenet_init)
        if jax.process_index() == 0:
            print(f"backbone initialised from {cfg.model.imagenet_init} ({n} tensors)")
    model.train()
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    model.eval()
    eval_graphdef, _, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, eval_graphdef, params, stats


def loss_settings(cfg) -> dict:
    """The recipe's loss (config ``loss``, and the ignore label) as :func:`loss_term`'s arguments."""
    return {
        "ohem": bool(cfg.loss.ohem),
        "thresh": float(cfg.loss.thresh),
        "min_kept": int(cfg.loss.min_kept),
        "ignore_index": int(cfg.data.ignore_index),
    }


def loss_term(logits, labels, *, ohem: bool, thresh: float, min_kept: int, ignore_index: int):
    """One output's loss and the fraction of pixels it kept (1.0 without OHEM): the tested losses of
    jax_csfcn/losses.py."""
    if ohem:
        return ohem_cross_entropy(
            logits, labels, thresh=thresh, min_kept=min_kept, ignore_index=ignore_index, return_kept=True
        )
    return cross_entropy(logits, labels, ignore_index), jnp.float32(1.0)


def make_train_step(
    graphdef, tx, cfg, mesh, *, photometric_reach: int | None = None, geometry_orders: tuple[str, ...] | None = None
):
    """Jitted ``(state, images uint8 NHWC, labels uint8 NHW) -> (state, metrics)``.

    State (params, BN statistics, optimizer state) is replicated, the batch sharded on the
    ``data`` axis, so every reduction of the step (BN moments, the OHEM threshold, the loss
    mean, gradients) is over the global batch.  A step whose loss, gradients or updated
    parameters are not all finite leaves the state unchanged and reports ``finite = False``.

    The loader can leave augmentation steps to the device; the step then takes a fourth
    argument, a dict of the batch's fields for them, and applies them first, in the host's order:

    * ``geometry_orders`` (the pass orders the config can draw, ``geometry.possible_orders``):
      the batch's ``"geometry"`` tables (``data.geometry = "device"``) scale, crop, pad and flip
      the whole sources the batch then carries (jax_csfcn/data/geometry.py);
    * ``photometric_reach`` (the blur window's half-width, ``photometric.max_box_radius``): the
      batch's ``"photometric"`` parameters (``data.photometric = "device"``) blur and jitter the
      uint8 crops (jax_csfcn/data/photometric.py).
    """
    dtype = DTYPES[cfg.train.dtype]
    term = functools.partial(loss_term, **loss_settings(cfg))
    ignore_index = int(cfg.data.ignore_index)

    def step(state, images, labels, extras=None):
        images, labels = augment_on_device(
            images,
            labels,
            extras or {},
            ignore_index=ignore_index,
            geometry_orders=geometry_orders,
            photometric_reach=photometric_reach,
        )
        params, stats, opt_state = state["params"], state["batch_stats"], state["opt_state"]

        def loss_fn(p, s):
            model = nnx.merge(graphdef, p, _fresh(s))
            outs = model.outputs(normalize_on_device(images, dtype))
            if outs[0].shape[1:3] != labels.shape[1:]:
                raise TrainError(
                    f"the network output is {outs[0].shape[1:3]} for a {images.shape[1:3]} crop; "
                    "use a crop size that is a multiple of 32"
                )
            loss, kept = weighted_loss(outs, type(model).LOSS_WEIGHTS, labels, term)
            return loss, (nnx.state(model, nnx.BatchStat), kept)

        (loss, (new_stats, kept)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
        grad_norm = optax.global_norm(grads)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(new_params)

        def pick(new, old):
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        new_state = {
            "params": pick(new_params, params),
            "batch_stats": pick(new_stats, stats),
            "opt_state": pick(new_opt, opt_state),
        }
        return new_state, {"loss": loss, "grad_norm": grad_norm, "ohem_kept": kept, "finite": finite}

    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    if photometric_reach is None and geometry_orders is None:
        return jax.jit(
            lambda state, images, labels: step(state, images, labels),
            in_shardings=(repl, data, data),
            out_shardings=(repl, repl),
            donate_argnums=(0,),
        )
    return jax.jit(step, in_shardings=(repl, data, data, data), out_shardings=(repl, repl), donate_argnums=(0,))


def make_stop_agreement(mesh):
    """``agree(stop, due) -> flags``: every process's (stop requested, save due) OR-ed over the
    processes, as an array still on its way (read it with :func:`read_flags` a step later, so
    the host never waits for the device). Every process calls it once per step; all then act on
    the same flags at the same step. Only process 0 passes ``due`` (its clock decides the timed
    saves); any process's ``stop`` (a signal may reach one host first) stops them all."""
    sharding = NamedSharding(mesh, P("data"))
    rows = len(mesh.local_devices)
    reduce = jax.jit(lambda a: a.max(axis=0), out_shardings=NamedSharding(mesh, P()))

    def agree(stop: bool, due: bool) -> jax.Array:
        local = np.tile(np.array([stop, due], np.int32), (rows, 1))
        return reduce(jax.make_array_from_process_local_data(sharding, local))

    return agree


def read_flags(flags: jax.Array) -> tuple[bool, bool]:
    """(stop, due) of an :func:`make_stop_agreement` result (replicated: this process's copy)."""
    stop, due = np.asarray(flags.addressable_data(0))
    return bool(stop), bool(due)


def weighted_loss(outputs, weights, labels: jax.Array, term) -> tuple[jax.Array, jax.Array]:
    """``sum_i weights[i] * term(outputs[i], labels at outputs[i]'s size)`` and the first weighted
    term's kept fraction.

    The main output and the auxiliary heads of docs/zoo.md: heads at the input size read the
    labels as they are; a lower-resolution output (ICNet's 1/4, 1/8, 1/16 logits) reads them
    resized by nearest neighbour, so every pixel keeps a real class id (never an average of
    two ids, nor of an id and the ignore value).
    """
    if len(outputs) != len(weights):
        raise TrainError(f"the model gives {len(outputs)} outputs but {len(weights)} loss weights")
    total, kept = jnp.float32(0.0), None
    for logits, w in zip(outputs, weights):
        if not w:
            continue
        lab = labels
        if logits.shape[1:3] != labels.shape[1:]:
            lab = resize_nearest(labels[..., None], logits.shape[1:3])[..., 0]
        loss, frac = term(logits.astype(jnp.float32), lab)
        total = total + w * loss
        kept = frac if kept is None else kept
    return total, kept


# --------------------------------------------------------------------------- multi-host
def maybe_initialize_distributed(coordinator_address=None, num_processes=None, process_id=None) -> None:
    """``jax.distributed.initialize`` when asked to (flags) or when a cluster is detected."""
    if jax.distributed.is_initialized():
        return
    explicit = coordinator_address is not None
    detected = any(v in os.environ for v in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"))
    if not explicit and not detected:
        return
    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or not _has_accelerator():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        jax.distributed.initialize()


def _has_accelerator() -> bool:
    try:
        return (
            importlib.util.find_spec("jax_cuda12_plugin") is not None or importlib.util.find_spec("libtpu") is not None
        )
    except Exception:
        return False
