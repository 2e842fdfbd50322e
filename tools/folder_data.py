"""Check a folder dataset (every file read, per-class pixel counts), or write a small example of
one.



How it works: :mod:`jax_csfcn.data.folder` (jax_csfcn/data/folder.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from csfcn.class_table import TABLE_NAME
from csfcn.cli import DEBUG_HELP, report_errors
from jax_csfcn.data.cityscapes import DataError
from jax_csfcn.data.folder import (
    EXAMPLE_CLASSES,
    IMAGE_DIR,
    LIST_SUFFIX,
    FolderSource,
    format_survey,
    list_splits,
    read_table,
    survey,
    write_synthetic_folder,
)


def main(argv=None) -> int:

    ap = argparse.ArgumentParser(
        prog="python -m tools.folder_data",
        description="Check a folder dataset (your own images, masks and classes.json) before training: every "
        "image and mask is read and mapped through the class table, and each class's pixels are counted. "
        "With --write-example, write a small example dataset in this layout instead.",
        epilog="\n\n".join(__doc__.split("\n\n")[1:3]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("root", help="the dataset folder")
    ap.add_argument("--split", action="append", help="split(s) to check (default: every split found)")
    ap.add_argument("--classes", default=None, help="the class table (default: ROOT/classes.json)")
    ap.add_argument("--write-example", action="store_true", help="write the synthetic example dataset into ROOT")
    ap.add_argument("--train", type=int, default=16, help="--write-example: train images")
    ap.add_argument("--val", type=int, default=4, help="--write-example: val images")
    ap.add_argument("--size", type=int, nargs=2, default=(192, 256), metavar=("H", "W"), help="--write-example size")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = ap.parse_args(argv)
    root = Path(args.root)

    def run() -> None:
        if args.write_example:
            if root.exists() and any(root.iterdir()):
                raise DataError(f"{root} exists and is not empty; --write-example writes into a new folder")
            if min(args.size) < 32 or args.train < 1 or args.val < 0:
                raise DataError("--write-example needs --size >= 32 32, --train >= 1 and --val >= 0")
            splits = {"train": args.train, "val": args.val} if args.val else {"train": args.train}
            write_synthetic_folder(root, splits=splits, size=tuple(args.size), progress=not args.no_progress)
            print(f"wrote {root}: {TABLE_NAME} ({len(EXAMPLE_CLASSES)} classes, colour masks), {splits}")
            return
        splits = args.split or sorted(
            set(list_splits(root))
            | ({p.name for p in (root / IMAGE_DIR).iterdir() if p.is_dir()} if (root / IMAGE_DIR).is_dir() else set())
        )
        if not splits:
            raise DataError(
                f"{root}: no splits found (neither {IMAGE_DIR}/SPLIT/ folders nor SPLIT{LIST_SUFFIX} lists)"
            )
        table = read_table(root, args.classes)
        print(f"{table.source}: {table.num_classes} classes, {table.mask} masks")
        for split in splits:
            print(format_survey(survey(FolderSource(root, split, args.classes), progress=not args.no_progress)))

    return report_errors(run, (DataError, OSError), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
