"""Throughput of the train input pipeline: images per second that ``train_loader`` delivers.

    python -m tools.benchmark_input --root /tmp/synth1024 --size 1024 2048 --train 16 \\
        --workers 2 --batch 12 --crop 1024 1024 --seconds 20 --json pipeline.json

If ``--root`` is missing or empty, a synthetic Cityscapes-layout dataset of ``--train`` images at
``--size`` is written there first.  For each ``--workers`` value the loader is started, warmed up
(worker start-up and the first batches are not timed), then timed over ``--windows`` consecutive
windows of ``--seconds / --windows`` seconds each; the table gives the median images/s with the
min..max over the windows.  A per-image breakdown (decode by the source, augmentation alone, one
thread of this process) is measured too, to show where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from jax_csfcn.data.cityscapes import CityscapesSource
from jax_csfcn.data.pipeline import AugmentConfig, augment, train_loader
from jax_csfcn.data.synthetic import write_synthetic_cityscapes


def _ensure_dataset(root: Path, size, n_train: int) -> None:
    if root.is_dir() and any(root.iterdir()):
        return
    print(f"writing {n_train} synthetic {size[0]}x{size[1]} train images to {root} ...", flush=True)
    write_synthetic_cityscapes(root, splits={"train": n_train}, size=tuple(size), seed=0, progress=True)


def per_image_breakdown(source, aug: AugmentConfig, n: int = 6) -> dict:
    """Median ms per image of decode (source[i]) and of augmentation, single-threaded."""
    decode, aug_ms = [], []
    rng = np.random.default_rng(0)
    for i in range(min(n, len(source))):
        t0 = time.perf_counter()
        item = source[i]
        t1 = time.perf_counter()
        augment(item["image"], item["label"], aug, rng)
        t2 = time.perf_counter()
        decode.append((t1 - t0) * 1e3)
        aug_ms.append((t2 - t1) * 1e3)
    return {"decode_ms": statistics.median(decode), "augment_ms": statistics.median(aug_ms)}


def measure(source, aug: AugmentConfig, *, workers: int, batch: int, seconds: float, windows: int,
            warmup: float, buffer: int, threads: int) -> dict:  # fmt: skip
    """images/s of one loader configuration over ``windows`` timed windows after a warm-up."""
    loader = train_loader(
        source, aug, batch_size=batch, seed=0, worker_count=workers, worker_buffer_size=buffer, read_threads=threads
    )
    with iter(loader) as it:
        t_start = time.perf_counter()
        next(it)
        first_batch_s = time.perf_counter() - t_start
        t_end_warm = time.perf_counter() + warmup
        warm_batches = 1
        while time.perf_counter() < t_end_warm:
            next(it)
            warm_batches += 1
        rates = []
        window = seconds / windows
        for _ in range(windows):
            t0, n = time.perf_counter(), 0
            while True:
                b = next(it)
                n += b["image"].shape[0]
                del b
                t = time.perf_counter() - t0
                if t >= window:
                    break
            rates.append(n / t)
    return {
        "workers": workers,
        "batch": batch,
        "first_batch_s": first_batch_s,
        "warmup_batches": warm_batches,
        "images_per_s_median": statistics.median(rates),
        "images_per_s_min": min(rates),
        "images_per_s_max": max(rates),
        "windows": rates,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m tools.benchmark_input",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--root", required=True, help="Cityscapes-layout dataset; generated (synthetic) if missing/empty")
    ap.add_argument("--split", default="train", help="split to read")
    ap.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"),
                    help="image size of the generated dataset")  # fmt: skip
    ap.add_argument("--train", type=int, default=16, help="number of images to generate when --root is empty")
    ap.add_argument("--workers", type=int, nargs="+", default=[2], help="grain worker counts to time, one by one")
    ap.add_argument("--batch", type=int, default=12, help="per-process batch size")
    ap.add_argument("--crop", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"), help="crop size")
    ap.add_argument("--scale", type=float, nargs=2, default=(0.125, 2.0), metavar=("LO", "HI"), help="scale range")
    ap.add_argument("--blur-prob", type=float, default=0.5, help="Gaussian blur probability (the recipe: 0.5)")
    ap.add_argument("--color-jitter", type=float, default=0.5, help="colour jitter strength (the recipe: 0.5)")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per configuration")
    ap.add_argument("--windows", type=int, default=5, help="timed windows per configuration (median, spread)")
    ap.add_argument("--warmup", type=float, default=5.0, help="untimed seconds after the first batch")
    ap.add_argument("--buffer", type=int, default=2, help="worker_buffer_size: finished batches per worker")
    ap.add_argument("--threads", type=int, default=1, help="read_threads per process")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.windows < 1:
        ap.error("--seconds must be > 0 and --windows >= 1")

    root = Path(args.root)
    _ensure_dataset(root, args.size, args.train)
    source = CityscapesSource(root, args.split)
    aug = AugmentConfig(
        crop_size=tuple(args.crop),
        scale_range=tuple(args.scale),
        blur_prob=args.blur_prob,
        color_jitter=args.color_jitter,
    )
    h, w = source[0]["label"].shape
    breakdown = per_image_breakdown(source, aug)
    results = [
        measure(
            source,
            aug,
            workers=wk,
            batch=args.batch,
            seconds=args.seconds,
            windows=args.windows,
            warmup=args.warmup,
            buffer=args.buffer,
            threads=args.threads,
        )  # fmt: skip
        for wk in args.workers
    ]
    report = {
        "command": " ".join(["python -m tools.benchmark_input", *(sys.argv[1:] if argv is None else argv)]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "source": repr(source),
        "image_size": [int(h), int(w)],
        "augment": aug.to_json(),
        "per_image_single_thread": breakdown,
        "results": results,
    }
    print(f"\n{repr(source)}: {h}x{w} images, crop {aug.crop_size[0]}x{aug.crop_size[1]}, scale {aug.scale_range}")
    print(f"single thread per image: decode {breakdown['decode_ms']:.1f} ms, augment {breakdown['augment_ms']:.1f} ms")
    print("\n| workers | batch | images/s median | min..max | first batch s |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['workers']} | {r['batch']} | {r['images_per_s_median']:.1f} | "
            f"{r['images_per_s_min']:.1f}..{r['images_per_s_max']:.1f} | {r['first_batch_s']:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":  # required: grain workers are spawned processes that re-import this module
    main()
