"""Run the official Cityscapes evaluator (cityscapesscripts) on a folder of label-id PNGs.

    python -m tools.official_eval --cityscapes data/cityscapes --results val_label_ids [--split val]

How it works: :mod:`jax_csfcn.official_eval` (jax_csfcn/official_eval.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from csfcn.cli import DEBUG_HELP, report_errors
from csfcn.palette import write_atomic
from jax_csfcn.official_eval import ResultsError, evaluate_folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.official_eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cityscapes", required=True, help="dataset root (holds gtFine/)")
    ap.add_argument("--results", required=True, help="folder of label-id PNG predictions")
    ap.add_argument("--split", default="val", help="ground-truth split (default val)")
    ap.add_argument("--json", default=None, help="also write the scores as JSON to this file")
    ap.add_argument("--quiet", action="store_true", help="print only the mean IoU")
    ap.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = ap.parse_args(argv)
    return report_errors(lambda: _evaluate(args), (FileNotFoundError, ResultsError), debug=args.debug)  # csfcn/cli.py


def _evaluate(args) -> None:
    res = evaluate_folder(args.cityscapes, args.results, args.split, quiet=args.quiet)
    summary = {
        "miou": res["averageScoreClasses"],
        "category_miou": res["averageScoreCategories"],
        "iou": res["classScores"],
    }
    print(f"official Cityscapes evaluator: mIoU {summary['miou']:.4f}, category mIoU {summary['category_miou']:.4f}")
    if args.json:
        write_atomic(args.json, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))


if __name__ == "__main__":
    sys.exit(main())
