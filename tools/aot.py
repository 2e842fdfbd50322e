"""The ahead-of-time compile gate: every Triton launch of the fast path, traced from the models and
compiled for sm_80 and sm_90 without a GPU.

    python -m tools.aot                       # table for sm_80 and sm_90, exit 1 if a check fails
    python -m tools.aot --json aot.json --size 512 1536

How it works: :mod:`kernels.aot` (kernels/aot.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import torch

from csfcn.model_config import ModelConfig
from kernels._common import Launch, gpu_launch_config, record_launches
from kernels.aot import (
    DEFAULT_SIZES,
    OUTPUTS,
    PRECISIONS,
    VARIANTS,
    CudnnLayouts,
    Result,
    cases_text,
    compile_all,
    plan,
    ptxas_version,
    table,
)
from torch_deploy.model import build_twin
from torch_deploy.optimize import optimize_on_meta


def record_model_launches(
    sizes=DEFAULT_SIZES, precisions=PRECISIONS, outputs=OUTPUTS, variants=VARIANTS, classes: int = 19, batch: int = 1
) -> list[tuple[str, Launch]]:
    """(case label, launch) for every kernel launch of ``optimize``'s model over the grid of cases,
    traced on the ``meta`` device with the GPU launch configuration."""
    out = []
    for variant in variants:
        with torch.device("meta"):
            twin = build_twin(ModelConfig(name=variant, num_classes=classes)).eval()
        for precision in precisions:
            for output in outputs:
                fast = optimize_on_meta(twin, precision, output)
                for h, w in sizes:
                    x = torch.empty(batch, 3, h, w, device="meta")
                    with record_launches() as launches, gpu_launch_config(), CudnnLayouts():
                        fast(x)
                    label = f"{variant} {precision} {output} {h}x{w}"
                    out.extend((label, ln) for ln in launches)
    return out


def run_gate(sizes=DEFAULT_SIZES, variants=VARIANTS, classes=19, workers=None, progress=True) -> list[Result]:
    recorded = record_model_launches(sizes=sizes, variants=variants, classes=classes)
    jobs = plan(recorded)
    return compile_all(jobs, workers=workers, progress=progress)


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tools.aot",
        description=__doc__.split("\n\n")[0],
        epilog="Exit status 1 when any kernel fails to compile, exceeds shared memory, or spills.",
    )
    p.add_argument(
        "--size",
        nargs=2,
        type=int,
        action="append",
        metavar=("H", "W"),
        help="input size to trace; repeat for several (default: 1024 2048 and 712 1304)",
    )
    p.add_argument("--variant", choices=VARIANTS, action="append", help="model (default: all of them)")
    p.add_argument("--classes", type=int, default=19, help="number of classes K (default 19)")
    p.add_argument("--workers", type=int, default=None, help="compile processes (default: one per core)")
    p.add_argument("--json", metavar="PATH", help="also write every result as JSON to PATH")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for h, w in args.size or []:
        if h < 32 or w < 32:
            p.error(f"--size {h} {w}: both sides must be >= 32 (the model's 1/32 map must exist)")
    if args.classes < 1:
        p.error("--classes must be >= 1")
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        argv = sys.argv[1:] if argv is None else list(argv)
        return subprocess.call([sys.executable, "-m", "tools.aot", *argv], env=env)
    sizes = tuple(tuple(s) for s in args.size) if args.size else DEFAULT_SIZES
    variants = tuple(args.variant) if args.variant else VARIANTS
    import triton

    t0 = time.perf_counter()
    results = run_gate(sizes, variants, args.classes, args.workers, progress=not args.no_progress)
    print(
        f"Triton {triton.__version__}, ptxas {ptxas_version()} (Triton's own); traced sizes "
        f"{', '.join(f'{h}x{w}' for h, w in sizes)}, {', '.join(variants)}, K={args.classes}, fp32/fp16/bf16 x "
        f"logits/labels; {len(results)} compiles in {time.perf_counter() - t0:.0f} s"
    )
    print(table(results))
    bad = [(r, p) for r in results for p in r.problems]
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{**dataclasses.asdict(r), "problems": r.problems} for r in results], f, indent=2)
    for r, prob in bad:
        print(f"FAIL {r.name} {r.target} [{r.config}] ({cases_text(r.cases)}): {prob}")
    print(f"{len(results) - len({id(r) for r, _ in bad})}/{len(results)} compiled kernels pass")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
