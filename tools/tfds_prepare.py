"""Prepare Cityscapes as a TFDS dataset (array_record files) from the two official zips.

    python -m tools.tfds_prepare --manual-dir ~/Downloads/cityscapes --data-dir ~/tensorflow_datasets

How it works: :mod:`jax_csfcn.data.tfds_cityscapes` (jax_csfcn/data/tfds_cityscapes.py).
"""

from __future__ import annotations

import argparse

from csfcn.extras import require
from jax_csfcn.data.tfds_cityscapes import (
    BUILDER,
    DEFAULT_CONFIG,
    prepare,
)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(
        prog="python -m tools.tfds_prepare",
        description="Prepare TFDS cityscapes in array_record format (random access) from the official zips.",
    )
    ap.add_argument(
        "--manual-dir", required=True, help="folder with leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip"
    )
    ap.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS's, ~/tensorflow_datasets)")
    ap.add_argument("--download-dir", default=None, help="where TFDS extracts the zips (default: data_dir/downloads)")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="builder config (default: %(default)s)")
    args = ap.parse_args(argv)
    require("tfds", "python -m tools.tfds_prepare", cli=__name__ == "__main__")
    out = prepare(args.manual_dir, args.data_dir, args.config, args.download_dir)
    print(f"prepared TFDS {BUILDER}/{args.config} in {out}")
    return out


if __name__ == "__main__":
    main()
