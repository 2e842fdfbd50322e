"""Checkpoints of a training run: Orbax ``CheckpointManager`` under ``workdir/checkpoints``.

One checkpoint step directory holds three items::

    checkpoints/<step>/state/   params, BN statistics, optimizer state  (Orbax pytree)
    checkpoints/<step>/loader/  the grain iterator state, one JSON per process
    checkpoints/<step>/meta/    {"step", "seed", "model": ModelConfig fields, ...}  (JSON)

Saves are asynchronous and atomic (Orbax writes into a temporary directory and renames it
when complete), so a run killed at any moment keeps every checkpoint it finished.  The last
``keep`` checkpoints are kept, plus the best by val mIoU.

:func:`read_run_params` reads the model of a run (its best checkpoint, else the latest) for
``jax_csfcn.load_model`` / ``convert.load_torch_model`` / ``python -m convert``.

Also the Flax side of checkpoint files: a model's variables as {path: array}
(:func:`model_flat`, :func:`set_model_flat`, :func:`model_template`) and bare Orbax params
directories (:func:`write_orbax`, :func:`read_orbax`). Orbax and grain are imported where they
are used: the model and its train step run without them (csfcn.extras, "train").
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from csfcn.checkpoints import CONFIG_FILE, PARAMS_DIR, ConversionError
from csfcn.extras import require
from csfcn.model_config import ModelConfig
from csfcn.tree import KeyPath, flatten, unflatten
from jax_csfcn.model import build_model

CHECKPOINT_DIR = "checkpoints"
ITEMS = ("state", "loader", "meta")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the directory and the fix."""


def manager(directory, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
    """The run's ``CheckpointManager``: last ``keep`` plus the best by ``miou`` kept."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers as cm

    policy = cm.AnyPreservationPolicy(
        [
            cm.LatestN(n=keep),
            cm.BestN(get_metric_fn=lambda m: m["miou"], reverse=False, n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=lambda m: m["miou"],
        best_mode="max",
        enable_async_checkpointing=async_save,
        create=not read_only,
        read_only=read_only,
        save_interval_steps=0 if read_only else 1,
        cleanup_tmp_directories=not read_only,
    )
    return ocp.CheckpointManager(Path(directory).absolute(), item_names=ITEMS, options=options)


class LoaderStateSnapshot:
    """The grain iterator state frozen at save time (an async save must not read it later).

    Quacks like a grain ``DataLoaderIterator`` for ``grain.checkpoint.CheckpointSave``/
    ``CheckpointRestore`` (JSON bytes, one file per process).
    """

    def __init__(self, state: dict | None = None):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state, indent=1).encode()

    def set_state(self, state: bytes) -> None:
        self.state = json.loads(state.decode() if isinstance(state, bytes) else state)

    def start_prefetch(self) -> None:  # called by grain's restore; nothing to prefetch here
        pass


def save(mngr, step: int, state, loader_state: dict, meta: dict, metrics: dict | None = None) -> None:
    import grain
    import orbax.checkpoint as ocp

    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            loader=grain.checkpoint.CheckpointSave(LoaderStateSnapshot(loader_state)),
            meta=ocp.args.JsonSave(meta),
        ),
        metrics=metrics,
        force=True,
    )


def restore(mngr, step: int, abstract_state) -> tuple[object, dict, dict]:
    """(state, loader state dict, meta) of ``step``; ``abstract_state`` gives structure and shardings."""
    import grain
    import orbax.checkpoint as ocp

    snap = LoaderStateSnapshot()
    try:
        out = mngr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                loader=grain.checkpoint.CheckpointRestore(snap),
                meta=ocp.args.JsonRestore(),
            ),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"cannot restore step {step} from {mngr.directory}: {type(e).__name__}: {e}. "
            "Was it written by a run with another model config, optimizer or number of processes?"
        ) from e
    return out["state"], snap.state, dict(out["meta"])


def read_meta(step_dir) -> dict:
    import orbax.checkpoint as ocp

    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ck:
        return dict(ck.restore(Path(step_dir).absolute() / "meta"))


# --------------------------------------------------------------------------- reading a run
def is_run_dir(path) -> bool:
    """A run workdir, its ``checkpoints/`` folder, or one step directory of it."""
    p = Path(path)
    return p.is_dir() and (
        (p / CHECKPOINT_DIR).is_dir() or (p / "meta").is_dir() and (p / "state").is_dir() or _has_steps(p)
    )


def has_checkpoints(workdir) -> bool:
    """Whether the run ``workdir`` holds at least one finished step (what ``--resume`` restores)."""
    d = Path(workdir) / CHECKPOINT_DIR
    return d.is_dir() and _has_steps(d)


def _has_steps(p: Path) -> bool:
    return any(c.is_dir() and c.name.isdigit() and (c / "state").is_dir() for c in p.iterdir())


def resolve_step_dir(path) -> Path:
    """The step directory to load from ``path``: best by val mIoU, else the latest step."""
    p = Path(path).absolute()
    if (p / "state").is_dir() and (p / "meta").is_dir():
        return p
    root = p / CHECKPOINT_DIR if (p / CHECKPOINT_DIR).is_dir() else p
    mngr = manager(root, read_only=True)
    try:
        step = mngr.best_step()  # None when no checkpoint has a val mIoU yet
        step = step if step is not None else mngr.latest_step()
        if step is None:
            raise CheckpointError(f"{root}: no finished checkpoint in this run directory")
        return root / str(step)
    finally:
        mngr.close()


def _strip_value(path: tuple) -> tuple:
    # nnx Variables flatten with a trailing "value" attribute; the model's paths end before it.
    return path[:-1] if path and path[-1] == "value" else path


def read_run_params(path) -> tuple[ModelConfig, dict[tuple[str, ...], np.ndarray], Path]:
    """(model config, {str path: array} of params + BN statistics, step dir) of a run checkpoint."""
    import orbax.checkpoint as ocp  # optional: see the module docstring

    step_dir = resolve_step_dir(path)
    meta = read_meta(step_dir)
    if "model" not in meta:
        raise CheckpointError(f"{step_dir}/meta has no 'model' entry: not a csfcn training checkpoint")
    config = ModelConfig.from_mapping(meta["model"])
    with ocp.PyTreeCheckpointer() as ck:
        # Host numpy arrays whatever the sharding the run saved with (1 or many devices).
        structure = ck.metadata(step_dir / "state").item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), structure)
        tree = ck.restore(step_dir / "state", args=ocp.args.PyTreeRestore(restore_args=restore_args))
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for part in ("params", "batch_stats"):
        if part not in tree:
            raise CheckpointError(f"{step_dir}/state has no {part!r}: not a csfcn training checkpoint")

        for path, value in flatten(tree[part], leaf=np.asarray, key=str).items():
            flat[_strip_value(path)] = value
    return config, flat, step_dir


def model_meta(config: ModelConfig) -> dict:
    return config.as_dict()


# --------------------------------------------------------------------------- a model's variables
def flatten_state(tree, leaf=np.asarray) -> dict[KeyPath, np.ndarray]:
    """Nested pure dict (as ``nnx.to_pure_dict`` gives) -> {path tuple: leaf(value)}."""
    return flatten(tree, leaf=leaf)


def model_flat(model) -> dict[KeyPath, np.ndarray]:
    """{path: array} of every variable (params and BN statistics) of an nnx model."""
    return flatten_state(nnx.to_pure_dict(nnx.state(model)))


def model_template(config: ModelConfig) -> dict[KeyPath, tuple[int, ...]]:
    """{path: shape} of every variable of the model, without allocating it."""
    abstract = nnx.eval_shape(lambda: build_model(config))
    return flatten_state(nnx.to_pure_dict(nnx.state(abstract)), leaf=lambda v: tuple(v.shape))


def set_model_flat(model, flat: dict[KeyPath, np.ndarray]) -> None:
    """Write {path: array} into the model's variables (paths must exist)."""
    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)
    for path, arr in flat.items():
        node = pure
        for k in path[:-1]:
            node = node[k]
        if tuple(node[path[-1]].shape) != tuple(arr.shape):
            raise ConversionError(f"{'.'.join(map(str, path))}: shape {arr.shape} != model {node[path[-1]].shape}")
        node[path[-1]] = jnp.asarray(arr, dtype=node[path[-1]].dtype)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


def match_template(template: dict[KeyPath, tuple], flat_str: dict, source: str) -> dict[KeyPath, np.ndarray]:
    """Map string-keyed paths back onto the template's (str | int) paths, strictly."""
    by_str = {tuple(map(str, p)): p for p in template}
    missing = [".".join(s) for s in by_str if s not in flat_str]
    unexpected = [".".join(s) for s in flat_str if s not in by_str]
    bad = [
        f"{'.'.join(s)}: {flat_str[s].shape} vs {template[p]}"
        for s, p in by_str.items()
        if s in flat_str and tuple(flat_str[s].shape) != tuple(template[p])
    ]
    if missing or unexpected or bad:
        raise ConversionError(
            f"{source}: params do not match the model: missing {missing[:10]}, unexpected {unexpected[:10]}, wrong shape {bad[:10]}"
        )
    return {p: flat_str[s] for s, p in by_str.items()}


# --------------------------------------------------------------------------- bare Orbax params
def write_orbax(path, config: ModelConfig, flat: dict[KeyPath, np.ndarray]) -> None:
    """Flax params + BN statistics with Orbax, and the config as JSON, into directory ``path``."""
    require("train", "reading or writing Orbax checkpoints", modules=("orbax",))
    import orbax.checkpoint as ocp  # optional: see the module docstring

    path = Path(path).absolute()
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path}: directory exists and is not empty; remove it or choose another")
    tree = unflatten(flat, leaf=np.asarray, key=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_DIR, tree)
            ckptr.wait_until_finished()
        (tmp / CONFIG_FILE).write_text(config.to_json())
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def read_orbax(path) -> tuple[ModelConfig, dict[tuple[str, ...], np.ndarray]]:
    """(config, {path of str keys: array}) of an Orbax params directory."""
    require("train", "reading or writing Orbax checkpoints", modules=("orbax",))
    import orbax.checkpoint as ocp  # optional: see the module docstring

    path = Path(path).absolute()
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file() or not (path / PARAMS_DIR).is_dir():
        raise ConversionError(f"{path}: not a csfcn Flax checkpoint (expected {CONFIG_FILE} and {PARAMS_DIR}/ inside)")
    config = ModelConfig.from_json(cfg_file.read_text())
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(path / PARAMS_DIR)
    return config, {tuple(map(str, p)): np.asarray(v) for p, v in flatten_state(tree).items()}


def read_flax_checkpoint(path) -> tuple[ModelConfig, dict[KeyPath, np.ndarray]]:
    """A training run (best, else latest, checkpoint), one step of it, or an Orbax params
    directory -> (config, flat params matched to the model)."""
    if is_run_dir(path):
        config, flat_str, step_dir = read_run_params(path)
        return config, match_template(model_template(config), flat_str, str(step_dir))
    if not Path(path).is_dir():
        raise ConversionError(
            f"{path}: not a training run or Orbax directory; a PyTorch file (.safetensors/.pth) loads into "
            "Flax with convert.load_flax_model"
        )
    config, flat_str = read_orbax(path)
    return config, match_template(model_template(config), flat_str, str(path))
