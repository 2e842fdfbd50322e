"""Prepare a dataset once for fast training: decode it into ArrayRecord shards read by grain.

    python -m tools.prepare --dataset cityscapes --root /data/cityscapes --out /data/cityscapes_prepared
    python -m tools.train --config configs/cityscapes.py \\
        --config.data.dataset=prepared --config.data.root=/data/cityscapes_prepared

Any source the trainer reads (cityscapes, camvid, folder, synthetic, tfds_cityscapes) can be
prepared; its errors (corrupt images, labels outside the table, missing splits) are reported as
they would be in training, with the file named. The result is verified after writing (record
counts, every record's CRC-32); ``--verify-only`` checks an existing one. A killed run resumes
where it stopped when started again with the same arguments.

The format and its design: jax_csfcn/data/prepared.py.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from csfcn.cli import DEBUG_HELP
from csfcn.extras import require

require("train", "python -m tools.prepare", cli=__name__ == "__main__")  # grain and array_record

from jax_csfcn.cli import one_line_errors  # noqa: E402
from jax_csfcn.data import prepared  # noqa: E402
from jax_csfcn.data.sources import DATASETS, build_source, family  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m tools.prepare",
        description=__doc__.split("\n\n")[0],
        epilog="Then train with --config.data.dataset=prepared --config.data.root=OUT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sources = [d for d in DATASETS if d != "prepared"]
    ap.add_argument("--dataset", choices=sources, help="the source dataset's kind")
    ap.add_argument("--root", help="the source dataset's folder (tfds_cityscapes: the TFDS data_dir)")
    ap.add_argument("--classes", help="folder datasets: the class table (default ROOT/classes.json)")
    ap.add_argument("--splits", nargs="+", default=["train", "val"], help="splits to prepare")
    ap.add_argument("--out", required=True, help="the prepared dataset's folder (created)")
    ap.add_argument("--encoding", choices=sorted(prepared.ENCODINGS), default=prepared.DEFAULT_ENCODING,
                    help="the shards' chunk compression (BENCHMARKS.md, the prepared format)")  # fmt: skip
    ap.add_argument("--records-per-shard", type=int, default=64, help="examples per shard file")
    ap.add_argument("--overwrite", action="store_true", help="replace a prepared dataset (or unfinished one) at --out")
    ap.add_argument("--no-verify", action="store_true", help="skip reading everything back after writing")
    ap.add_argument("--verify-only", action="store_true", help="only verify the prepared dataset at --out")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = ap.parse_args(argv)
    return one_line_errors(lambda: _run(args, ap), debug=args.debug)


def _run(args, ap) -> dict:
    out = Path(args.out)
    progress = not args.no_progress
    if args.verify_only:
        counts = prepared.verify(out, progress=progress)
        print(f"{out}: verified {counts}")
        return {"verified": counts}
    if args.dataset is None:
        ap.error("--dataset is required (unless --verify-only)")
    if args.records_per_shard < 1:
        ap.error(f"--records-per-shard {args.records_per_shard}: must be >= 1")
    if out.exists() and not out.is_dir():
        ap.error(f"--out {out}: is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if args.overwrite:
            shutil.rmtree(out)
        elif not ((out / prepared.MANIFEST).is_file() or (out / prepared.PROGRESS).is_dir()):
            ap.error(f"--out {out} is a folder that holds other files; choose an empty or new folder")
    root = args.root or None
    srcs = {split: build_source(args.dataset, root, split, args.classes) for split in args.splits}
    origin = {"dataset": family(args.dataset, root), "root": str(Path(root).absolute()) if root else None}
    table = None
    if origin["dataset"] == "folder":
        from jax_csfcn.data.folder import table_path

        table = table_path(root, args.classes)
    manifest = prepared.prepare(
        srcs,
        out,
        origin=origin,
        encoding=args.encoding,
        records_per_shard=args.records_per_shard,
        table_file=table,
        progress=progress,
    )
    counts = {s: e["records"] for s, e in manifest["splits"].items()}
    print(f"{out}: {counts} records ({manifest['encoding']}), from {args.dataset} {root or ''}".rstrip())
    if not args.no_verify:
        prepared.verify(out, progress=progress)
        print(f"{out}: verified")
    return {"manifest": manifest}


if __name__ == "__main__":
    main()
