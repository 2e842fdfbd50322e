"""Cityscapes from tensorflow-datasets (builder ``cityscapes``) as a random-access grain data source.

The command line is ``python -m tools.tfds_prepare`` (tools/tfds_prepare.py).

For users who keep their data in TFDS.  The dataset must have been prepared in the
``array_record`` file format (random access); TFDS builds it from the two official zips,
``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``, placed in a manual folder::

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

import importlib
import io
import os

import numpy as np
from PIL import Image

from jax_csfcn.data.cityscapes import DataError, label_id_to_train_id, valid_label_ids

BUILDER = "cityscapes"
DEFAULT_CONFIG = "semantic_segmentation"
SPLIT_ALIASES = {"val": "validation"}
IMAGE_KEY, LABEL_KEY, ID_KEY = "image_left", "segmentation_label", "image_id"

_LUT = label_id_to_train_id()
_VALID = valid_label_ids()


def _import(module: str, package: str, why: str):
    """Import ``module`` or fail with the pip command that fixes it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{why} needs the {package!r} package, which cannot be imported ({e}); `pip install {package}`"
        ) from e


def _tfds(why: str = "reading Cityscapes from TFDS"):
    return _import("tensorflow_datasets", "tensorflow-datasets", why)


class TfdsCityscapesSource:
    """``grain`` RandomAccessDataSource over one split of the TFDS ``cityscapes`` dataset.

    Pickles as its arguments; each process re-opens the array_record files on first access.
    """

    def __init__(self, split: str, data_dir=None, builder_config: str = DEFAULT_CONFIG):
        self.split = SPLIT_ALIASES.get(str(split), str(split))
        self.builder_config = str(builder_config)
        self._data_dir_arg = None if data_dir is None else os.path.expanduser(os.fspath(data_dir))
        ds = self._open()
        self._n = len(ds)
        if self._n == 0:
            raise DataError(f"split {self.split!r} of TFDS {self._name} in {self.root} is empty")
        self._ds = ds

    @property
    def _name(self) -> str:
        return f"{BUILDER}/{self.builder_config}"

    def _open(self):
        """The TFDS data source, with all checks that give a clear message."""
        tfds = _tfds()
        _import("array_record", "array-record", "random access to TFDS datasets (array_record files)")
        try:
            builder = tfds.builder(self._name, data_dir=self._data_dir_arg)
        except Exception as e:
            raise DataError(
                f"cannot build the TFDS builder {self._name!r}: {type(e).__name__}: {e}. The configs with labels "
                f"are 'semantic_segmentation' (gtFine) and 'semantic_segmentation_extra' (gtCoarse)"
            ) from e
        self.root = os.fspath(builder.data_dir)
        if not builder.builder_config.segmentation_labels:
            raise DataError(
                f"TFDS config {self._name!r} has no segmentation labels; use 'semantic_segmentation' (gtFine) "
                "or 'semantic_segmentation_extra' (gtCoarse)"
            )
        if not builder.is_prepared():
            raise DataError(
                f"TFDS {self._name} is not prepared in {self.root}. Put leftImg8bit_trainvaltest.zip and "
                "gtFine_trainvaltest.zip in a folder and run `python -m tools.tfds_prepare "
                f"--manual-dir FOLDER --data-dir {self._data_dir_arg or '<tfds default>'} --config {self.builder_config}` "
                "(needs tensorflow-cpu), or pass the data_dir where it was prepared"
            )
        formats = {f.value for f in builder.info.available_file_formats()}
        if "array_record" not in formats:
            raise DataError(
                f"TFDS {self._name} in {self.root} was prepared as {sorted(formats)}, which has no random access; "
                "prepare it again with file_format='array_record' (into another data_dir, or after deleting this one)"
            )
        split_names = list(builder.info.splits)
        base = self.split.split("[", 1)[0]
        if base not in split_names:
            raise DataError(
                f"TFDS {self._name} in {self.root} has no split {base!r}; splits: {split_names} (and 'val' = 'validation')"
            )
        skip = tfds.decode.SkipDecoding()  # raw PNG bytes: decoded below with PIL, errors name the record
        try:
            return builder.as_data_source(
                split=self.split, decoders={IMAGE_KEY: skip, LABEL_KEY: skip}, file_format="array_record"
            )
        except Exception as e:
            raise DataError(f"cannot open split {self.split!r} of TFDS {self._name} in {self.root}: {e}") from e

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:  # grain uses the repr to check a restored loader state matches
        return f"TfdsCityscapesSource(root={self.root!r}, split={self.split!r}, n={self._n})"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_ds"] = None  # re-opened lazily in the worker process
        return state

    def __getitem__(self, index) -> dict:
        index = int(index)  # grain may pass numpy integers
        if not -self._n <= index < self._n:
            raise IndexError(f"index {index} out of range for {self!r}")
        index %= self._n
        if self._ds is None:
            self._ds = self._open()
        where = f"record {index} of TFDS {self._name} split {self.split!r} in {self.root}"
        try:
            ex = self._ds[index]
        except Exception as e:
            raise DataError(f"cannot read {where}: {type(e).__name__}: {e}") from e
        name = ex[ID_KEY].decode() if isinstance(ex[ID_KEY], bytes) else str(ex[ID_KEY])
        where = f"{where} ({name})"
        img = _decode_png(ex[IMAGE_KEY], f"image of {where}")
        lab = _decode_png(ex[LABEL_KEY], f"label of {where}")
        if img.mode != "RGB":
            raise DataError(f"image of {where} has mode {img.mode!r}, expected 'RGB'")
        if img.size != lab.size:
            raise DataError(
                f"image of {where} is {img.size[0]}x{img.size[1]} (WxH) but its label is {lab.size[0]}x{lab.size[1]}"
            )
        return {"image": np.asarray(img, np.uint8), "label": _train_ids(lab, where), "name": name}


def _decode_png(data: bytes, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im
    except Exception as e:
        raise DataError(
            f"cannot decode the {what}: {type(e).__name__}: {e}. Prepare the dataset again from intact zips."
        ) from e


def _train_ids(lab: Image.Image, where: str) -> np.ndarray:
    if lab.mode not in ("L", "P"):
        raise DataError(f"label of {where} has mode {lab.mode!r}; expected a single-channel 8-bit labelIds PNG")
    ids = np.asarray(lab, np.uint8)
    bad = ~_VALID[ids]
    if bad.any():
        raise DataError(
            f"label of {where} contains ids {np.unique(ids[bad]).tolist()[:10]} that are not in the Cityscapes label "
            f"table (valid labelIds: 0..{int(np.flatnonzero(_VALID).max())}); the zip must hold *_labelIds.png files"
        )
    return _LUT[ids]


def prepare(manual_dir, data_dir=None, builder_config: str = DEFAULT_CONFIG, download_dir=None) -> str:
    """Build TFDS ``cityscapes/{builder_config}`` in array_record format from the zips in ``manual_dir``.

    Returns the prepared dataset's directory.  Runs the real TFDS builder, which needs TensorFlow.
    """
    manual_dir = os.path.expanduser(os.fspath(manual_dir))
    tfds = _tfds("preparing TFDS cityscapes")
    _import("array_record", "array-record", "writing TFDS array_record files")
    builder = tfds.builder(
        f"{BUILDER}/{builder_config}", data_dir=None if data_dir is None else os.path.expanduser(os.fspath(data_dir))
    )
    # The builder's own table of the zips it reads (``CityscapesConfig.zip_root``): {feature: (zip, root)}.
    for zip_name, _ in getattr(builder.builder_config, "zip_root", {}).values():
        if not os.path.isfile(os.path.join(manual_dir, zip_name)):
            raise DataError(
                f"{os.path.join(manual_dir, zip_name)} is missing; TFDS {BUILDER}/{builder_config} is built from it. "
                f"Download it from https://www.cityscapes-dataset.com and put it in {manual_dir}"
            )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's start-up banner is noise here
    _import("tensorflow", "tensorflow-cpu", "preparing TFDS cityscapes (the TFDS builder uses tf.io.gfile)")
    builder.download_and_prepare(
        download_dir=None if download_dir is None else os.fspath(download_dir),
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
        file_format="array_record",
    )
    return os.fspath(builder.data_dir)
