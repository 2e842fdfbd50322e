"""CPU benchmarks of the JAX implementation against the PyTorch twin, side by side.

    python -m jax_csfcn.benchmark ops        # grid_sample fwd+bwd at the SFC shape
    python -m jax_csfcn.benchmark forward    # CSFCN and CSFCN-Tiny, eval forward, 512x1024
    python -m jax_csfcn.benchmark all --json out.json

Each variant is warmed up (compilation excluded) and timed ``--repeats`` times in turn,
interleaved so that machine noise hits all variants alike; medians and the spread
(min..max) are reported.  Performance is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx


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
    return {
        name: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "runs": len(t)}
        for name, t in times.items()
    }


def bench_grid_sample(repeats: int) -> dict:
    """SFC sampling shape: batch 2 x 2 groups, 64 channels, 128x256, offsets of a few px."""
    from jax_csfcn.ops import grid_sample

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
    from convert import flax_to_torch, model_flat
    from jax_csfcn.model import build_model
    from torch_deploy.model import CSFCN as TorchCSFCN

    model = build_model({"variant": variant}, seed=0)
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


def environment() -> dict:
    return {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jax_csfcn.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["ops", "forward", "all"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    results = {"environment": environment()}
    if args.what in ("ops", "all"):
        results["grid_sample (4x64x128x256)"] = bench_grid_sample(args.repeats)
    if args.what in ("forward", "all"):
        results["forward"] = {}
        for variant in ("csfcn", "csfcn_tiny"):
            results["forward"].update(bench_forward(args.repeats, variant=variant))
    for section, rows in results.items():
        if section == "environment":
            print(json.dumps(rows))
            continue
        print(f"\n{section}")
        print(f"  {'variant':<36}{'median ms':>11}{'min..max ms':>18}")
        for name, r in rows.items():
            print(f"  {name:<36}{r['median_ms']:>11.2f}{r['min_ms']:>9.2f}..{r['max_ms']:<8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
