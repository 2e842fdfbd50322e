"""Print the roofline floors of the kernels and the benchmark's variants on a datasheet GPU.

    python -m tools.roofline --gpu h200                 # predicted floors, benchmark sizes
    python -m tools.roofline --gpu a100 --size 1024 2048 --precision fp32

How it works: :mod:`torch_deploy.roofline` (torch_deploy/roofline.py).
"""

from __future__ import annotations

import argparse
import sys

from csfcn.tables import markdown_table
from torch_deploy.roofline import (
    DATASHEET,
    DEFAULT_SIZES,
    prediction_rows,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.roofline",
        description="Roofline floors of CSFCN and its Triton kernels on a datasheet GPU (no GPU needed).",
    )
    p.add_argument("--gpu", default="h200", choices=sorted(DATASHEET), help="datasheet ceilings (default h200)")
    p.add_argument("--size", nargs=2, type=int, action="append", metavar=("H", "W"), help="input size; repeatable")
    p.add_argument("--precision", default="fp16", choices=("fp16", "bf16", "fp32"), help="precision of (b), (d), (e)")
    p.add_argument("--classes", type=int, default=19, help="number of classes K")
    args = p.parse_args(argv)
    for h, w in args.size or []:
        if h < 32 or w < 32:
            p.error(f"--size {h} {w}: both sides must be >= 32")
    ceil = DATASHEET[args.gpu]
    sizes = [tuple(s) for s in args.size] if args.size else DEFAULT_SIZES
    print(
        f"{ceil.name} ({ceil.source}): {ceil.bandwidth_gbps:.0f} GB/s, {ceil.tensor_tflops:.0f} TFLOP/s fp16/bf16 "
        f"tensor, {ceil.fp32_tflops:.1f} TFLOP/s fp32; batch 1, K={args.classes}; floor = sum over ops of "
        "max(bytes / bandwidth, FLOPs / rate)"
    )
    rows = prediction_rows(ceil, sizes, args.precision, args.classes)
    print(markdown_table(["size", "what", "MB moved", "GFLOP", "floor us", "FPS ceiling"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
