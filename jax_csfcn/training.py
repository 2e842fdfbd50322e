"""The training loop of CSFCN in JAX: one jitted step, data parallel over every device of every host.

The command is ``python -m jax_csfcn.train`` (tools/train.py); this module is the library it
calls, :func:`train`, so that other tools (the demo, accuracy_speed) and tests run the same loop.
Everything of a run lives in ``config.workdir``: ``checkpoints/`` (Orbax), ``metrics.jsonl``
(one JSON object per logged step), ``tb/`` (TensorBoard), ``curves.png``, ``config.json`` and
``eval.json``.  ``resume=True`` continues the run in the workdir exactly where its last complete
checkpoint left it: same parameters, optimizer state and data order, so the loss curve equals
that of an uninterrupted run. Without it a run refuses a workdir that holds an earlier run's
files. Each checkpoint records checksums of its state: a damaged or swapped one is refused on
resume, naming the file and the command that resumes from the last intact step. A full disk at
a save ends the run with one error and no partial step folder.

Initial weights from files (``model.imagenet_init``, ``model.init_from``) are read by the
functions the caller passes (``init_backbone``, ``init_from``): reading a PyTorch or Flax file is
the converter's work (convert/), which sits above this library (docs/architecture.md,
"Package layering"); tools/train.py passes the converter's readers.
"""

from __future__ import annotations

from csfcn.extras import require

require("train", "jax_csfcn.training")  # before the imports that need the extra

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import math
import os
import re
import socket
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from csfcn.files import write_failure
from csfcn.interrupt import Preempted, StopRequest
from jax_csfcn import checkpointing as ckpt
from jax_csfcn.data.folder import read_table
from jax_csfcn.data.geometry import possible_orders
from jax_csfcn.data.photometric import max_box_radius
from jax_csfcn.data.pipeline import AugmentConfig, loader_state, restore_loader_state, train_loader
from jax_csfcn.data.sources import family
from jax_csfcn.evaluation import (
    build_split,
    check_source,
    class_names_of,
    data_mesh,
    format_scores,
    make_eval_step,
    run_eval,
    scores_json,
)
from jax_csfcn.run_log import Logger, plot_curves
from jax_csfcn.schedule import optimizer_of, schedule_of

# The step and its state: jax_csfcn/step.py (no grain, ml_collections or Orbax there).
from jax_csfcn.step import (
    DTYPES,
    TrainError,
    init_state,
    make_stop_agreement,
    make_train_step,
    model_config,
    read_flags,
    replicate,
)

__all__ = ["TrainError", "train"]


# --------------------------------------------------------------------------- setup
# --------------------------------------------------------------------------- training
def _validate(cfg) -> None:
    init = cfg.model.imagenet_init
    if init and not Path(init).is_file():
        raise TrainError(f"model.imagenet_init={init!r}: no such file (an ImageNet ResNet-18 state_dict, .pth)")
    if cfg.model.init_from_classes and not cfg.model.init_from:
        raise TrainError("model.init_from_classes is set without model.init_from: name the checkpoint to start from")
    if Path(cfg.workdir).exists() and not Path(cfg.workdir).is_dir():
        raise TrainError(f"workdir={cfg.workdir!r} is a file; set config.workdir to a folder for the run")
    if cfg.train.dtype not in DTYPES:
        raise TrainError(f"train.dtype={cfg.train.dtype!r}: choose one of {sorted(DTYPES)}")
    gb, pc, dc = cfg.train.batch_size, jax.process_count(), jax.device_count()
    if gb % dc or gb % pc:
        raise TrainError(
            f"train.batch_size={gb} must be divisible by the number of devices ({dc}) and processes ({pc})"
        )
    if cfg.train.steps <= cfg.train.warmup_steps:
        raise TrainError(f"train.steps={cfg.train.steps} must exceed train.warmup_steps={cfg.train.warmup_steps}")
    if cfg.loss.min_kept < 1:
        raise TrainError(f"loss.min_kept={cfg.loss.min_kept} must be >= 1")
    at_least_one = {
        "train.batch_size": cfg.train.batch_size,
        "train.steps": cfg.train.steps,
        "train.log_every": cfg.train.log_every,
        "checkpoint.every": cfg.checkpoint.every,
        "checkpoint.keep": cfg.checkpoint.keep,
        "eval.batch_size": cfg.eval.batch_size,
    }
    for key, value in at_least_one.items():
        if value < 1:
            raise TrainError(f"{key}={value} must be >= 1")
    zero_means = {
        "eval.every": "only at the end",
        "data.workers": "in-process",
        "train.clip_norm": "no clipping",
        "checkpoint.every_minutes": "no timed saves",
    }
    for key, value in (
        ("eval.every", cfg.eval.every),
        ("data.workers", cfg.data.workers),
        ("train.clip_norm", cfg.train.clip_norm),
        ("checkpoint.every_minutes", cfg.checkpoint.every_minutes),
    ):
        if value < 0:
            raise TrainError(f"{key}={value} must be >= 0 (0 = {zero_means[key]})")
    if len(cfg.data.crop_size) != 2 or min(cfg.data.crop_size) < 32:
        raise TrainError(f"data.crop_size={tuple(cfg.data.crop_size)} must be (H, W) with both sides >= 32")
    try:
        model_config(cfg)  # the model name, stem and class count
    except ValueError as e:
        raise TrainError(f"{e} (set it with --config.model.<field>=...)") from None
    sr = tuple(cfg.data.scale_range)
    try:
        lo, hi = (float(v) for v in sr)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not 0 < lo <= hi:  # NaN fails too
        fix = (
            f"--config.data.scale_range='({hi}, {lo})'"
            if 0 < hi < lo
            else "e.g. --config.data.scale_range='(0.5, 2.0)'"
        )
        raise TrainError(
            f"data.scale_range={sr} must be (low, high) random scale factors with 0 < low <= high; pass {fix}"
        )
    augment_config(cfg)  # every other augmentation setting, before the run takes its folder


def augment_config(cfg) -> AugmentConfig:
    """The loader's augmentation from ``cfg.data``; a bad value is a TrainError naming its key."""
    try:
        return AugmentConfig(
            crop_size=tuple(cfg.data.crop_size),
            base_size=tuple(cfg.data.base_size) if cfg.data.base_size else None,
            scale_range=tuple(cfg.data.scale_range),
            flip=cfg.data.flip,
            blur_prob=cfg.data.blur_prob,
            color_jitter=cfg.data.color_jitter,
            hue_jitter=cfg.data.hue_jitter,
            ignore_index=cfg.data.ignore_index,
            photometric=cfg.data.photometric,
            geometry=cfg.data.geometry,
        )
    except ValueError as e:
        raise TrainError(str(e).replace("AugmentConfig.", "data.") + "; fix it with --config.data.KEY=VALUE") from None


# What a run writes into its workdir besides checkpoints/: a new run there would overwrite them.
RUN_FILES = ("config.json", "metrics.jsonl", "eval.json", "curves.png", "tb")


def _refuse_to_overwrite(workdir: Path, resume: bool) -> None:
    """A run without --resume starts only in a folder that holds no earlier run's files: it
    would overwrite ``config.json``, truncate-by-rewrite ``metrics.jsonl`` and so on. Process 0
    looks (the others may not share its disk) and tells every process."""
    if resume:
        return
    found = []
    if jax.process_index() == 0:
        found = [n for n in RUN_FILES if (workdir / n).exists()]
        if ckpt.has_checkpoints(workdir):
            found.append(f"{ckpt.CHECKPOINT_DIR}/")
    refuse = bool(found)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # lazy: only a run of several processes uses it

        refuse = bool(multihost_utils.broadcast_one_to_all(np.int32(refuse)))
    if refuse:
        what = ", ".join(found) if found else "files (as process 0 found)"
        raise TrainError(
            f"{workdir} already holds {what} of an earlier run, which this run would overwrite; set "
            "--config.workdir to a new folder, or pass --resume if this is that run's folder (it continues "
            "from the last checkpoint, or from step 0 when there is none)"
        )


@contextlib.contextmanager
def workdir_lock(workdir: Path, take: bool = True):
    """Hold ``workdir/.lock`` (an exclusive ``flock``) for the duration of a run.

    A second run on the same folder would interleave ``metrics.jsonl``, replace the first run's
    checkpoints and ``config.json``: it stops at once instead, naming the run that holds the
    folder. The kernel drops the lock when the holder exits, however it exits (SIGKILL included),
    so a killed run never leaves a stale lock. Only process 0 of a multi-process run takes it
    (``take``): the other processes share the folder with it by design.
    """
    if not take:
        yield
        return

    workdir.mkdir(parents=True, exist_ok=True)
    f = open(workdir / ".lock", "a+")  # noqa: SIM115 (held open for the whole run)
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise TrainError(
                f"{workdir} is in use by another training run ({holder}); wait for it to finish, or give this run "
                "its own folder with --config.workdir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield
    finally:
        f.close()  # releases the lock


def train(
    cfg,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    init_backbone=None,
    init_from=None,
) -> dict:
    """Run (or continue) the training described by ``cfg``; returns a summary dict.

    ``init_backbone(model, config, path) -> int`` reads ``model.imagenet_init`` and
    ``init_from(model, config, path, class_map) -> dict`` reads ``model.init_from``
    (convert.formats has both; tools/train.py passes them). A config that names such a file
    without its reader is refused.

    ``stop_after``: leave after this many steps of this invocation (with a checkpoint), e.g.
    to fit a time-limited job; ``--resume`` continues from there. One run per workdir at a time
    (:func:`workdir_lock`).
    """
    _validate(cfg)
    with workdir_lock(Path(cfg.workdir).absolute(), take=jax.process_index() == 0), _quiet_checkpoint_logs():
        return _train(cfg, resume=resume, stop_after=stop_after, progress=progress, readers=(init_backbone, init_from))


class _CheckpointNoise(logging.Filter):
    """Orbax's log records that the run reports itself, or that mean nothing here: a save that
    failed on a full disk (each background thread logs its traceback, hundreds of lines; the run
    ends with one line naming the file), and the warning that a save between evaluations carries
    no val mIoU (on purpose: only evaluated steps compete for "best")."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "did not provide metrics" in msg or "No space left on device" in msg:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or _write_failure(exc) is None


@contextlib.contextmanager
def _quiet_checkpoint_logs():
    noise, logger = _CheckpointNoise(), logging.getLogger("absl")  # where orbax logs (absl.logging)
    logger.addFilter(noise)
    try:
        yield
    finally:
        logger.removeFilter(noise)


def _train(cfg, *, resume: bool, stop_after: int | None, progress: bool, readers) -> dict:

    t_start = time.time()
    workdir = Path(cfg.workdir).absolute()
    _refuse_to_overwrite(workdir, resume)
    config = model_config(cfg)
    pi, pc = jax.process_index(), jax.process_count()
    if family(cfg.data.dataset, cfg.data.root) == "folder":  # the user's label space travels inside every checkpoint
        table = read_table(cfg.data.root, cfg.data.classes or None)
        if table.num_classes != cfg.model.num_classes:
            raise TrainError(
                f"{table.source} lists {table.num_classes} classes but model.num_classes={cfg.model.num_classes}; "
                f"pass --config.model.num_classes={table.num_classes}"
            )
        config = dataclasses.replace(config, classes=table.model_classes())

    start = cfg.model.init_from
    # A run that resumes restores its own state: the fine-tuning source is neither needed nor read.
    resuming = resume and ckpt.has_checkpoints(workdir)
    if start and not resuming and not Path(start).exists():
        raise TrainError(
            f"model.init_from={start!r}: no such checkpoint; pass --config.model.init_from=CKPT (a run directory, "
            ".safetensors or .pth to fine-tune from)"
        )
    # Data first: a bad dataset fails here, before anything is compiled.
    train_src = build_split(cfg, cfg.data.train_split)
    val_src = build_split(cfg, cfg.data.val_split)
    aug = augment_config(cfg)
    if aug.geometry == "device":  # whole sources are batched: they must share one size
        aug = dataclasses.replace(aug, source_size=tuple(np.asarray(train_src[0]["label"]).shape))
    check_source(train_src, cfg, f"train split {cfg.data.train_split!r}")
    check_source(val_src, cfg, f"val split {cfg.data.val_split!r}")

    mesh = data_mesh()
    schedule = schedule_of(cfg.train)
    init_backbone = init_from = None
    if cfg.model.imagenet_init:
        init_backbone = _reader(readers[0], "model.imagenet_init", "init_backbone")
    if cfg.model.init_from and not resuming:
        init_from = _reader(readers[1], "model.init_from", "init_from")
    graphdef, eval_graphdef, params, stats = init_state(cfg, config, init_backbone, init_from, fine_tune=not resuming)
    tx = optimizer_of(cfg.train, params)
    state = replicate({"params": params, "batch_stats": stats, "opt_state": tx.init(params)}, mesh)

    mngr = ckpt.manager(workdir / ckpt.CHECKPOINT_DIR, keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    latest = mngr.latest_step()
    if latest is not None and not resume:
        raise TrainError(
            f"{workdir} already holds checkpoints (latest step {latest}); pass --resume to continue that run, "
            "or set --config.workdir to a new folder"
        )
    local_bs = cfg.train.batch_size // pc
    it = iter(
        train_loader(
            train_src,
            aug,
            batch_size=local_bs,
            seed=cfg.seed,
            worker_count=cfg.data.workers,
            shard_index=pi,
            shard_count=pc,
            worker_buffer_size=cfg.data.worker_buffer_size,
        )
    )
    step = 0
    meta = {"model": ckpt.model_meta(config), "seed": cfg.seed, "global_batch": cfg.train.batch_size, "processes": pc}
    if resume and latest is not None:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        state, lstate, saved_meta = _restore_latest(mngr, latest, abstract, meta)
        restore_loader_state(it, lstate)
        step = int(saved_meta["step"])
        if pi == 0:
            print(f"resumed {workdir} at step {step}")
    elif resume and pi == 0:
        print(f"--resume: no checkpoint in {workdir}, starting from step 0")

    if pi == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    logger = Logger(workdir, step)
    on_device = aug.photometric == "device" and (aug.blur_prob > 0 or aug.color_jitter > 0 or aug.hue_jitter > 0)
    reach = max_box_radius(aug) if on_device else None
    orders = possible_orders(aug, aug.source_size) if aug.geometry == "device" else None
    train_step = make_train_step(graphdef, tx, cfg, mesh, photometric_reach=reach, geometry_orders=orders)
    extra_fields = [k for k, on in (("geometry", orders is not None), ("photometric", reach is not None)) if on]
    eval_step = make_eval_step(
        eval_graphdef,
        mesh,
        num_classes=cfg.model.num_classes,
        ignore_index=cfg.data.ignore_index,
        scales=tuple(cfg.eval.scales),
        flip=cfg.eval.flip,
        dtype=DTYPES[cfg.train.dtype],
        input_size=cfg.data.eval_size,
    )
    data_sharding = NamedSharding(mesh, P("data"))
    names = class_names_of(cfg)

    def save(at_step: int, metrics=None) -> None:
        ckpt.save(mngr, at_step, state, loader_state(it), {**meta, "step": at_step}, metrics)

    last_eval: dict | None = None

    def do_eval(at_step: int) -> dict:
        sc = run_eval(cfg, mesh, eval_step, state["params"], state["batch_stats"], val_src, desc=f"val @ {at_step}")
        logger.write(
            at_step,
            {"val/miou": sc["miou"], "val/pixel_acc": sc["pixel_acc"]}
            | {f"val/iou/{n}": float(v) for n, v in zip(names, sc["iou"]) if not math.isnan(v)},
        )
        if pi == 0:
            tqdm.write(f"step {at_step}: val mIoU {100 * sc['miou']:.2f}  pixel acc {100 * sc['pixel_acc']:.2f}")
        return sc

    end = cfg.train.steps if stop_after is None else min(cfg.train.steps, step + stop_after)
    bar = tqdm(total=cfg.train.steps, initial=step, desc="train", unit="step", disable=not progress or pi != 0)
    pending = None  # metrics of the previous step: read one step late so the host never stalls the device
    window_t, window_steps = time.time(), 0
    # Ctrl-C / SIGTERM and timed saves: requested on any process, agreed by all one step later
    # (docs/architecture.md, "Stopping and resuming").
    agree, flags, stopped = make_stop_agreement(mesh), None, None
    save_every_s, last_save_t = 60.0 * cfg.checkpoint.every_minutes, time.monotonic()
    stop = StopRequest()
    try:
        with contextlib.ExitStack() as cleanup:  # each runs, in this order, whatever the others raise
            cleanup.callback(stop.__exit__)
            cleanup.callback(logger.close)
            cleanup.callback(mngr.close)
            # a signal now is reported, not obeyed, until the save is complete
            cleanup.callback(mngr.wait_until_finished)
            cleanup.callback(bar.close)
            stop.__enter__()
            while step < end:
                batch = next(it)
                images = jax.make_array_from_process_local_data(data_sharding, np.asarray(batch["image"]))
                labels = jax.make_array_from_process_local_data(data_sharding, np.asarray(batch["label"]))
                if not extra_fields:
                    state, m = train_step(state, images, labels)
                else:  # steps left to the device (jax_csfcn/data/geometry.py, photometric.py)
                    extras = jax.tree.map(
                        lambda a: jax.make_array_from_process_local_data(data_sharding, np.asarray(a)),
                        {k: batch[k] for k in extra_fields},
                    )
                    state, m = train_step(state, images, labels, extras)
                step += 1
                window_steps += 1
                if pending is not None:
                    _check(pending, mngr)
                pending = (step, m)
                timed = pi == 0 and save_every_s > 0 and time.monotonic() - last_save_t >= save_every_s
                stop_now, due = read_flags(flags) if flags is not None else (False, False)
                flags = agree(stop.signame is not None, timed)
                if stop_now:
                    end, stopped = step, stop.signame or "a signal to another process"
                is_save = step % cfg.checkpoint.every == 0 or step == end or due
                is_eval = (cfg.eval.every and step % cfg.eval.every == 0) or step == cfg.train.steps
                is_log = step % cfg.train.log_every == 0 or is_save or is_eval
                if is_log or is_save or is_eval:
                    _check(pending, mngr)  # never save or log a state after a non-finite step
                    pending = None
                    mh = jax.device_get(m)
                    dt = time.time() - window_t
                    ips = window_steps * cfg.train.batch_size / max(dt, 1e-9)
                    window_t, window_steps = time.time(), 0
                    scal = {
                        "loss": float(mh["loss"]),
                        "lr": float(schedule(step - 1)),
                        "grad_norm": float(mh["grad_norm"]),
                        "ohem_kept": float(mh["ohem_kept"]),
                        "images_per_s": ips,
                    }
                    logger.write(step, scal)
                    bar.set_postfix(loss=f"{scal['loss']:.4f}", img_s=f"{ips:.1f}", lr=f"{scal['lr']:.2e}")
                metrics = None
                if is_eval:
                    last_eval = do_eval(step)
                    metrics = {"miou": float(np.nan_to_num(last_eval["miou"], nan=0.0))}
                if is_save or is_eval:
                    save(step, metrics)
                    last_save_t = time.monotonic()
                bar.update(1)
            if pending is not None:
                _check(pending, mngr)
    except Exception as e:  # a full disk at a save: one line, and no partial step left behind
        full = _write_failure(e)
        if full is None:
            raise
        if pi == 0:
            ckpt.remove_partial(workdir / ckpt.CHECKPOINT_DIR)
        partial = re.search(r"/(\d+)\.orbax-checkpoint-tmp", str(full.filename or ""))
        if partial:  # name the step it was saving, not its temporary folder (removed now)
            full = OSError(full.errno, full.strerror, str(workdir / ckpt.CHECKPOINT_DIR / partial.group(1)))
        if full is e:
            raise
        raise full from e
    if stopped and step < cfg.train.steps:
        raise Preempted(stopped, step, "run the same command with --resume")
    summary = {"step": step, "workdir": str(workdir), "seconds": time.time() - t_start}
    if last_eval is not None:
        summary["val"] = scores_json(last_eval, names)
        if pi == 0:
            print(format_scores(last_eval, names))
            (workdir / "eval.json").write_text(json.dumps(summary["val"], indent=2))
    if pi == 0 and (workdir / "metrics.jsonl").exists():
        plot_curves(workdir / "metrics.jsonl", workdir / "curves.png")
    return summary


READERS = {"init_backbone": "init_backbone", "init_from": "init_from_checkpoint"}


def _reader(fn, key: str, arg: str):
    if fn is None:
        raise TrainError(
            f"{key} names a file but this train() call was given no reader for it: run python -m "
            f"jax_csfcn.train (or tools.train.train), or pass {arg}=convert.formats.{READERS[arg]}"
        )
    return fn


def _restore_latest(mngr, latest: int, abstract, meta: dict):
    """(state, loader state, meta) of the run's last checkpoint, after checking that it belongs to
    this config (model, global batch). A damaged one is a DamagedCheckpoint that names the last
    earlier step restoring intact (every later one is then damaged too)."""
    ckpts = Path(mngr.directory)
    try:
        saved = ckpt.read_meta(ckpts / str(latest))
        if saved.get("model") != meta["model"]:
            raise TrainError(
                f"{ckpts.parent}: the checkpoint was trained as model {saved.get('model')}, the config asks for "
                f"{meta['model']}; resume with the run's own config or start a new workdir"
            )
        gb = saved.get("global_batch")
        if gb is not None and gb != meta["global_batch"]:
            raise TrainError(
                f"train.batch_size={meta['global_batch']}, but the checkpoint at step {latest} of {ckpts.parent} "
                f"was trained with train.batch_size={gb} (the data loader's position depends on it); resume with "
                f"--config.train.batch_size={gb}, or start a new run in another --config.workdir"
            )
        return ckpt.restore(mngr, latest, abstract)
    except ckpt.DamagedCheckpoint as e:
        e.probed = True
        for s in sorted((s for s in mngr.all_steps() if s < latest), reverse=True):
            try:
                ckpt.restore(mngr, s, abstract)
            except ckpt.CheckpointError:
                continue
            e.earlier = s
            break
        e.damaged = [ckpts / str(s) for s in sorted(mngr.all_steps()) if e.earlier is None or s > e.earlier]
        raise


def _write_failure(e: BaseException) -> OSError | None:
    """The OSError of a full disk (or a forbidden folder) behind ``e``, however deep the
    checkpoint writer wrapped it (the CLI prints it as one line); None for any other failure."""
    errors = [e, *_causes(e)]
    hit = next((x for x in errors if isinstance(x, OSError) and write_failure(x)), None)
    if hit is None and any("No space left on device" in str(x) for x in errors):  # a C++ writer's error text
        hit = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return hit


def _causes(e: BaseException):
    seen = {id(e)}
    todo = [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        todo += [x.__cause__, x.__context__, *getattr(x, "exceptions", ())]


def _check(pending, mngr) -> None:
    step, m = pending
    if not bool(jax.device_get(m["finite"])):
        mngr.wait_until_finished()
        last = mngr.latest_step()
        raise FloatingPointError(
            f"non-finite loss or gradient at step {step} (loss = {float(jax.device_get(m['loss']))}); the run stops "
            f"here without saving. Last good checkpoint: "
            f"{'step ' + str(last) if last is not None else 'none'}. Lower train.base_lr, check the data, or "
            "resume with --resume after fixing the cause."
        )
