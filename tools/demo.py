"""The whole workflow on the embedded synthetic dataset, on CPU, in minutes (`make demo`).

    python -m tools.demo [--workdir runs/demo] [--steps N] [--fresh] [--tiny]

1. generate the synthetic Cityscapes-layout street scenes (40 train / 10 val, 256x512) and
   prepare them once into the fast record format (``python -m tools.prepare``, next to them:
   ``data/synthetic_prepared``);
2. train CSFCN, reading the prepared records (blur and colour jitter on the device), on them with ``configs/synthetic.py`` (JAX, OHEM, warm-up poly SGD), with
   validation, checkpoints, metrics.jsonl, TensorBoard events and ``curves.png``;
3. export the best checkpoint to the PyTorch twin with the converter (``model.safetensors``);
4. check parity: the JAX model and the exported PyTorch model on every val image (relative
   L2 of the logits, argmax agreement);
5. predict the val images with ``python -m torch_deploy.predict`` (label, colour and overlay
   PNGs) and draw ``predictions.png`` (image | ground truth | prediction rows);
6. write ``report.md``: mIoU, per-class IoU, parity, and the time each stage took.

Everything lands in ``--workdir``.  ``--fresh`` deletes an existing workdir first; without it
an interrupted demo continues its training from the last checkpoint.  ``--tiny`` runs every
stage in a minute or two to check an installation (8 train / 2 val images of 64x128, a few
steps; its own default folders ``runs/demo_tiny`` and ``data/synthetic_tiny``): the numbers
it reports mean nothing.
"""

from __future__ import annotations

from csfcn.extras import require

require("train", "python -m tools.demo", cli=__name__ == "__main__")  # before the imports that need the extra

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from PIL import Image

import jax_csfcn
from csfcn.interrupt import Preempted
from csfcn.palette import comparison_grid, write_atomic
from jax_csfcn.cli import load_config_file
from jax_csfcn.data import prepared
from jax_csfcn.data.cityscapes import CityscapesSource
from jax_csfcn.data.sources import palette
from jax_csfcn.evaluation import build_split
from jax_csfcn.ops import normalize_on_device
from tools.train import train

ROOT = Path(__file__).resolve().parents[1]


def _stage(name: str, times: dict):
    class _T:
        def __enter__(self):
            print(f"\n== {name}", flush=True)
            self.t = time.time()

        def __exit__(self, *exc):
            times[name] = time.time() - self.t
            if exc[0] is None:
                print(f"   {name}: {times[name]:.0f} s", flush=True)

    return _T()


def parity(run_dir: Path, exported: Path, images: list[np.ndarray]) -> dict:
    """JAX (the run's checkpoint) vs the PyTorch twin (the export) on ``images``."""
    import torch

    import torch_deploy

    jm = jax_csfcn.load_model(run_dir)
    tm = torch_deploy.load_model(exported)  # the .safetensors export
    num = den = 0.0
    agree = total = 0
    for img in images:
        x = normalize_on_device(jnp.asarray(img[None]))
        a = np.asarray(jm(x), np.float64)  # NHWC
        with torch.no_grad():
            b = tm(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
        num += float(np.sum((a - b) ** 2))
        den += float(np.sum(b.astype(np.float64) ** 2))
        agree += int(np.sum(a.argmax(-1) == b.argmax(-1)))
        total += a.shape[1] * a.shape[2]
    return {"rel_l2": math.sqrt(num / den), "argmax_agreement": agree / total, "images": len(images)}


def report(path: Path, *, ev: dict, par: dict, times: dict, cfg, steps: int) -> None:
    iou = ev["iou"]
    lines = [
        "# csfcn demo report",
        "",
        f"CSFCN trained from scratch in JAX on the synthetic street scenes ({cfg.data.synthetic.train} train / "
        f"{cfg.data.synthetic.val} val images at {cfg.data.synthetic.size[0]}x{cfg.data.synthetic.size[1]}), "
        f"{steps} steps of batch {cfg.train.batch_size} at {cfg.data.crop_size[0]}x{cfg.data.crop_size[1]} crops, on CPU.",
        "",
        f"**val mIoU {100 * ev['miou']:.1f}**, pixel accuracy {100 * ev['pixel_acc']:.1f} "
        f"(confusion matrix over the whole val split, {ev['images']} images).",
        "",
        "| class | IoU |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {'n/a' if v is None else f'{100 * v:.1f}'} |" for name, v in iou.items()]
    lines += [
        "",
        "## Export parity (JAX checkpoint vs exported PyTorch twin, fp32, val images)",
        "",
        f"relative L2 of the logits {par['rel_l2']:.2e}, argmax agreement {100 * par['argmax_agreement']:.4f} % "
        f"over {par['images']} images.",
        "",
        "## Time",
        "",
        "| stage | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v:.0f} |" for k, v in times.items()]
    lines += [f"| total | {sum(times.values()):.0f} |", "", "Pictures: `predictions.png`, `curves.png`, `predict/`."]

    write_atomic(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=None, help="where everything is written (default runs/demo)")
    ap.add_argument(
        "--data", default=None, help="synthetic dataset folder, generated if missing (default data/synthetic)"
    )
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: configs/synthetic.py)")
    ap.add_argument("--fresh", action="store_true", help="delete an existing workdir first")
    ap.add_argument("--tiny", action="store_true", help="a quick check of every stage on 10 images of 64x128")
    args = ap.parse_args(argv)
    suffix = "_tiny" if args.tiny else ""
    args.workdir = args.workdir or f"runs/demo{suffix}"
    args.data = args.data or f"data/synthetic{suffix}"

    workdir = Path(args.workdir)
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    cfg = load_config_file(str(ROOT / "configs" / "synthetic.py"))
    cfg.workdir = str(workdir)
    cfg.data.root = args.data
    if args.tiny:
        cfg.data.synthetic.train, cfg.data.synthetic.val, cfg.data.synthetic.size = 8, 2, (64, 128)
        cfg.data.crop_size = (64, 128)
        cfg.data.workers = 0
        cfg.train.batch_size = 2
        cfg.loss.min_kept = 2000
        args.steps = args.steps or 4
    if args.steps:
        cfg.train.steps = args.steps
        cfg.train.warmup_steps = min(cfg.train.warmup_steps, args.steps // 10)
        # --tiny: one validation and one checkpoint, at the end
        cfg.eval.every = cfg.checkpoint.every = (
            args.steps if args.tiny else max(cfg.train.warmup_steps + 1, args.steps // 3)
        )
    times: dict[str, float] = {}

    with _stage("data: synthetic street scenes, prepared once", times):
        build_split(cfg, "train")
        print(f"   {args.data}: {len(CityscapesSource(args.data, 'train'))} train, "
              f"{len(CityscapesSource(args.data, 'val'))} val images")  # fmt: skip
        ready = Path(f"{args.data.rstrip('/')}_prepared")
        splits = {s: CityscapesSource(args.data, s) for s in ("train", "val")}
        prepared.prepare(splits, ready, origin={"dataset": "synthetic", "root": str(Path(args.data).absolute())})
        print(f"   {ready}: verified {prepared.verify(ready, progress=False)}")
        cfg.data.dataset, cfg.data.root = "prepared", str(ready)
    with _stage("train + validate (JAX)", times):
        resume = (workdir / "checkpoints").is_dir()
        try:
            summary = train(cfg, resume=resume)
        except Preempted as e:  # saved at the step it stopped: the same demo command continues from there
            e.resume = "run the demo again (make demo, or python -m tools.demo with the same flags)"
            raise
    ev = summary.get("val") or json.loads((workdir / "eval.json").read_text())
    exported = workdir / "model.safetensors"
    with _stage("export to PyTorch (python -m convert)", times):
        cmd = [sys.executable, "-m", "convert", str(workdir), str(exported), "--overwrite"]  # a re-run re-exports
        subprocess.run(cmd, check=True, cwd=os.getcwd())
    val = CityscapesSource(args.data, "val")
    items = [val[i] for i in range(len(val))]
    with _stage("parity: JAX vs exported PyTorch", times):
        par = parity(workdir, exported, [it["image"] for it in items])
        print(f"   relative L2 {par['rel_l2']:.2e}, argmax agreement {100 * par['argmax_agreement']:.4f} %")
    with _stage("predict val images (python -m torch_deploy.predict)", times):
        pred_dir = workdir / "predict"
        subprocess.run(
            [sys.executable, "-m", "torch_deploy.predict", "--checkpoint", str(exported), "--quiet",
             "--input", str(Path(args.data) / "leftImg8bit" / "val"), "--out", str(pred_dir)],
            check=True,
        )  # fmt: skip

        rows = []
        for it in items[:4]:
            lab = next((pred_dir / "labels").rglob(f"{it['name']}*.png"))
            rows.append((it["image"], it["label"], np.asarray(Image.open(lab))))
        comparison_grid(
            rows,
            palette("synthetic"),
            workdir / "predictions.png",
            titles=("image", "ground truth", "prediction (PyTorch export)"),
        )
    report(workdir / "report.md", ev=ev, par=par, times=times, cfg=cfg, steps=summary["step"])
    print(f"\nval mIoU {100 * ev['miou']:.1f} -- report: {workdir / 'report.md'}, pictures: "
          f"{workdir / 'predictions.png'}, {workdir / 'curves.png'}")  # fmt: skip
    return {"val": ev, "parity": par, "times": times}


if __name__ == "__main__":
    from csfcn.cli import run_main

    run_main(main)  # Ctrl-C / SIGTERM: one line, nothing partial (csfcn/cli.py)
