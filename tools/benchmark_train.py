"""CPU benchmarks of the JAX implementation against the PyTorch twin, side by side.

    python -m tools.benchmark_train ops        # grid_sample fwd+bwd at the SFC shape
    python -m tools.benchmark_train forward    # CSFCN and CSFCN-Tiny, eval forward, 512x1024
    python -m tools.benchmark_train train      # one training step (fwd + bwd + SGD), batch 8, 256x512
    python -m tools.benchmark_train all --json out.json

The train step also runs on a GPU, in mixed precision (JAX bf16 compute, torch bf16 autocast)::

    python -m tools.benchmark_train train --batch 12 --size 1024 1024 --dtype bfloat16 --torch-amp --device cuda

Each variant is warmed up (compilation excluded) and timed ``--repeats`` times in turn,
interleaved so that machine noise hits all variants alike; medians and the spread
(min..max) are reported.  Performance is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from csfcn.model_config import IMAGENET_MEAN, IMAGENET_STD
from jax_csfcn import step as jstep_mod
from jax_csfcn.checkpointing import model_flat
from jax_csfcn.model import build_model
from jax_csfcn.ops import grid_sample
from jax_csfcn.schedule import optimizer_of, schedule_of


def _block(x):
    return jax.block_until_ready(x)


def time_interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: _summary(t) for name, t in times.items()}


def _summary(t: list[float]) -> dict:
    q = np.percentile(t, [25, 75]) if len(t) > 1 else (t[0], t[0])
    return {
        "median_ms": statistics.median(t),
        "min_ms": min(t),
        "max_ms": max(t),
        "q1_ms": float(q[0]),
        "q3_ms": float(q[1]),
        "runs": len(t),
    }


def bench_grid_sample(repeats: int) -> dict:
    """SFC sampling shape: batch 2 x 2 groups, 64 channels, 128x256, offsets of a few px."""

    rng = np.random.default_rng(0)
    n, c, h, w = 4, 64, 128, 256
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    base = np.stack(np.meshgrid(np.linspace(-1, 1, w), np.linspace(-1, 1, h)), -1)
    grid = (base[None] + rng.normal(0, 2.0 / w, (n, h, w, 2))).astype(np.float32)

    def loss(x, g):
        return jnp.sum(grid_sample(x, g) ** 2)

    fwd = jax.jit(grid_sample)
    fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
    xj, gj = jnp.asarray(x), jnp.asarray(grid)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    gt = torch.from_numpy(grid).requires_grad_()

    def torch_fwd():
        with torch.no_grad():
            F.grid_sample(xt, gt, align_corners=True)

    def torch_fwd_bwd():
        xt.grad = gt.grad = None
        (F.grid_sample(xt, gt, align_corners=True) ** 2).sum().backward()

    return time_interleaved(
        {
            "jax forward": lambda: _block(fwd(xj, gj)),
            "torch forward": torch_fwd,
            "jax forward+backward": lambda: _block(fwd_bwd(xj, gj)),
            "torch forward+backward": torch_fwd_bwd,
        },
        repeats,
    )


def bench_forward(repeats: int, size=(512, 1024), variant="csfcn") -> dict:
    from convert.table import flax_to_torch
    from torch_deploy.model import CSFCN as TorchCSFCN

    model = build_model({"name": variant}, seed=0)
    model.eval()
    tmodel = TorchCSFCN(model.config).eval()
    tmodel.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in flax_to_torch(model_flat(model)).items()})
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    x = np.random.default_rng(0).standard_normal((1, *size, 3)).astype(np.float32)
    xj = jnp.asarray(x)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    def torch_fwd():
        with torch.no_grad():
            tmodel(xt)

    return time_interleaved(
        {
            f"jax {variant} {size[0]}x{size[1]}": lambda: _block(fwd(state, xj)),
            f"torch {variant} {size[0]}x{size[1]}": torch_fwd,
        },
        repeats,
    )


# --------------------------------------------------------------------------- training step
def torch_ohem_select(logits, labels, *, thresh: float = 0.9, min_kept: int = 110000, ignore_index: int = 255):
    """The OHEM definition of :mod:`jax_csfcn.losses` in torch: per-pixel NLL (N, H, W) and keep mask.

    ``logits`` NCHW, ``labels`` NHW integers.  k = min(min_kept, n_valid); the threshold is
    max(thresh, k-th smallest true-class probability over the valid pixels of the batch);
    kept = valid & (p <= threshold).  The threshold carries no gradient.
    """
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    nll = F.cross_entropy(logits.float(), safe, reduction="none")
    with torch.no_grad():
        p = torch.exp(-nll)
        n_valid = int(valid.sum())
        k = min(min_kept, n_valid)
        if k == 0:
            return nll, valid
        flat = torch.where(valid, p, torch.full_like(p, float("inf"))).reshape(-1)
        kth = torch.kthvalue(flat, k).values
        keep = valid & (p <= torch.clamp(kth, min=thresh))
    return nll, keep


def torch_ohem_loss(logits, labels, **kw):
    nll, keep = torch_ohem_select(logits, labels, **kw)
    return torch.where(keep, nll, torch.zeros_like(nll)).sum() / keep.sum().clamp(min=1).float()


def _torch_decay_groups(model, weight_decay: float) -> list[dict]:
    """SGD param groups: L2 decay on conv/linear weights only (Flax ``kernel``s), none on BN and biases."""
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def bench_train(
    repeats: int,
    batch: int = 8,
    size=(256, 512),
    variant: str = "csfcn",
    *,
    warmup: int = 2,
    min_kept: int | None = None,
    torch_layouts=("default", "channels_last"),
    dtype: str = "float32",
    torch_amp: bool = False,
    device: str = "cpu",
) -> dict:
    """One full training step (forward + backward + SGD update) in JAX and in the PyTorch twin.

    JAX: the real jitted step of :func:`jax_csfcn.step.make_train_step` (what
    :func:`jax_csfcn.training.train` runs: uint8 in, normalised on device, OHEM CE, SGD momentum +
    masked L2 decay; it also computes the gradient norm and the finite-step guard, which the
    torch step does not), in the compute dtype ``dtype`` (``train.dtype``: "float32" or
    "bfloat16", parameters fp32) on JAX's default backend.  Torch: the twin in train mode on
    ``device`` ("cpu" or "cuda"), the same normalisation, OHEM definition and
    ``torch.optim.SGD(momentum, weight_decay on conv weights)``, in each layout of
    ``torch_layouts`` ("default" = NCHW-contiguous, "channels_last"); with ``torch_amp`` the
    forward pass and the loss run under ``torch.autocast(device, dtype=torch.bfloat16)`` (the
    OHEM cross-entropy itself in fp32, parameters and the update fp32).  All start from the
    same weights and see the same batch; the first step's losses are returned for a parity check.

    The settings are the training defaults of :mod:`jax_csfcn.defaults` (those of
    ``jax_csfcn.config.get_config()``) with the arguments above: nothing here imports
    ml_collections, grain or Orbax (tests/test_step_imports.py).
    """

    from convert.table import flax_to_torch
    from torch_deploy.model import CSFCN as TorchCSFCN

    if dtype not in jstep_mod.DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {sorted(jstep_mod.DTYPES)}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: choose 'cpu' or 'cuda'")
    if device == "cuda":
        # Both frameworks share the GPU: JAX must not reserve 75% of its memory up front.  Read
        # when JAX's backend starts, so it only helps if nothing has used JAX before this call.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    h, w = size
    cfg = jstep_mod.default_settings()
    cfg.model.name = variant
    cfg.train.batch_size = batch
    cfg.train.dtype = dtype
    cfg.data.crop_size = (h, w)
    if min_kept is not None:
        cfg.loss.min_kept = min_kept
    config = jstep_mod.model_config(cfg)

    # JAX: the state and step exactly as jax_csfcn.training.train builds them (1-device mesh).
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
    schedule = schedule_of(cfg.train)
    graphdef, _, params, stats = jstep_mod.init_state(cfg, config)
    tensors = flax_to_torch(model_flat(nnx.merge(graphdef, params, stats)))
    tx = optimizer_of(cfg.train, params)
    jstate = jstep_mod.replicate({"params": params, "batch_stats": stats, "opt_state": tx.init(params)}, mesh)
    jstep = jstep_mod.make_train_step(graphdef, tx, cfg, mesh)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    labels = rng.integers(0, config.num_classes, (batch, h, w)).astype(np.uint8)
    labels[rng.random((batch, h, w)) < 0.1] = cfg.data.ignore_index
    data = NamedSharding(mesh, P("data"))
    ji, jl = jax.device_put(images, data), jax.device_put(labels, data)

    box = {"state": jstate}

    def jax_step():
        box["state"], m = jstep(box["state"], ji, jl)
        return float(jax.block_until_ready(m)["loss"])

    # Torch: the twin from the same weights, one model + optimizer per layout.
    ohem_kw = dict(thresh=cfg.loss.thresh, min_kept=int(cfg.loss.min_kept), ignore_index=cfg.data.ignore_index)
    ti = torch.from_numpy(images).to(device)  # NHWC uint8: the loader's batch
    tl = torch.from_numpy(labels).to(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0
    lr0 = float(schedule(0))

    def make_torch_step(layout: str):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        model = TorchCSFCN(config)
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in tensors.items()})
        model.train().to(device=device, memory_format=fmt)
        opt = torch.optim.SGD(_torch_decay_groups(model, cfg.train.weight_decay), lr=lr0, momentum=cfg.train.momentum)

        def step():
            x = ((ti.permute(0, 3, 1, 2).float() - mean) / std).contiguous(memory_format=fmt)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=torch_amp):
                loss = torch_ohem_loss(model(x), tl.long(), **ohem_kw)
            loss.backward()
            opt.step()
            return float(loss.detach())  # waits for the device: the step is done

        return step

    # Row names: the float32 / no-AMP defaults keep the names of earlier results.
    jax_name = f"jax {variant}" + ("" if dtype == "float32" else f" {dtype}")
    torch_tag = (" bf16-amp" if torch_amp else "") + ("" if device == "cpu" else f" {device}")
    fns = {jax_name: jax_step}
    for layout in torch_layouts:
        fns[f"torch {variant} {layout}{torch_tag}"] = make_torch_step(layout)

    # First call of each (JAX: compilation + one step), from identical weights and data.
    first_ms, first_loss = {}, {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        first_loss[name] = fn()
        first_ms[name] = (time.perf_counter() - t0) * 1e3
    load_before = os.getloadavg()
    rows = time_interleaved(fns, repeats, warmup=warmup)
    load_after = os.getloadavg()
    for name, r in rows.items():
        r["images_per_s"] = batch * 1e3 / r["median_ms"]
        r["first_call_ms"] = first_ms[name]
        r["first_step_loss"] = first_loss[name]
    return {
        "shape": {"batch": batch, "height": h, "width": w, "num_classes": config.num_classes, "variant": variant},
        "loss": {"ohem": bool(cfg.loss.ohem), **ohem_kw},
        "optimizer": {"lr": lr0, "momentum": cfg.train.momentum, "weight_decay": cfg.train.weight_decay},
        "precision": {"jax_compute_dtype": dtype, "torch_autocast": "bfloat16" if torch_amp else None},
        "devices": {"jax": str(jax.devices()[0]), "torch": device},
        "warmup": warmup,
        "repeats": repeats,
        "loadavg_1_5_15": {"before": list(load_before), "after": list(load_after)},
        "rows": rows,
    }


def environment() -> dict:
    return {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "available_cores": len(os.sched_getaffinity(0)),
        "loadavg_1_5_15": list(os.getloadavg()),
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        "jaxlib": getattr(__import__("jaxlib"), "__version__", "?"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "jax_devices": [str(d) for d in jax.devices()],
    }


def _print_rows(rows: dict) -> None:
    print(f"  {'variant':<36}{'median ms':>11}{'min..max ms':>18}")
    for name, r in rows.items():
        print(f"  {name:<36}{r['median_ms']:>11.2f}{r['min_ms']:>9.2f}..{r['max_ms']:<8.2f}")


def _print_train(t: dict) -> None:
    s = t["shape"]
    print(
        f"  batch {s['batch']}, {s['height']}x{s['width']}, {s['variant']}, K={s['num_classes']}; "
        f"{t['repeats']} interleaved rounds after {t['warmup']} warm-up steps; "
        f"load avg {t['loadavg_1_5_15']['before'][0]:.2f} -> {t['loadavg_1_5_15']['after'][0]:.2f}"
    )
    print(
        f"  {'variant':<42}{'median ms':>10}{'IQR ms':>20}{'min..max ms':>20}{'img/s':>8}"
        f"{'1st call ms':>13}{'1st loss':>10}"
    )
    for name, r in t["rows"].items():
        print(
            f"  {name:<42}{r['median_ms']:>10.1f}{r['q1_ms']:>10.1f}..{r['q3_ms']:<8.1f}"
            f"{r['min_ms']:>10.1f}..{r['max_ms']:<8.1f}{r['images_per_s']:>8.2f}"
            f"{r['first_call_ms']:>13.0f}{r['first_step_loss']:>10.4f}"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.benchmark_train", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["ops", "forward", "train", "all"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each variant before timing")
    p.add_argument("--batch", type=int, default=8, help="train: batch size")
    p.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"), help="train: crop size")
    p.add_argument("--variant", choices=["csfcn", "csfcn_tiny"], default="csfcn", help="train: model variant")
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="train: JAX compute dtype (train.dtype)"
    )
    p.add_argument("--torch-amp", action="store_true", help="train: torch forward + loss under bfloat16 autocast")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="train: the torch device")
    p.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: available cores)"
    )
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"environment": environment()}
    if args.what in ("ops", "all"):
        results["grid_sample (4x64x128x256)"] = bench_grid_sample(args.repeats)
    if args.what in ("forward", "all"):
        results["forward"] = {}
        for variant in ("csfcn", "csfcn_tiny"):
            results["forward"].update(bench_forward(args.repeats, variant=variant))
    if args.what in ("train", "all"):
        results["train"] = bench_train(
            args.repeats,
            args.batch,
            tuple(args.size),
            args.variant,
            warmup=args.warmup,
            dtype=args.dtype,
            torch_amp=args.torch_amp,
            device=args.device,
        )
    print(json.dumps(results["environment"]))
    for section, rows in results.items():
        if section == "environment":
            continue
        print(f"\n{section}")
        if section == "train":
            _print_train(rows)
        else:
            _print_rows(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    from csfcn.cli import run_main

    run_main(main)  # Ctrl-C / SIGTERM: one line, nothing partial (csfcn/cli.py)
