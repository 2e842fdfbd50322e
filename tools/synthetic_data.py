"""Write the synthetic street scenes in the Cityscapes folder layout.

    python -m tools.synthetic_data --root /tmp/synth --train 40 --val 10 --size 256 512

How it works: :mod:`jax_csfcn.data.synthetic` (jax_csfcn/data/synthetic.py).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from jax_csfcn.data.synthetic import (
    write_synthetic_cityscapes,
)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m tools.synthetic_data", description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="output directory (created if missing)")
    ap.add_argument("--train", type=int, default=40, help="number of train images")
    ap.add_argument("--val", type=int, default=10, help="number of val images")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"), help="image size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--overwrite", action="store_true", help="replace a dataset already at --root")
    args = ap.parse_args(argv)
    if args.train < 0 or args.val < 0 or args.train + args.val < 1:
        ap.error(f"--train {args.train} --val {args.val}: counts must be >= 0, with at least one image")
    if min(args.size) < 32:
        ap.error(f"--size {args.size[0]} {args.size[1]}: both sides must be >= 32 (the network's 1/32 map)")
    root = Path(args.root)
    if root.exists() and not root.is_dir():
        ap.error(f"--root {root}: is a file; give a folder for the dataset")
    written = [root / sub for sub in ("leftImg8bit", "gtFine") if (root / sub).exists()]
    if written and not args.overwrite:
        ap.error(
            f"--root {root} already holds a dataset ({', '.join(p.name for p in written)}); writing into it "
            "would mix two datasets. Pass --overwrite to replace it, or choose another --root"
        )
    for p in written:  # --overwrite: the old images go first, so no file of the old set survives
        shutil.rmtree(p)
    counts = write_synthetic_cityscapes(
        args.root,
        splits={"train": args.train, "val": args.val},
        size=tuple(args.size),
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(f"wrote {counts} at {args.size[0]}x{args.size[1]} to {args.root}")
    return counts


if __name__ == "__main__":
    main()
