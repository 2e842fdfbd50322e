"""grain input pipeline: augmented, sharded, resumable train batches and padded eval batches.

    from jax_csfcn.data.cityscapes import CityscapesSource
    from jax_csfcn.data.pipeline import AugmentConfig, train_loader, eval_loader, loader_state, restore_loader_state

    it = iter(train_loader(CityscapesSource(root, "train"), AugmentConfig(), batch_size=12, seed=0,
                           worker_count=4, shard_index=jax.process_index(), shard_count=jax.process_count()))
    batch = next(it)                  # {"image": uint8 (12,1024,1024,3), "label": uint8 (12,1024,1024)}
    state = loader_state(it)          # small JSON-able dict: save it with the checkpoint (ocp.args.JsonSave)
    restore_loader_state(it, state)   # the iterator continues with exactly the batches that followed

A *source* is any random-access object: ``len(src)`` and ``src[i] -> {"image": uint8 HxWx3,
"label": uint8 HxW train ids (255 = ignore), "name": str}`` (``CityscapesSource``, the CamVid and
TFDS sources).

Train pipeline, per record (``AugmentConfig``; defaults = the upstream Cityscapes recipe):

1. decode (the source);
2. random scale: a factor ``f ~ U(scale_range)``; with ``base_size=None`` the image is resized by
   ``f`` (so its short side becomes ``f`` x its own short side), otherwise its short side becomes
   ``f * min(base_size)``, aspect ratio kept.  Bilinear (PIL, antialiased when shrinking) for the
   image, nearest for the label, so labels keep only the source's train ids and 255;
3. pad to ``crop_size`` at the bottom/right: label ``ignore_index``, image 0;
4. random crop of ``crop_size``; 5. horizontal flip with probability 1/2;
6. Gaussian blur (probability ``blur_prob``, radius ~ ``U(blur_sigma)``) and colour jitter
   (brightness, contrast, saturation factors ~ ``U(1 - c, 1 + c)`` and an optional hue shift, in a
   random order), on the image content only: padding pixels stay 0 (the label there is ignore
   anyway). The defaults are the upstream's Cityscapes pipeline: blur with p = 0.5 and radius
   U(0, 1), then jitter 0.5; its CamVid pipeline adds hue 0.1 with jitter 0.3 (configs/camvid.py).
   They are drawn here in any case; with ``AugmentConfig.photometric = "device"`` they are not
   applied here: each record carries their parameters (``"photometric"``, with the ``content``
   box) and the train step applies them on the device, the same function bit for bit
   (jax_csfcn/data/photometric.py). That takes the most expensive
   host steps off the loader;
7. batch (``batch_size`` records per process, ``drop_remainder``).

Steps 2-4 are fused: only the source region that lands in the crop is resampled (PIL ``resize``
with a ``box``), which gives the same pixels as resizing the whole image and cropping it (up to
one grey level of rounding for the image, identical labels) at a fraction of the cost: a 2x scale
of a 1024x2048 image never materialises the 2048x4096 intermediate.
With ``AugmentConfig.geometry = "device"`` steps 2-5 leave the host too: each record carries its
whole source and small resampling tables (``"geometry"``) from which the train step computes the
same bytes (jax_csfcn/data/geometry.py); the sources must then share one size.

Images stay **uint8** in the batches; normalisation (``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD``)
belongs inside the jitted train step on the device, which moves 4x fewer bytes host -> device than
float32.  :func:`normalize` is that formula, written so that it works on numpy and on jax arrays
alike, with the constants used everywhere in this project.

Determinism and sharding.  Epoch ``e`` is a permutation of the whole source (grain's index
shuffle, seeded by ``seed`` and ``e``); process ``shard_index`` of ``shard_count`` takes the
positions ``shard_index, shard_index + shard_count, ...`` of it, and every process drops the same
``len(source) % shard_count`` positions at the end of each epoch so that all processes see the
same number of records and batches.  Augmentation randomness comes from grain's per-record RNG
(``MapDataset.random_map``) keyed by ``(seed, global position e * len(source) + p)``: a pure
function of the seed, the record and the epoch -- the same whatever the number of processes or
workers.  Batches are consecutive records of the per-process stream; with ``num_epochs=None``
(default) the stream is infinite and a batch may straddle two epochs; with ``num_epochs=E`` it
holds ``E * (len(source) // shard_count) // batch_size`` batches.

Loader state.  A loader is a ``MapDataset`` of batches, so the position is one integer: the
number of batches already returned.  ``iterator.get_state()`` / :func:`loader_state` return
``{"format", "kind", "next_batch", "source", "source_len", ...config}``, plain JSON;
``set_state`` / :func:`restore_loader_state` check that the source and the pipeline settings match
(a clear ``ValueError`` naming the differing fields otherwise) and restart the pipeline at that
batch.  The state does not depend on ``worker_count``: a run may resume with more or fewer
workers and still see the same batches.

Workers (``worker_count > 0``): grain ``mp_prefetch`` processes, started with the ``spawn``
method on the first ``next()``.  The main script must therefore guard its entry point with
``if __name__ == "__main__":``; the source and the transforms are pickled into the workers
(module-level classes here; a source must pickle too: keep file paths, not open files).
Nothing in this module imports JAX, so workers stay light.  An exception in a worker
(e.g. ``DataError`` naming a corrupt PNG) is re-raised by ``next()`` in the main process with
its message.  Call ``iterator.close()`` (or use ``with``) to stop the workers early.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Sequence

import grain
import numpy as np

from csfcn.model_config import IMAGENET_MEAN, IMAGENET_STD  # RGB, in 0..1 units

# One record's augmentation lives in augment.py (no grain there: the GPU check uses it alone).
from jax_csfcn.data.augment import (  # noqa: F401  (_jitter: re-exported for its test)
    GEOMETRY,
    PHOTOMETRIC,
    AugmentConfig,
    PipelineError,
    _check_record,
    _jitter,
    augment,
    augment_record,
    scaled_size,
)

STATE_FORMAT = "csfcn-loader-v1"


def normalize(images, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, dtype=np.float32):
    """uint8 RGB ``(..., 3)`` -> ``(images / 255 - mean) / std`` in ``dtype``.

    Only ``astype`` and arithmetic with numpy constants: works on numpy arrays and, unchanged,
    on jax arrays inside a jitted step (the result is then a jax array).
    """
    mean255 = np.asarray(mean, np.float32) * 255.0
    inv_std255 = 1.0 / (np.asarray(std, np.float32) * 255.0)
    return ((images.astype(dtype) - mean255.astype(dtype)) * inv_std255.astype(dtype)).astype(dtype)


def denormalize(images, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Inverse of :func:`normalize`, back to uint8 (for visualisation)."""
    x = np.asarray(images, np.float32) * (np.asarray(std, np.float32) * 255.0) + np.asarray(mean, np.float32) * 255.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class TrainAugment(grain.transforms.RandomMap):
    """grain RandomMap: source item -> {"image", "label"} augmented crop (module-level: picklable)."""

    def __init__(self, aug: AugmentConfig):
        self.aug = aug

    def random_map(self, element, rng: np.random.Generator):
        image, label, name = _check_record(element, "train record")
        return augment_record(image, label, self.aug, rng, name)


# ----------------------------------------------------------------------------------------------
# Eval


class EvalBatch(grain.transforms.Map):
    """grain Map: batch number -> padded eval batch of this shard (module-level: picklable).

    Slot ``j`` of shard ``k`` is source record ``j * shard_count + k``; slots past the end of the
    source are dummies (``valid`` False, label all ignore, name "", size (0, 0), index -1).
    """

    def __init__(self, source, batch_size: int, shard_index: int, shard_count: int, pad_to, ignore_index: int):
        self.source, self.batch_size = source, int(batch_size)
        self.shard_index, self.shard_count = int(shard_index), int(shard_count)
        self.pad_to = None if pad_to is None else (int(pad_to[0]), int(pad_to[1]))
        self.ignore_index = int(ignore_index)
        self._fallback_hw = None

    def _dummy_hw(self) -> tuple[int, int]:
        """Size of an all-dummy batch without ``pad_to``: that of record 0, read once."""
        if self._fallback_hw is None:
            self._fallback_hw = _check_record(self.source[0], "eval record 0")[1].shape
        return self._fallback_hw

    def map(self, batch_index):
        n = len(self.source)
        slots = range(int(batch_index) * self.batch_size, (int(batch_index) + 1) * self.batch_size)
        indices = [j * self.shard_count + self.shard_index for j in slots]
        records = [_check_record(self.source[g], f"eval record {g}") if g < n else None for g in indices]
        real = [r for r in records if r is not None]
        if self.pad_to is not None:
            hh, ww = self.pad_to
            for image, _, name in real:
                if image.shape[0] > hh or image.shape[1] > ww:
                    raise PipelineError(
                        f"eval record {name!r} is {image.shape[0]}x{image.shape[1]} (HxW), larger than "
                        f"pad_to={self.pad_to}; raise pad_to or pass pad_to=None"
                    )
        elif real:
            hh = max(r[0].shape[0] for r in real)
            ww = max(r[0].shape[1] for r in real)
        else:
            hh, ww = self._dummy_hw()
        b = self.batch_size
        images = np.zeros((b, hh, ww, 3), np.uint8)
        labels = np.full((b, hh, ww), self.ignore_index, np.uint8)
        sizes = np.zeros((b, 2), np.int32)
        valid = np.zeros((b,), bool)
        names = [""] * b
        for i, r in enumerate(records):
            if r is None:
                continue
            image, label, name = r
            h, w = label.shape
            images[i, :h, :w], labels[i, :h, :w] = image, label
            sizes[i], valid[i], names[i] = (h, w), True, name
        index = np.array([g if g < n else -1 for g in indices], np.int64)
        return {
            "image": images,
            "label": labels,
            "name": np.array(names, dtype=str),
            "valid": valid,
            "size": sizes,
            "index": index,
        }


# ----------------------------------------------------------------------------------------------
# Loaders and their state


def _source_identity(source) -> dict:
    try:
        n = len(source)
    except TypeError as e:
        raise TypeError(f"a data source needs len() and [i]; {type(source).__name__} has no len()") from e
    if type(source).__repr__ is object.__repr__:  # the default repr holds a memory address: not stable
        name = f"{type(source).__module__}.{type(source).__qualname__}"
    else:
        name = repr(source)
    return {"source": name, "source_len": int(n)}


class Loader:
    """An iterable of batches (a grain ``MapDataset`` of batches underneath, ``.batches``).

    ``iter(loader)`` gives a :class:`LoaderIterator`, which has ``get_state``/``set_state``.
    ``len(loader)`` is the number of batches per process (``TypeError`` when infinite).
    """

    def __init__(self, batches: grain.MapDataset, *, identity: dict, worker_count: int, worker_buffer_size: int,
                 read_threads: int, infinite: bool):  # fmt: skip
        self.batches = batches
        self.identity = json.loads(json.dumps(identity))  # exactly what a saved and reloaded state holds
        self.worker_count = int(worker_count)
        self.worker_buffer_size = int(worker_buffer_size)
        self.read_threads = int(read_threads)
        self.infinite = bool(infinite)
        if self.worker_count < 0 or self.worker_buffer_size < 1 or self.read_threads < 0:
            raise ValueError(
                f"need worker_count >= 0, worker_buffer_size >= 1, read_threads >= 0; got {self.worker_count}, "
                f"{self.worker_buffer_size}, {self.read_threads}"
            )

    def __len__(self) -> int:
        if self.infinite:
            raise TypeError("this loader is infinite (num_epochs=None); it has no len()")
        return len(self.batches)

    @property
    def num_batches(self) -> int | None:
        return None if self.infinite else len(self.batches)

    def __iter__(self) -> LoaderIterator:
        return LoaderIterator(self)

    def __repr__(self) -> str:
        return f"Loader({self.identity}, worker_count={self.worker_count})"


def _ensure_absl_flags_parsed() -> None:
    """grain's multiprocess prefetch reads absl flags (``--grain_*``) in the main process; a script
    that does not use ``absl.app.run`` has never parsed them, so take their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def worker_init(worker_index: int = 0, worker_count: int = 1) -> None:
    """Run in each grain worker at start: the worker leaves Ctrl-C and SIGTERM to its parent, and
    a daemon thread ends it when the parent dies.

    A Ctrl-C in a terminal reaches the whole process group and a scheduler's SIGTERM every process
    of the job; the training process answers by finishing its step, which reads one more batch
    (csfcn/interrupt.py), so its workers must not die first. A training process killed by
    SIGKILL runs no cleanup, and its workers (a few hundred MB each) would live on, re-parented
    to init: the thread polls the parent's pid once a second and exits the worker once it has
    changed."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class LoaderIterator:
    """Iterator over a :class:`Loader`'s batches, checkpointable with ``get_state``/``set_state``.

    The grain iterator (and its worker processes) starts lazily on the first ``next()``, so a
    ``set_state`` right after ``iter()`` costs nothing.
    """

    def __init__(self, loader: Loader):
        self._loader = loader
        self._next_batch = 0
        self._it = None

    def __iter__(self):
        return self

    def _start(self):
        lo = self._loader
        ds = lo.batches[self._next_batch :] if self._next_batch else lo.batches
        # Prefetch threads of one process (the main one, or each worker): at most
        # worker_buffer_size finished batches wait in each buffer.
        read = grain.ReadOptions(num_threads=lo.read_threads, prefetch_buffer_size=lo.worker_buffer_size)
        it_ds = ds.to_iter_dataset(read)
        if lo.worker_count > 0:
            _ensure_absl_flags_parsed()
            it_ds = it_ds.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=lo.worker_count, per_worker_buffer_size=lo.worker_buffer_size),
                worker_init_fn=worker_init,
            )
        self._it = iter(it_ds)

    def __next__(self) -> dict:
        if self._it is None:
            self._start()
        batch = next(self._it)
        self._next_batch += 1
        return batch

    def get_state(self) -> dict:
        """JSON-serialisable position: the source and pipeline identity plus ``next_batch``."""
        return {"format": STATE_FORMAT, **self._loader.identity, "next_batch": self._next_batch}

    def set_state(self, state: dict) -> None:
        """Continue at ``state``; ``ValueError`` if it was saved for another source or pipeline."""
        if isinstance(state, (bytes, str)):
            state = json.loads(state)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not a loader state of this pipeline (format {got!r}, expected {STATE_FORMAT!r})")
        saved = json.loads(json.dumps(state))
        diffs = [
            f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in self._loader.identity.items() if saved.get(k) != v
        ]
        if diffs:
            raise ValueError(
                "the loader state does not match this loader (a different source, split or pipeline "
                "setting); refusing to resume with other data. Differences: " + "; ".join(diffs)
            )
        nb = saved.get("next_batch")
        if not isinstance(nb, int) or nb < 0:
            raise ValueError(f"loader state has an invalid next_batch {nb!r}")
        self.close()
        self._next_batch = nb

    def close(self) -> None:
        """Stop prefetch threads and worker processes (a later ``next()`` restarts them)."""
        if self._it is not None:
            close = getattr(self._it, "close", None)
            self._it = None
            if close is not None:
                close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to report to
            self.close()


def loader_state(iterator: LoaderIterator) -> dict:
    """The iterator's position as a JSON-serialisable dict (save it with ``ocp.args.JsonSave``)."""
    return iterator.get_state()


def restore_loader_state(iterator: LoaderIterator, state: dict) -> None:
    """Make ``iterator`` continue where ``state`` was taken; ``ValueError`` if it is for other data."""
    iterator.set_state(state)


def _check_shard(shard_index: int, shard_count: int, batch_size: int) -> None:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int(shard_count) < 1 or not 0 <= int(shard_index) < int(shard_count):
        raise ValueError(
            f"need 0 <= shard_index < shard_count, got shard_index={shard_index}, shard_count={shard_count}"
        )


def train_loader(source, aug: AugmentConfig, *, batch_size: int, seed: int, worker_count: int = 0,
                 shard_index: int = 0, shard_count: int = 1, num_epochs: int | None = None,
                 worker_buffer_size: int = 2, read_threads: int = 1) -> Loader:  # fmt: skip
    """Augmented train batches {"image": uint8 (B,H,W,3), "label": uint8 (B,H,W)}, H,W = crop_size.

    ``batch_size`` records per process; global shuffle with ``seed`` (reshuffled every epoch);
    ``shard_index``/``shard_count`` split each epoch into equal disjoint parts; ``num_epochs=None``
    repeats forever.  ``worker_count`` grain worker processes (0 = in this process, with
    ``read_threads`` background threads); each holds at most ``worker_buffer_size`` finished batches.
    """
    if not isinstance(aug, AugmentConfig):
        raise TypeError(f"aug must be an AugmentConfig, got {type(aug).__name__}")
    _check_shard(shard_index, shard_count, batch_size)
    if num_epochs is not None and int(num_epochs) < 1:
        raise ValueError(f"num_epochs must be >= 1 or None (forever), got {num_epochs}")
    n = len(source)
    per_shard = n // int(shard_count)
    if per_shard < 1:
        raise ValueError(f"{_source_identity(source)['source']} has {n} records, fewer than shard_count={shard_count}")
    if num_epochs is not None and int(num_epochs) * per_shard < int(batch_size):
        raise ValueError(f"{num_epochs} epoch(s) of {per_shard} records per process make no full batch of {batch_size}")
    aug_seed = int(np.random.SeedSequence([int(seed) % 2**32, 0x0A06]).generate_state(1)[0])
    ds = grain.MapDataset.source(source)
    ds = ds.shuffle(seed=int(seed) % 2**32)  # index e*n + p -> epoch e's p-th record
    ds = ds.random_map(TrainAugment(aug), seed=aug_seed)  # RNG keyed by (aug_seed, e*n + p)
    # This process's positions of one epoch; indices past the end continue into the next epochs
    # (SliceMapDataset maps index i to parent position start + (i % len) * step + (i // len) * n).
    ds = ds[int(shard_index) : per_shard * int(shard_count) : int(shard_count)]
    ds = ds.repeat(None if num_epochs is None else int(num_epochs))
    batches = ds.batch(int(batch_size), drop_remainder=True)
    identity = {
        "kind": "train",
        **_source_identity(source),
        "seed": int(seed),
        "batch_size": int(batch_size),
        "shard_index": int(shard_index),
        "shard_count": int(shard_count),
        "num_epochs": None if num_epochs is None else int(num_epochs),
        # where the photometric and geometric steps run changes no draw and not the function (module doc)
        "augment": aug.identity(),
    }
    return Loader(batches, identity=identity, worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                  read_threads=read_threads, infinite=num_epochs is None)  # fmt: skip


def eval_loader(source, *, batch_size: int, shard_index: int = 0, shard_count: int = 1, worker_count: int = 0,
                pad_to: tuple[int, int] | None = None, ignore_index: int = 255, worker_buffer_size: int = 2,
                read_threads: int = 1) -> Loader:  # fmt: skip
    """Eval batches in source order, every record once across shards, static batch size.

    {"image": uint8 (B,H,W,3), "label": uint8 (B,H,W), "name": str (B,), "valid": bool (B,),
    "size": int32 (B,2) original (H,W), "index": int64 (B,) source index or -1}.  Shard ``k`` holds
    records ``k, k + shard_count, ...``; every shard gets ``ceil(ceil(n / shard_count) / B)``
    batches, the missing slots filled with dummies (``valid`` False, label all ``ignore_index``).
    Images are padded (bottom/right; image 0, label ignore) to ``pad_to`` or, with ``pad_to=None``,
    to the largest image of the batch -- pass ``pad_to`` for one static shape when sizes vary.
    """
    _check_shard(shard_index, shard_count, batch_size)
    n = len(source)
    if n < 1:
        raise ValueError(f"{_source_identity(source)['source']} is empty")
    per_shard = -(-n // int(shard_count))
    num_batches = -(-per_shard // int(batch_size))
    fn = EvalBatch(source, batch_size, shard_index, shard_count, pad_to, ignore_index)
    batches = grain.MapDataset.range(num_batches).map(fn)
    identity = {
        "kind": "eval",
        **_source_identity(source),
        "batch_size": int(batch_size),
        "shard_index": int(shard_index),
        "shard_count": int(shard_count),
        "pad_to": None if pad_to is None else [int(pad_to[0]), int(pad_to[1])],
        "ignore_index": int(ignore_index),
    }
    return Loader(batches, identity=identity, worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                  read_threads=read_threads, infinite=False)  # fmt: skip


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentConfig",
    "GEOMETRY",
    "PHOTOMETRIC",
    "EvalBatch",
    "Loader",
    "LoaderIterator",
    "PipelineError",
    "TrainAugment",
    "augment",
    "augment_record",
    "denormalize",
    "eval_loader",
    "loader_state",
    "normalize",
    "restore_loader_state",
    "scaled_size",
    "train_loader",
]
