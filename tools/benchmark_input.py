"""The train input path, old and new side by side: host CPU per image and loader images/s.

    python -m tools.benchmark_input --root /tmp/synth1024 --size 1024 2048 --train 16 \\
        --workers 0 2 --batch 12 --crop 1024 1024 --seconds 20 --json input.json

Two pipelines over the same records and the same augmentation draws (the full recipe by
default: random scale, crop, flip, Gaussian blur p = 0.5, colour jitter 0.5):

* ``png+host``: the dataset's PNG files decoded by its source, every augmentation on the host;
* ``prepared+device``: the prepared format (``python -m tools.prepare``; written here to
  ``ROOT/prepared-ENCODING`` when missing), the scale/crop/flip and the blur and colour jitter
  left to the train step on the device (the loader ships the whole source, the resampling tables
  and the photometric parameters: ``data.geometry=device``, ``data.photometric=device``).

Measured, one thread of this process: milliseconds per image of each host stage (read/decode,
geometry, blur, jitter, the host's part of each device mode), median and min..max over the
records; the disk size and read time of each prepared encoding beside the PNG source; the
device-side augmentation (jax_csfcn/data/geometry.py, photometric.py) jitted on this machine's
default JAX backend, per image, geometry and blur + jitter apart. Then each pipeline's loader with each ``--workers`` count: warmed up, then
``--windows`` windows of ``--seconds / --windows`` seconds; images/s median and min..max.
If ``--root`` is missing or empty, a synthetic Cityscapes-layout dataset is written there first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from jax_csfcn.data.augment import AugmentConfig, augment, augment_on_device, augment_record
from jax_csfcn.data.geometry import possible_orders, stack_geometry
from jax_csfcn.data.photometric import (
    apply_photometric_host,
    draw_photometric,
    max_box_radius,
    stack_photometric,
)

# The GPU check (tools/gpu_check.py) calls step_with_device_augment on a machine that may lack
# grain, array_record and cityscapesscripts: the functions that need them import them inside.

PIPELINES = ("png+host", "prepared+device")


def _ensure_dataset(root: Path, size, n_train: int) -> None:
    from jax_csfcn.data.synthetic import write_synthetic_cityscapes  # optional: cityscapesscripts

    if (root / "leftImg8bit").is_dir():
        return
    print(f"writing {n_train} synthetic {size[0]}x{size[1]} train images to {root} ...", flush=True)
    write_synthetic_cityscapes(root, splits={"train": n_train}, size=tuple(size), seed=0, progress=True)


def _prepared(root: Path, split: str, encoding: str, source):
    from jax_csfcn.data import prepared  # optional: array_record (with grain)

    out = root / f"prepared-{encoding}"
    prepared.prepare({split: source}, out, origin={"dataset": "cityscapes"}, encoding=encoding, progress=True)
    return prepared.PreparedSource(out, split)


def _stats(ms: list[float]) -> dict:
    return {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "n": len(ms)}


def _timed(fn, items) -> tuple[list[float], list]:
    ms, out = [], []
    for x in items:
        t0 = time.perf_counter()
        out.append(fn(x))
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms, out


def encodings_table(root: Path, split: str, source, encodings, n: int) -> list[dict]:
    """Disk MB per image and read (+ decode) ms per image: the PNG source and each encoding."""
    idx = list(range(min(n, len(source))))
    rows = []
    files = sorted((root / "leftImg8bit" / split).rglob("*.png")) + sorted((root / "gtFine" / split).rglob("*.png"))
    png_mb = sum(f.stat().st_size for f in files) / len(source) / 1e6
    ms, _ = _timed(lambda i: source[i], idx)
    rows.append({"encoding": "png (the source, decoded by PIL)", "mb_per_image": png_mb, "read_ms": _stats(ms)})
    for enc in encodings:
        src = _prepared(root, split, enc, source)
        mb = sum(p.stat().st_size for p in src.paths) / len(src) / 1e6
        src[0]  # open the reader
        ms, _ = _timed(lambda i, s=src: s[i], idx)
        rows.append({"encoding": f"prepared {enc}", "mb_per_image": mb, "read_ms": _stats(ms)})
    return rows


def host_stages(source, prep, aug: AugmentConfig, n: int) -> dict:
    """ms per image of each host stage, both pipelines, on the same records and draws."""
    idx = list(range(min(n, len(source))))
    geometry_only = dataclasses.replace(aug, blur_prob=0.0, color_jitter=0.0, hue_jitter=0.0)
    photometric_only = dataclasses.replace(aug, photometric="device", geometry="host")
    device = _all_on_device(aug, source[0]["label"].shape)
    host = dataclasses.replace(aug, photometric="host", geometry="host")
    png_ms, items = _timed(lambda i: source[i], idx)
    prep_ms, _ = _timed(lambda i: prep[i], idx)
    crops = []

    def geo(item):
        img, _ = augment(item["image"], item["label"], geometry_only, np.random.default_rng(len(crops)))
        crops.append(img)

    geo_ms, _ = _timed(geo, items)
    radius = max(aug.blur_sigma)
    blur_ms, _ = _timed(lambda c: Image.fromarray(c).filter(ImageFilter.GaussianBlur(radius)), crops)
    jitter = dataclasses.replace(aug, blur_prob=0.0, color_jitter=max(aug.color_jitter, 1e-6))
    jit_params = [draw_photometric(np.random.default_rng(k), jitter) for k in range(len(crops))]
    jit_ms, _ = _timed(lambda k: apply_photometric_host(crops[k], jit_params[k]), range(len(crops)))
    full_host_ms, _ = _timed(
        lambda k: augment(items[k]["image"], items[k]["label"], host, np.random.default_rng(100 + k)), range(len(items))
    )
    photo_dev_ms, _ = _timed(
        lambda k: augment_record(
            items[k]["image"], items[k]["label"], photometric_only, np.random.default_rng(100 + k)
        ),
        range(len(items)),
    )
    full_dev_ms, _ = _timed(
        lambda k: augment_record(items[k]["image"], items[k]["label"], device, np.random.default_rng(100 + k)),
        range(len(items)),
    )
    old = [a + b for a, b in zip(png_ms, full_host_ms)]
    new = [a + b for a, b in zip(prep_ms, full_dev_ms)]
    return {
        "png_decode": _stats(png_ms),
        "prepared_read": _stats(prep_ms),
        "geometry": _stats(geo_ms),
        "blur_when_applied": _stats(blur_ms),
        "jitter": _stats(jit_ms),
        "augment_host_full_recipe": _stats(full_host_ms),
        "augment_photometric_on_device_host_part": _stats(photo_dev_ms),
        "augment_all_on_device_host_part": _stats(full_dev_ms),
        "total_png+host": _stats(old),
        "total_prepared+device": _stats(new),
    }


def _all_on_device(aug: AugmentConfig, source_hw) -> AugmentConfig:
    """``aug`` with the geometry and the photometric steps left to the device."""
    return dataclasses.replace(aug, photometric="device", geometry="device", source_size=tuple(source_hw))


def _device_batch(aug: AugmentConfig, source_hw, batch: int, rng) -> tuple[dict, tuple, list[float]]:
    """A batch as the loader ships it with everything on the device, from random sources; the
    pass orders the config can draw; and the ms each record's host work took (one thread)."""
    aug = _all_on_device(aug, source_hw)
    sh, sw = source_hw
    seeds = [int(s) for s in rng.integers(2**32, size=batch)]  # each record's own augmentation RNG
    sources = [
        (rng.integers(0, 256, (sh, sw, 3), dtype=np.uint8), rng.integers(0, 19, (sh, sw), dtype=np.uint8))
        for _ in seeds
    ]
    host_ms, out = _timed(
        lambda k: augment_record(*sources[k], aug, np.random.default_rng(seeds[k])), range(len(seeds))
    )
    arrays = {
        "seeds": seeds,
        "image": np.stack([o["image"] for o in out]),
        "label": np.stack([o["label"] for o in out]),
        "geometry": stack_geometry([o["geometry"] for o in out]),
        "photometric": stack_photometric([o["photometric"] for o in out]),
    }
    return arrays, possible_orders(aug, source_hw), host_ms


def compare_with_host(arrays: dict, aug: AugmentConfig, images, labels, n: int) -> dict:
    """The device's augmented ``images`` and ``labels`` of the first ``n`` records of a
    :func:`_device_batch` against the host pipeline's (Pillow and numpy, the same draws):
    how many values differ, and by how much at most (the rule: none)."""
    host = dataclasses.replace(aug, photometric="host", geometry="host", source_size=None)
    diff = worst = lab_diff = total = 0
    for k in range(min(n, len(arrays["seeds"]))):
        want = augment_record(arrays["image"][k], arrays["label"][k], host, np.random.default_rng(arrays["seeds"][k]))
        d = np.abs(np.asarray(images[k], np.int32) - want["image"])
        diff, worst, total = diff + int(np.count_nonzero(d)), max(worst, int(d.max())), total + d.size
        lab_diff += int(np.count_nonzero(np.asarray(labels[k]) != want["label"]))
    return {"records": min(n, len(arrays["seeds"])), "values": total, "differing": diff, "max_abs": worst,
            "label_pixels_differing": lab_diff}  # fmt: skip


def device_augment_cost(aug: AugmentConfig, source_hw, batch: int, repeats: int) -> dict:
    """ms per image of the jitted device-side geometry and blur + jitter on this machine's JAX
    backend, each alone and chained (as the train step runs them)."""
    import jax  # lazy: the host-side stages need no JAX

    full = dataclasses.replace(aug, blur_prob=1.0)  # every image blurred: the costlier case
    arrays, orders, _ = _device_batch(full, source_hw, batch, np.random.default_rng(0))
    reach = max_box_radius(full)

    def on_device(geometry_orders, photometric_reach):
        return jax.jit(
            lambda x, lab, e: augment_on_device(
                x,
                lab,
                e,
                ignore_index=aug.ignore_index,
                geometry_orders=geometry_orders,
                photometric_reach=photometric_reach,
            )
        )

    extras = {"geometry": arrays["geometry"], "photometric": arrays["photometric"]}
    sources = (arrays["image"], arrays["label"], extras)
    crops = on_device(orders, None)(*sources)
    runs = {
        "geometry": (on_device(orders, None), sources),
        "blur_jitter": (on_device(None, reach), (*crops, extras)),
        "both": (on_device(orders, reach), sources),
    }
    result = {"backend": jax.default_backend(), "batch": batch, "orders": list(orders)}
    for name, (fn, args) in runs.items():
        args = jax.device_put(args)
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        first = time.perf_counter() - t0
        ms = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            ms.append((time.perf_counter() - t0) * 1e3 / batch)
        result[name] = {"first_call_s": first, "ms_per_image": _stats(ms)}
    return result


def step_with_device_augment(*, batch: int, crop, source_hw, repeats: int, dtype: str = "bfloat16",
                             min_kept: int | None = None, aug: AugmentConfig | None = None) -> dict:  # fmt: skip
    """The input path on this machine's JAX device, for the GPU check: per image, the host's
    share of the loader (one record's tables and parameter draws, one thread), the device-side
    geometry + blur + jitter alone, and the real train step (:func:`jax_csfcn.step.make_train_step`)
    with that augmentation inside, fed by those batches; images/s of the step.

    Records are random ``source_hw`` images (any content costs the same); ``aug`` defaults to
    the full Cityscapes recipe with every image blurred (the costlier case); the geometry and
    the photometric steps run on the device. Needs JAX, Flax, Optax, NumPy and Pillow only (no
    grain): the loader's per-record function is timed in one thread; its worker processes are
    measured by :func:`main`."""
    import jax  # lazy: the host-side stages need no JAX
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jax_csfcn import step as jstep  # lazy: the host-side stages need no JAX
    from jax_csfcn.schedule import optimizer_of  # lazy: the host-side stages need no JAX

    h, w = crop
    sh, sw = source_hw
    aug = _all_on_device(aug or AugmentConfig(crop_size=(h, w), blur_prob=1.0, color_jitter=0.5), (sh, sw))
    arrays, orders, host_ms = _device_batch(aug, (sh, sw), batch, np.random.default_rng(0))

    cfg = jstep.default_settings()
    cfg.train.batch_size, cfg.train.dtype, cfg.data.crop_size = batch, dtype, (h, w)
    if min_kept is not None:
        cfg.loss.min_kept = min_kept
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
    graphdef, _, params, stats = jstep.init_state(cfg, jstep.model_config(cfg))
    tx = optimizer_of(cfg.train, params)
    state = jstep.replicate({"params": params, "batch_stats": stats, "opt_state": tx.init(params)}, mesh)
    reach = max_box_radius(aug)
    step = jstep.make_train_step(graphdef, tx, cfg, mesh, photometric_reach=reach, geometry_orders=orders)
    data = NamedSharding(mesh, P("data"))
    di, dl = jax.device_put(arrays["image"], data), jax.device_put(arrays["label"], data)
    extras = jax.device_put({"geometry": arrays["geometry"], "photometric": arrays["photometric"]}, data)
    augment_fn = jax.jit(
        lambda x, lab, e: augment_on_device(
            x, lab, e, ignore_index=aug.ignore_index, geometry_orders=orders, photometric_reach=reach
        )
    )

    def timed(fn, n):
        ms = []
        for _ in range(n):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            ms.append((time.perf_counter() - t0) * 1e3)
        return ms

    first_aug = timed(lambda: augment_fn(di, dl, extras), 1)[0]
    got_images, got_labels = (np.asarray(a) for a in augment_fn(di, dl, extras))
    equal = compare_with_host(arrays, aug, got_images, got_labels, n=2)
    aug_ms = [t / batch for t in timed(lambda: augment_fn(di, dl, extras), repeats)]
    box = {"state": state}

    def one_step():
        box["state"], m = step(box["state"], di, dl, extras)
        return m["loss"]

    first_step = timed(one_step, 1)[0]
    step_ms = timed(one_step, repeats)
    loss = float(one_step())
    return {
        "device": str(jax.devices()[0]),
        "batch": batch,
        "crop": [h, w],
        "source": [sh, sw],
        "dtype": dtype,
        "augment": aug.to_json(),
        "host_ms_per_image": _stats(host_ms),
        "device_augment_ms_per_image": _stats(aug_ms),
        "device_augment_first_call_ms": first_aug,
        "device_vs_host": equal,
        "step_ms": _stats(step_ms),
        "step_first_call_ms": first_step,
        "images_per_s": batch * 1e3 / statistics.median(step_ms),
        "loss_finite": bool(np.isfinite(loss)),
    }


def measure(source, aug: AugmentConfig, *, workers: int, batch: int, seconds: float, windows: int,
            warmup: float, buffer: int, threads: int) -> dict:  # fmt: skip
    """images/s of one loader configuration over ``windows`` timed windows after a warm-up."""
    from jax_csfcn.data.pipeline import train_loader  # optional: grain

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


def _fmt(s: dict) -> str:
    return f"{s['median']:.1f} ({s['min']:.1f}..{s['max']:.1f})"


def main(argv=None) -> dict:
    from jax_csfcn.data.cityscapes import CityscapesSource  # optional: cityscapesscripts
    from jax_csfcn.data.prepared import DEFAULT_ENCODING, ENCODINGS  # optional: array_record

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
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="grain worker counts to time, one by one")
    ap.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES), help="pipelines to time")
    ap.add_argument("--encodings", nargs="+", choices=sorted(ENCODINGS), default=sorted(ENCODINGS),
                    help="prepared encodings to size and time (the loader reads the default one)")  # fmt: skip
    ap.add_argument("--batch", type=int, default=12, help="per-process batch size")
    ap.add_argument("--crop", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"), help="crop size")
    ap.add_argument("--scale", type=float, nargs=2, default=(0.125, 2.0), metavar=("LO", "HI"), help="scale range")
    ap.add_argument("--blur-prob", type=float, default=0.5, help="Gaussian blur probability (the recipe: 0.5)")
    ap.add_argument("--color-jitter", type=float, default=0.5, help="colour jitter strength (the recipe: 0.5)")
    ap.add_argument("--hue-jitter", type=float, default=0.0, help="hue jitter (CamVid's recipe: 0.1)")
    ap.add_argument("--stage-images", type=int, default=8, help="records timed per host stage")
    ap.add_argument("--device-batch", type=int, default=2, help="batch of the timed device-side augmentation")
    ap.add_argument("--device-repeats", type=int, default=5, help="timed calls of the device-side augmentation")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per loader configuration")
    ap.add_argument("--windows", type=int, default=5, help="timed windows per configuration (median, spread)")
    ap.add_argument("--warmup", type=float, default=5.0, help="untimed seconds after the first batch")
    ap.add_argument("--buffer", type=int, default=2, help="worker_buffer_size: finished batches per worker")
    ap.add_argument("--threads", type=int, default=1, help="read_threads per process")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.windows < 1 or args.stage_images < 1:
        ap.error("--seconds must be > 0, --windows and --stage-images >= 1")

    root = Path(args.root)
    _ensure_dataset(root, args.size, args.train)
    source = CityscapesSource(root, args.split)
    aug = AugmentConfig(
        crop_size=tuple(args.crop),
        scale_range=tuple(args.scale),
        blur_prob=args.blur_prob,
        color_jitter=args.color_jitter,
        hue_jitter=args.hue_jitter,
    )
    h, w = source[0]["label"].shape
    encodings = encodings_table(root, args.split, source, args.encodings, args.stage_images)
    prep = _prepared(root, args.split, DEFAULT_ENCODING, source)
    stages = host_stages(source, prep, aug, args.stage_images)
    device = device_augment_cost(aug, (h, w), args.device_batch, args.device_repeats)
    loaders = []
    for name in args.pipelines:
        src, a = (source, aug) if name == "png+host" else (prep, _all_on_device(aug, (h, w)))
        for wk in args.workers:
            r = measure(src, a, workers=wk, batch=args.batch, seconds=args.seconds, windows=args.windows,
                        warmup=args.warmup, buffer=args.buffer, threads=args.threads)  # fmt: skip
            loaders.append({"pipeline": name, **r})
    report = {
        "command": " ".join(["python -m tools.benchmark_input", *(sys.argv[1:] if argv is None else argv)]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "image_size": [int(h), int(w)],
        "augment": aug.to_json(),
        "encodings": encodings,
        "host_ms_per_image": stages,
        "device_augment": device,
        "loaders": loaders,
    }
    print(f"\n{h}x{w} images, crop {aug.crop_size[0]}x{aug.crop_size[1]}, scale {aug.scale_range}, "
          f"blur {aug.blur_prob}, jitter {aug.color_jitter}, hue {aug.hue_jitter}")  # fmt: skip
    print("\n| encoding | MB per image | read ms per image, median (min..max) |\n|---|---:|---:|")
    for r in encodings:
        print(f"| {r['encoding']} | {r['mb_per_image']:.2f} | {_fmt(r['read_ms'])} |")
    print("\n| host stage, one thread | ms per image, median (min..max) |\n|---|---:|")
    for k, s in stages.items():
        print(f"| {k} | {_fmt(s)} |")
    d = device
    print(f"\ndevice side ({d['backend']}, batch {d['batch']}), ms per image, median (min..max):")
    for name in ("geometry", "blur_jitter", "both"):
        print(f"  {name}: {_fmt(d[name]['ms_per_image'])} (first call {d[name]['first_call_s']:.1f} s)")
    print("\n| pipeline | workers | images/s median | min..max | first batch s |\n|---|---:|---:|---:|---:|")
    for r in loaders:
        print(
            f"| {r['pipeline']} | {r['workers']} | {r['images_per_s_median']:.1f} | "
            f"{r['images_per_s_min']:.1f}..{r['images_per_s_max']:.1f} | {r['first_batch_s']:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":  # required: grain workers are spawned processes that re-import this module
    main()
