"""Evaluate a CSFCN checkpoint on a split: mIoU, per-class IoU, pixel accuracy.

    python -m tools.evaluate --config configs/cityscapes.py:csfcn,100 --checkpoint runs/cs100
    python -m tools.evaluate --config configs/cityscapes.py:csfcn,100 --checkpoint model.safetensors \\
        --config.eval.scales='(0.75, 1.0, 1.25)' --config.eval.flip=True --dump-dir preds/

``--checkpoint`` is anything ``jax_csfcn.load_model`` reads: a training run directory (its
best checkpoint by val mIoU, else the latest), one step directory of a run, an exported
``.safetensors`` / Orbax directory, or an upstream ``.pth``.

The scores come from one confusion matrix accumulated on the device over the whole split (not
an average of per-batch mIoU), with the ignore label honoured.  They equal the official
``cityscapesscripts`` pixel-level evaluator's on the same predictions (tests/test_evaluate.py).
The evaluation itself is the library :mod:`jax_csfcn.evaluation`; this module reads the
checkpoint, writes predictions and pictures, and is the command line.

Multi-scale: each scale resizes the image (bilinear, sides rounded to multiples of 32), the
logits are resized back to the label size and the softmax probabilities of all scales (and of
the flipped image when ``eval.flip``) are averaged before the argmax.

Reduced-size evaluation (``data.eval_size``, the upstream "-50" / "-75" models): the image is
first resized (bilinear) to ``eval_size``, scales are relative to that size, and the logits are
resized back to the label's full resolution, so the scores are always at full resolution.
"""

from __future__ import annotations

from csfcn.extras import require

require("train", "python -m tools.evaluate", cli=__name__ == "__main__")  # before the imports that need the extra

import argparse
import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from csfcn.checkpoints import kind_of
from csfcn.files import child_path, unwritable, write_atomic
from csfcn.palette import comparison_grid, raw_value_lut, train_id_to_label_id, write_png
from jax_csfcn.checkpointing import read_flax_checkpoint, set_model_flat
from jax_csfcn.cli import config_parser, one_line_errors, parse_config_args
from jax_csfcn.data.folder import read_table
from jax_csfcn.data.sources import family, palette
from jax_csfcn.evaluation import (
    build_split,
    class_names_of,
    data_mesh,
    format_scores,
    make_eval_step,
    run_eval,
    scores_json,
)
from jax_csfcn.model import build_model
from jax_csfcn.step import TrainError, maybe_initialize_distributed, replicate

__all__ = ["evaluate_checkpoint", "main"]


def evaluate_checkpoint(
    cfg, checkpoint, *, split: str, dump_dir=None, dump_format="trainids", pictures=None, picture_rows: int = 4
) -> dict:
    """Scores of ``checkpoint`` (anything load_model reads) on ``split`` with ``cfg``'s eval settings;
    ``pictures``: also write a PNG of the first ``picture_rows`` images, ground truth and predictions."""
    if kind_of(checkpoint) == "orbax":
        config, flat = read_flax_checkpoint(checkpoint)
    else:  # optional: a PyTorch file is read through the bridge (imports torch)
        from convert.formats import read_checkpoint

        config, flat = read_checkpoint(checkpoint)
    if config.num_classes != cfg.model.num_classes:
        raise TrainError(
            f"{checkpoint} predicts {config.num_classes} classes, the config's dataset has {cfg.model.num_classes}; "
            "use the matching config"
        )
    if pictures and picture_rows < 1:
        raise TrainError(f"--picture-rows {picture_rows}: draw at least one image")
    own, names = list(config.class_names), class_names_of(cfg)
    if own and own != names:
        raise TrainError(
            f"{checkpoint} was trained on classes {own}, the config's dataset lists {names}: the same train ids "
            "mean other classes; evaluate it on the data (and class table) it was trained for"
        )
    model = build_model(config)
    set_model_flat(model, flat)
    model.eval()
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    mesh = data_mesh()
    params, stats = replicate(params, mesh), replicate(stats, mesh)
    eval_step = make_eval_step(
        graphdef,
        mesh,
        num_classes=config.num_classes,
        ignore_index=cfg.data.ignore_index,
        scales=tuple(cfg.eval.scales),
        flip=cfg.eval.flip,
        input_size=cfg.data.eval_size,
    )
    src = build_split(cfg, split)
    writers = [_prediction_writer(Path(dump_dir), dump_format, _raw_lut(cfg, dump_format))] if dump_dir else []
    rows: list = []
    if pictures:
        writers.append(_picture_rows(rows, picture_rows))

    def on_pred(batch, pred):
        for w in writers:
            w(batch, pred)

    sc = run_eval(
        cfg, mesh, eval_step, params, stats, src, on_predictions=on_pred if writers else None, desc=f"eval {split}"
    )
    names = class_names_of(cfg)
    if pictures and rows and jax.process_index() == 0:
        colours = label_palette(cfg, config)
        comparison_grid(rows, colours, pictures, names=names if len(names) == len(colours) else None)
    return {"scores": scores_json(sc, names), "table": format_scores(sc, names), "raw": sc}


def _raw_lut(cfg, fmt: str):
    """For ``--dump-format raw``: train id -> the mask value the dataset's class table stores."""
    if fmt != "raw":
        return None
    if family(cfg.data.dataset, cfg.data.root) != "folder":
        raise TrainError(
            f"--dump-format raw writes a folder dataset's own mask values; for {cfg.data.dataset!r} use trainids"
            + (" or cityscapes" if "cityscapes" in cfg.data.dataset or cfg.data.dataset == "synthetic" else "")
        )
    return raw_value_lut(read_table(cfg.data.root, cfg.data.classes or None).model_classes())


def label_palette(cfg, config) -> np.ndarray:
    """uint8 (K, 3) colours of the classes: the checkpoint's own table, else the dataset's."""
    if config.classes:
        return np.array(config.class_colors, np.uint8)
    colours = palette(cfg.data.dataset, cfg.data.root, cfg.data.classes or None)
    if len(colours) != config.num_classes:  # a class count no table knows: spread hues
        colours = np.array(
            [[(37 * i) % 256, (97 * i + 60) % 256, (173 * i + 120) % 256] for i in range(config.num_classes)], np.uint8
        )
    return colours


def _picture_rows(rows: list, n: int):
    """A prediction callback that keeps the first ``n`` (image, label, prediction) triples."""

    def on_predictions(batch, pred):
        for i in range(len(pred)):
            if len(rows) >= n or ("valid" in batch and not batch["valid"][i]):
                continue
            h, w = (int(v) for v in batch["size"][i])
            rows.append((np.asarray(batch["image"][i][:h, :w]), np.asarray(batch["label"][i][:h, :w]), pred[i, :h, :w]))

    return on_predictions


def _prediction_writer(out: Path, fmt: str, raw_lut=None):
    if out.exists() and not out.is_dir():
        raise TrainError(f"--dump-dir {out}: is a file; give a folder for the prediction PNGs")
    out.mkdir(parents=True, exist_ok=True)

    def target(name: str, suffix: str) -> Path:
        try:  # names come from the data (a TFDS image_id, a file name): they stay inside the folder
            return child_path(out, f"{name}{suffix}")
        except ValueError as e:
            raise TrainError(f"--dump-dir: {e}") from None

    def on_predictions(batch, pred):
        for i in range(len(pred)):
            if "valid" in batch and not batch["valid"][i]:
                continue
            h, w = (int(v) for v in batch["size"][i])
            p = pred[i, :h, :w]
            name = str(batch["name"][i])
            if fmt == "cityscapes":
                write_png(target(name, "_leftImg8bit.png"), train_id_to_label_id(p))
            elif fmt == "raw":
                write_png(target(name, ".png"), raw_lut[p])
            else:
                write_png(target(name, "_trainIds.png"), p)

    return on_predictions


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = config_parser("python -m tools.evaluate", (__doc__ or "").split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run directory, step directory or exported model")
    p.add_argument("--split", help="split to evaluate (default: data.val_split)")
    p.add_argument("--dump-dir", metavar="DIR", help="also write the predictions as PNGs into this folder")
    p.add_argument(
        "--dump-format",
        default="trainids",
        choices=("trainids", "cityscapes", "raw"),
        help="trainids: train-id PNGs; cityscapes: label-id PNGs named for the official evaluator / test server; "
        "raw: a folder dataset's own mask values (its class table's first value, or colour, of each class)",
    )
    p.add_argument("--json", metavar="PATH", help="write the scores as JSON to this file")
    p.add_argument(
        "--pictures", metavar="PNG", help="also draw the first images: image | ground truth | prediction, and a legend"
    )
    p.add_argument("--picture-rows", type=int, default=4, help="how many images --pictures draws (>= 1)")
    return p


def check_outputs(args) -> None:
    """--json and --pictures are written after the whole evaluation: a folder that cannot take
    them fails now, in one line, not after the long work (parents are created, as the write would)."""
    for flag, path in (("--json", args.json), ("--pictures", args.pictures)):
        problem = path and unwritable(path, flag)
        if problem:
            raise TrainError(problem)


def main(argv=None) -> None:
    args, cfg = parse_config_args(build_parser(), argv)
    maybe_initialize_distributed()
    if jax.process_index() == 0:  # the files only process 0 writes
        one_line_errors(lambda: check_outputs(args), debug=args.debug)
    result = one_line_errors(
        lambda: evaluate_checkpoint(
            cfg,
            args.checkpoint,
            split=args.split or cfg.data.val_split,
            dump_dir=args.dump_dir,
            dump_format=args.dump_format,
            pictures=args.pictures,
            picture_rows=args.picture_rows,
        ),
        debug=args.debug,
    )
    if jax.process_index() == 0:
        print(result["table"])
        if args.json:
            write_atomic(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result["scores"], indent=2)))


if __name__ == "__main__":
    main()
