"""Checkpoints of a training run: Orbax ``CheckpointManager`` under ``workdir/checkpoints``.

One checkpoint step directory holds three items::

    checkpoints/<step>/state/   params, BN statistics, optimizer state  (Orbax pytree)
    checkpoints/<step>/loader/  the grain iterator state, one JSON per process
    checkpoints/<step>/meta/    {"step", "seed", "model": ModelConfig fields, "checksums", ...}  (JSON)

Saves are asynchronous and atomic (Orbax writes into a temporary directory and renames it
when complete), so a run killed at any moment keeps every checkpoint it finished; a save that
fails (a full disk) leaves its temporary directory, removed at once (:func:`remove_partial`)
and, should that fail too, by the next run's manager.  The last ``keep`` checkpoints are kept,
plus the best by val mIoU.

``meta`` records checksums of the saved state (:func:`state_checksums`, exact integer sums of
the bits of every leaf, computed on the device); :func:`restore` compares them with what it
read, so a damaged or swapped ``state/`` is a :class:`DamagedCheckpoint` naming the step and
the part, never a run that silently continues from other weights.

:func:`read_run_params` reads the model of a run (its best checkpoint, else the latest) for
``jax_csfcn.load_model`` / ``convert.load_torch_model`` / ``python -m convert``.

Also the Flax side of checkpoint files: a model's variables as {path: array}
(:func:`model_flat`, :func:`set_model_flat`, :func:`model_template`) and bare Orbax params
directories (:func:`write_orbax`, :func:`read_orbax`). Orbax and grain are imported where they
are used: the model and its train step run without them (csfcn.extras, "train").
"""

from __future__ import annotations

import gc
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax
import jax.lax as lax
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


class DamagedCheckpoint(CheckpointError):
    """The step directory ``step_dir`` cannot be used as it is on disk: ``what`` says which file
    or part is damaged (a truncated or garbled file, a ``state/`` that is not the state saved as
    this step).

    A training run that resumes looks for the last earlier step that restores intact and sets
    ``earlier`` (that step) and ``damaged`` (every step directory after it); the message then
    says how to resume from it, with ``command`` (set by the CLI; "the same command with
    --resume" otherwise). ``probed`` says that the search was made (``earlier`` None: none)."""

    def __init__(self, step_dir, what: str):
        super().__init__(what)
        self.step_dir, self.what = Path(step_dir), what
        self.probed, self.earlier, self.damaged, self.command = False, None, [self.step_dir], None
        self.verified = True  # whether ``earlier`` was restored and found intact

    def __str__(self) -> str:
        msg = f"checkpoint step {self.step_dir.name} ({self.step_dir}) is damaged: {self.what}"
        if not self.probed:
            return msg
        run = self.step_dir.parent.parent
        if self.earlier is None:
            return (
                f"{msg}; no earlier checkpoint of {run} restores intact: restore the step folder from a backup, "
                "or start the run again in a new --config.workdir"
            )
        aside = run / "damaged-checkpoints"
        cmd = self.command or "run the same training command with --resume"
        moves = " ".join(shlex.quote(str(d)) for d in self.damaged)
        return (
            f"{msg}; resume from step {self.earlier}, the last "
            + ("intact checkpoint" if self.verified else "earlier checkpoint (verified as it is restored)")
            + ", with: "
            f"mkdir -p {shlex.quote(str(aside))} && mv {moves} {shlex.quote(str(aside))}/ && {cmd} "
            "(the damaged step folder is kept aside, not deleted)"
        )


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
    try:
        return ocp.CheckpointManager(Path(directory).absolute(), item_names=ITEMS, options=options)
    except (ValueError, UnicodeDecodeError) as e:  # it reads every step's metrics/ (the best by mIoU) first
        steps = sorted((int(p.name) for p in Path(directory).iterdir() if p.name.isdigit()), reverse=True)
        for i, step in enumerate(steps):
            bad = unreadable_json(Path(directory).absolute() / str(step))
            if bad:
                err = DamagedCheckpoint(
                    Path(directory).absolute() / str(step),
                    f"{', '.join(map(str, bad))} cannot be read: cut short or garbled ({type(e).__name__}: {e})",
                )
                err.probed, err.verified = not read_only, False
                err.earlier = steps[i + 1] if i + 1 < len(steps) else None
                err.damaged = [err.step_dir.parent / str(s) for s in steps[: i + 1]]
                raise err from e
        raise


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


# --------------------------------------------------------------------------- state checksums
def _leaf_checksum(x):
    """An exact checksum of the bits of one array: sum of word * (2 i + 1) mod 2**32 over its
    32-bit (or narrower) words. Integer sums do not depend on the order of summation, so the
    value is the same on any device and sharding; any single changed word changes it."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}.get(x.dtype.itemsize)
    if width is None:  # 64-bit leaves (jax_enable_x64): two 32-bit words each
        w = lax.bitcast_convert_type(x, jnp.uint32)
    else:
        w = lax.bitcast_convert_type(x, width).astype(jnp.uint32)
    w = w.ravel()
    odd = 2 * jnp.arange(w.size, dtype=jnp.uint32) + 1
    return jnp.sum(w * odd, dtype=jnp.uint32)


_leaf_checksums = jax.jit(lambda tree: jax.tree.map(_leaf_checksum, tree))


def _path_name(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def state_checksums(state) -> dict[str, int]:
    """{array path: exact checksum} of every leaf of a train state, computed where the state lives
    (only one number per array comes to the host)."""
    sums = jax.device_get(_leaf_checksums(state))
    return {_path_name(p): int(c) for p, c in jax.tree_util.tree_leaves_with_path(sums)}


def optimizer_steps(state) -> int | None:
    """The optimizer's own step count in a train state (its integer scalars, when they agree)."""
    if not isinstance(state, dict) or "opt_state" not in state:
        return None
    counts = {
        int(jax.device_get(x))
        for x in jax.tree.leaves(state["opt_state"])
        if getattr(x, "ndim", None) == 0 and jnp.issubdtype(x.dtype, jnp.integer)
    }
    return counts.pop() if len(counts) == 1 else None


# --------------------------------------------------------------------------- save, restore
def save(mngr, step: int, state, loader_state: dict, meta: dict, metrics: dict | None = None) -> None:
    """Start saving ``step`` (asynchronously when the manager is async); ``meta`` gets the checksums
    of ``state`` and its optimizer step count, which :func:`restore` verifies."""
    import grain
    import orbax.checkpoint as ocp

    meta = {**meta, "checksums": state_checksums(state), "optimizer_steps": optimizer_steps(state)}
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


def partial_dirs(directory) -> list[Path]:
    """The temporary directories of unfinished saves in the checkpoint folder ``directory``."""
    from orbax.checkpoint._src.path.atomicity_types import TMP_DIR_SUFFIX

    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if TMP_DIR_SUFFIX in p.name and p.is_dir())


def join_writers(timeout: float = 120.0) -> None:
    """Wait (up to ``timeout`` seconds in all) for Orbax's background save threads: after one of
    them failed, the manager stops waiting while the others still write into the save's
    temporary directory."""
    deadline = time.monotonic() + timeout
    for t in threading.enumerate():
        if t is not threading.current_thread() and type(t).__module__.startswith("orbax."):
            t.join(max(0.0, deadline - time.monotonic()))


def remove_partial(directory) -> list[Path]:
    """Remove what unfinished saves left in ``directory`` (a full disk, a killed run), once the
    writers are done; the list."""
    join_writers()
    gone = []
    for p in partial_dirs(directory):
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            gone.append(p)
    return gone


# The JSON files of a step directory (Orbax's and ours); the rest is binary (state/**/d/*, manifest.ocdbt).
JSON_NAMES = ("_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata", "metrics")


def unreadable_json(step_dir) -> list[Path]:
    """The JSON files of ``step_dir`` that do not parse (cut short or garbled), relative to it."""
    bad = []
    for p in sorted(Path(step_dir).rglob("*")):
        if p.is_file() and (p.name in JSON_NAMES or p.suffix == ".json" or p.parent.name == "array_metadatas"):
            try:
                json.loads(p.read_bytes().decode())
            except (ValueError, UnicodeDecodeError):
                bad.append(p.relative_to(step_dir))
    return bad


# What the readers say when a file's bytes are wrong (TensorStore's status codes, and the like).
DAMAGE_WORDS = ("DATA_LOSS", "OUT_OF_RANGE", "truncated", "Unexpected end", "corrupt", "checksum")


def _damage(step_dir: Path, e: BaseException) -> str | None:
    """What ``e`` (raised while reading ``step_dir``) says is damaged there: the file, when the
    errors allow to tell (a JSON file that does not parse; a data file they name, or whose size
    is that of the value read past its end), else the array; None when ``e`` is no sign of a
    damaged file (a checkpoint of another model or optimizer, say)."""
    chain = list(_chain(e))
    text = " ".join(str(x) for x in chain)
    root = chain[-1]
    why = f"{type(root).__name__}: {' '.join(str(root).split())[:300]}"
    if any(isinstance(x, (json.JSONDecodeError, UnicodeDecodeError)) for x in chain):
        bad = unreadable_json(step_dir)
        return f"{', '.join(map(str, bad)) if bad else 'a JSON file'} cannot be read: cut short or garbled ({why})"
    if not any(k in text for k in DAMAGE_WORDS):
        return None
    files = [p for p in step_dir.rglob("*") if p.is_file()]
    named = [p for p in files if str(p) in text]
    if not named:  # the OCDBT reader names the array and the size of the value it found, not the file
        sizes = {int(n) for n in re.findall(r"value of size (\d+)", text)}
        named = [p for p in files if p.stat().st_size in sizes]
    if named:
        where = str(max(named, key=lambda p: len(str(p))).relative_to(step_dir))
    else:
        array = re.search(r'Error reading "([^"/]+)', text)
        where = f"state/ (array {array.group(1)})" if array else "a file of state/"
    return f"{where} cannot be read: cut short or garbled ({why})"


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _drop_read_noise() -> None:
    """After one array of a restore failed, the reads of the others in flight are dropped: Python
    reports each (an unawaited read coroutine, a callback into the closed event loop) as an
    "ignored" exception, at garbage collection or whenever the reader thread gets to it, a
    screenful each. The failure itself is reported once (DamagedCheckpoint); from now on this
    process drops those reports, and passes every other one on as before."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_read_noise", False):
        return

    def hook(unraisable) -> None:
        text = f"{unraisable.exc_value} {unraisable.object!r}"
        if "Event loop is closed" in text or "Encountered error while reading array" in text or "_read_array" in text:
            return
        previous(unraisable)

    hook.drops_read_noise = True
    sys.unraisablehook = hook


def restore(mngr, step: int, abstract_state) -> tuple[object, dict, dict]:
    """(state, loader state dict, meta) of ``step``; ``abstract_state`` gives structure and shardings.

    A file that cannot be read, or a state whose checksums differ from those recorded at save
    time, is a :class:`DamagedCheckpoint` naming the file or part."""
    import grain
    import orbax.checkpoint as ocp

    step_dir = Path(mngr.directory) / str(step)
    meta = read_meta(step_dir)  # a damaged meta/ names itself here
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
    except Exception as e:
        _drop_read_noise()
        gc.collect()
        what = _damage(step_dir, e)
        if what is not None:
            raise DamagedCheckpoint(step_dir, what) from e
        if not isinstance(e, (ValueError, KeyError, TypeError)):
            raise
        raise CheckpointError(
            f"cannot restore step {step} from {mngr.directory}: {type(e).__name__}: {e}. "
            "Was it written by a run with another model config, optimizer or number of processes?"
        ) from e
    state = out["state"]
    if not isinstance(snap.state, dict):
        raise DamagedCheckpoint(step_dir, f"loader/ holds no loader position ({type(snap.state).__name__})")
    verify(step_dir, state, meta)
    return state, snap.state, dict(out["meta"])


def verify(step_dir, state, meta: dict) -> None:
    """Raise :class:`DamagedCheckpoint` when ``state`` (restored from ``step_dir``) is not the state
    that was saved there: its optimizer step count or its checksums differ from ``meta``'s.
    Checkpoints written before checksums were recorded pass unchecked."""
    saved = meta.get("checksums")
    if not isinstance(saved, dict):
        return
    step, steps = meta.get("step"), optimizer_steps(state)
    if meta.get("optimizer_steps") is not None and steps is not None and steps != meta["optimizer_steps"]:
        raise DamagedCheckpoint(
            step_dir,
            f"state/ holds a state after {steps} optimizer steps, but meta/ records {meta['optimizer_steps']} "
            f"at step {step}: state/ is another step's (copied or swapped in after the save)",
        )
    got = state_checksums(state)
    if set(got) == set(saved):
        bad = [k for k in saved if saved[k] != got[k]]
    else:  # arrays named otherwise (another library version): compare the contents only
        bad = ["(arrays named otherwise)"] if sorted(saved.values()) != sorted(got.values()) else []
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DamagedCheckpoint(
            step_dir,
            f"state/ arrays {', '.join(bad[:3])}{more} differ from the checksums meta/ recorded when step {step} was "
            "saved: a data file of state/ was garbled or replaced after the save",
        )


def read_meta(step_dir) -> dict:
    """The ``meta`` item of a step directory; a damaged one is a :class:`DamagedCheckpoint`."""
    import orbax.checkpoint as ocp

    step_dir = Path(step_dir).absolute()
    try:
        with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ck:
            meta = ck.restore(step_dir / "meta")
    except (ValueError, UnicodeDecodeError) as e:
        why = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        raise DamagedCheckpoint(step_dir, f"meta/metadata cannot be read: cut short or garbled ({why})") from e
    if not isinstance(meta, dict):
        raise DamagedCheckpoint(step_dir, f"meta/metadata holds a {type(meta).__name__}, not the step's record")
    return dict(meta)


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
