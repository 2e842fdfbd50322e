"""Cityscapes from tensorflow-datasets (builder ``cityscapes``) as a random-access grain data source.

For users who keep their data in TFDS.  The dataset must have been prepared in the
``array_record`` file format (random access); TFDS builds it from the two official zips,
``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``, placed in a manual folder::

    python -m tools.tfds_prepare --manual-dir ~/Downloads/cityscapes --data-dir ~/tensorflow_datasets

(or ``tfds build cityscapes/semantic_segmentation --manual_dir ... --file_format array_record``).
Preparing runs the TFDS builder, which needs TensorFlow (``pip install tensorflow-cpu``);
reading needs only ``tensorflow-datasets`` and ``array-record``, and never imports TensorFlow.

    src = TfdsCityscapesSource("train", data_dir="~/tensorflow_datasets")
    item = src[0]   # {"image": uint8 HxWx3, "label": uint8 HxW train ids (255 = ignore), "name": image_id}

Split names are TFDS's (``train``, ``validation``, ``test``, slices such as ``train[:10%]``);
``val`` is accepted for ``validation``.  The stored labels are Cityscapes labelIds; they are
mapped to the 19 train ids with :func:`jax_csfcn.data.cityscapes.label_id_to_train_id`, exactly
as the folder source does.  The PNG bytes stored by TFDS are those of the original files and
are decoded here with PIL, so items equal :class:`~jax_csfcn.data.cityscapes.CityscapesSource`'s.

``tensorflow_datasets`` is imported only when a source is built, never at package import.
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
