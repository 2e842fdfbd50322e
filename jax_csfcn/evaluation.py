"""Evaluation as a library: the eval step, the split's loader, the scores and their table.

``python -m tools.evaluate`` (the tool: any checkpoint, predictions written out, pictures)
and ``jax_csfcn.training`` (validation during training) both build on this module; neither
imports the other.

The scores come from one confusion matrix accumulated on the device over the whole split (not
an average of per-batch mIoU), with the ignore label honoured.  Multi-scale: each scale resizes
the image (bilinear, sides rounded to multiples of 32), the logits are resized back to the label
size and the softmax probabilities of all scales (and of the flipped image when ``eval.flip``)
are averaged before the argmax.  Reduced-size evaluation (``data.eval_size``): the image is
first resized (bilinear) to ``eval_size``, scales are relative to that size, and the logits are
resized back to the label's full resolution.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from jax_csfcn.data.concat import ConcatSource
from jax_csfcn.data.pipeline import eval_loader
from jax_csfcn.data.sources import build_source, class_names
from jax_csfcn.data.synthetic import write_synthetic_cityscapes
from jax_csfcn.metrics import confusion_matrix, scores
from jax_csfcn.ops import normalize_on_device
from jax_csfcn.step import TrainError

__all__ = [
    "build_split",
    "check_source",
    "class_names_of",
    "data_mesh",
    "evaluate",
    "format_scores",
    "logits_fn",
    "make_eval_step",
    "run_eval",
    "scores_json",
]


def _resize(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    if tuple(x.shape[1:3]) == tuple(hw):
        return x
    # No antialiasing: what torch's F.interpolate(mode="bilinear") does.
    return jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), "linear", antialias=False)


def logits_fn(
    model, images: jax.Array, *, scales=(1.0,), flip: bool = False, dtype=jnp.float32, input_size=None
) -> jax.Array:
    """Class scores (N, H, W, K) at the label size for uint8 ``images`` (N, H, W, 3).

    Single scale without flip: the logits (resized to H x W if the network's output differs).
    Otherwise: the mean of the softmax probabilities over scales and flips.
    ``input_size`` (H', W'): the network sees the image resized to it (scales are relative to
    it); the result is still at H x W.
    """
    h, w = images.shape[1:3]
    x = normalize_on_device(images, dtype)
    if input_size is not None:  # data.eval_size
        x = _resize(x, tuple(int(v) for v in input_size))
    if tuple(scales) == (1.0,) and not flip:
        return _resize(model(x).astype(jnp.float32), (h, w))
    total = 0.0
    bh, bw = x.shape[1:3]
    for s in scales:
        size = (max(32, int(round(bh * s / 32)) * 32), max(32, int(round(bw * s / 32)) * 32))
        xs = _resize(x, size)
        views = [(xs, False)] + ([(xs[:, :, ::-1], True)] if flip else [])
        for v, flipped in views:
            out = model(v).astype(jnp.float32)
            if flipped:
                out = out[:, :, ::-1]
            total = total + jax.nn.softmax(_resize(out, (h, w)), axis=-1)
    return total / (len(scales) * (2 if flip else 1))


def _eval_step(
    graphdef, params, batch_stats, images, labels, *, num_classes, ignore_index, scales, flip, dtype, input_size=None
):
    model = nnx.merge(graphdef, params, batch_stats)
    logits = logits_fn(model, images, scales=scales, flip=flip, dtype=dtype, input_size=input_size)
    pred = jnp.argmax(logits, axis=-1)
    return confusion_matrix(pred, labels, num_classes, ignore_index), pred.astype(jnp.uint8)


def make_eval_step(
    graphdef, mesh, *, num_classes, ignore_index=255, scales=(1.0,), flip=False, dtype=jnp.float32, input_size=None
):
    """Jitted ``(params, batch_stats, images, labels) -> (confusion (K,K), predictions)`` over ``mesh``.

    The batch is sharded on the mesh's ``data`` axis; the confusion matrix comes back summed
    over the global batch (replicated), the predictions sharded like the batch.
    ``input_size``: ``data.eval_size`` (see :func:`logits_fn`); None = the images' own size.
    """
    fn = functools.partial(
        _eval_step,
        graphdef,
        num_classes=num_classes,
        ignore_index=ignore_index,
        scales=tuple(scales),
        flip=flip,
        dtype=dtype,
        input_size=None if input_size is None else tuple(int(v) for v in input_size),
    )
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(fn, in_shardings=(repl, repl, data, data), out_shardings=(repl, data))


def evaluate(
    eval_step,
    params,
    batch_stats,
    batches,
    *,
    num_classes: int,
    mesh,
    num_batches: int | None = None,
    on_predictions=None,
    progress: bool = True,
    desc: str = "eval",
) -> dict:
    """Scores over every batch of ``batches`` (process-local eval batches, see data.pipeline).

    ``on_predictions(batch, pred)``: optional host callback with this process's predictions
    (uint8 N x H x W, cropped per record by the caller using ``batch["size"]``).
    """

    data = NamedSharding(mesh, P("data"))
    conf = jnp.zeros((num_classes, num_classes), jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)
    host_conf = np.zeros((num_classes, num_classes), np.int64)
    t0, n_images = time.time(), 0
    bar = tqdm(
        total=num_batches, desc=desc, unit="batch", disable=not progress or jax.process_index() != 0, leave=False
    )
    for i, batch in enumerate(batches):
        images = jax.make_array_from_process_local_data(data, np.asarray(batch["image"]))
        labels = jax.make_array_from_process_local_data(data, np.asarray(batch["label"]))
        c, pred = eval_step(params, batch_stats, images, labels)
        conf = conf + c
        if (i + 1) % 200 == 0:  # int32 cells: move to host int64 well before they could overflow
            host_conf += np.asarray(jax.device_get(conf), np.int64)
            conf = jnp.zeros_like(conf)
        n_images += int(np.sum(batch.get("valid", np.ones(len(batch["image"]), bool))))
        if on_predictions is not None:
            local = np.concatenate([np.asarray(s.data) for s in pred.addressable_shards], axis=0)
            on_predictions(batch, local)
        bar.update(1)
    bar.close()
    host_conf += np.asarray(jax.device_get(conf), np.int64)
    out = scores(host_conf)
    out["confusion"] = host_conf
    out["images"] = n_images * jax.process_count()
    out["seconds"] = time.time() - t0
    return out


def format_scores(sc: dict, class_names) -> str:
    """A small text table: per-class IoU, then mIoU and pixel accuracy."""
    lines = [f"{'class':<16}{'IoU':>8}"]
    for name, v in zip(class_names, sc["iou"]):
        lines.append(f"{name:<16}{'   n/a' if math.isnan(v) else f'{100 * v:8.2f}'}")
    lines.append(f"{'mIoU':<16}{100 * sc['miou']:8.2f}")
    lines.append(f"{'pixel acc':<16}{100 * sc['pixel_acc']:8.2f}")
    return "\n".join(lines)


def scores_json(sc: dict, class_names) -> dict:
    """JSON-friendly scores (NaN -> null)."""

    def num(v):
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    return {
        "miou": num(sc["miou"]),
        "pixel_acc": num(sc["pixel_acc"]),
        "mean_class_acc": num(sc["mean_class_acc"]),
        "iou": {n: num(float(v)) for n, v in zip(class_names, sc["iou"])},
        "num_pixels": int(sc["num_pixels"]),
        "images": int(sc.get("images", 0)),
    }


# --------------------------------------------------------------------------- a split, a checkpoint
def build_split(cfg, split: str):
    """The data source of ``split`` ("a+b" concatenates), generating the synthetic set if asked."""

    dataset, root = cfg.data.dataset, cfg.data.root
    if dataset == "synthetic" and not Path(root).exists():
        if jax.process_index() == 0:
            s = cfg.data.synthetic
            write_synthetic_cityscapes(
                root, splits={"train": s.train, "val": s.val}, size=tuple(s.size), seed=s.seed, progress=True
            )
        _barrier("synthetic data")
    parts = [build_source(dataset, root, s, cfg.data.classes or None) for s in split.split("+")]
    return parts[0] if len(parts) == 1 else ConcatSource(parts)


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def check_source(src, cfg, what: str) -> None:
    """Read the first record now so that bad data fails before the first step, naming the file."""
    item = src[0]
    k = cfg.model.num_classes
    ids = np.unique(item["label"])
    bad = ids[(ids >= k) & (ids != cfg.data.ignore_index)]
    if bad.size:
        raise TrainError(
            f"{what}: record 0 ({item.get('name', '?')}) has label ids {bad.tolist()} >= model.num_classes={k}; "
            f"set --config.model.num_classes to the dataset's class count"
        )


# --------------------------------------------------------------------------- evaluation
def run_eval(cfg, mesh, eval_step, params, stats, src, *, on_predictions=None, desc="eval") -> dict:

    pc, pi = jax.process_count(), jax.process_index()
    # Rounded up to a multiple of the device count (every device gets whole images; the
    # padding slots are dummy records that count for nothing).
    dc = jax.device_count()
    global_bs = -(-max(1, cfg.eval.batch_size) // dc) * dc
    local_bs = global_bs // pc
    n = len(src) if not cfg.eval.max_images else min(len(src), cfg.eval.max_images)
    if n < len(src):
        src = _Head(src, n)
    # Every process gets the same number of batches (dummy records fill the last ones), so
    # the collective eval steps stay in lockstep across hosts; and every batch has one shape
    # (the split's largest image), so hosts agree and a dataset of mixed sizes compiles once.
    loader = eval_loader(
        src,
        batch_size=local_bs,
        shard_index=pi,
        shard_count=pc,
        worker_count=cfg.data.workers,
        pad_to=common_size(src),
    )
    return evaluate(
        eval_step,
        params,
        stats,
        loader,
        num_classes=cfg.model.num_classes,
        mesh=mesh,
        num_batches=len(loader),
        on_predictions=on_predictions,
        desc=desc,
    )


def common_size(src) -> tuple[int, int] | None:
    """The padded (H, W) every eval batch of ``src`` shares: the largest image of the split
    (sources that can tell it from file headers), else None (each batch its own largest)."""
    if isinstance(src, _Head):
        return common_size(src.src)
    if isinstance(src, ConcatSource):
        sizes = [common_size(s) for s in src.sources]
        return None if None in sizes else (max(h for h, _ in sizes), max(w for _, w in sizes))
    return src.max_size() if hasattr(src, "max_size") else None


class _Head:
    """The first ``n`` records of a source (``eval.max_images``)."""

    def __init__(self, src, n: int):
        self.src, self.n = src, n

    def __len__(self):
        return self.n

    def __repr__(self):
        return f"Head({self.src!r}, n={self.n})"

    def __getitem__(self, i):
        i = int(i)
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.src[i]


def class_names_of(cfg):

    names = list(class_names(cfg.data.dataset, cfg.data.root, cfg.data.classes or None))
    k = cfg.model.num_classes
    return names if len(names) == k else [f"class {i}" for i in range(k)]


def data_mesh():
    # Auto axes: XLA propagates the batch sharding through the network (explicit sharding
    # would need an out_sharding on every reshape of a batch-sharded array).
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
