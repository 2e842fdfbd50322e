"""TfdsCityscapesSource, for real: the actual TFDS ``cityscapes`` builder prepares synthetic zips.

The synthetic scenes are written in the Cityscapes folder layout, zipped as the official
``leftImg8bit_trainvaltest.zip`` / ``gtFine_trainvaltest.zip`` (top folders ``leftImg8bit/``
and ``gtFine/``, then ``{split}/{city}/``), and prepared by the TFDS builder in array_record
format in a subprocess (``python -m tools.tfds_prepare``): TensorFlow, which the
builder needs, stays out of the test process.  The items read back must equal the folder
source's items for the same files.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import grain
import numpy as np
import pytest
from PIL import Image

from jax_csfcn.data import sources
from jax_csfcn.data.cityscapes import CityscapesSource, DataError
from jax_csfcn.data.synthetic import write_synthetic_cityscapes
from jax_csfcn.data.tfds_cityscapes import TfdsCityscapesSource, _decode_png, _train_ids, prepare

SPLITS = {"train": 3, "val": 2, "test": 1}


def _zip_layout(root, manual_dir):
    """The official zips: every file under leftImg8bit/ (gtFine/) stored with that top folder."""
    manual_dir.mkdir(parents=True, exist_ok=True)
    for top, zip_name in (("leftImg8bit", "leftImg8bit_trainvaltest.zip"), ("gtFine", "gtFine_trainvaltest.zip")):
        with zipfile.ZipFile(manual_dir / zip_name, "w") as z:
            for p in sorted((root / top).rglob("*.png")):
                z.write(p, p.relative_to(root).as_posix())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(folder root, TFDS data_dir, manual_dir): synthetic Cityscapes, zipped, prepared by the real TFDS builder."""
    base = tmp_path_factory.mktemp("tfds")
    root, manual, data_dir = base / "cityscapes", base / "manual", base / "tfds"
    write_synthetic_cityscapes(root, splits=SPLITS, size=(32, 64), progress=False)
    _zip_layout(root, manual)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "tools.tfds_prepare", "--manual-dir", str(manual)]
    cmd += ["--data-dir", str(data_dir), "--download-dir", str(base / "downloads")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = data_dir / "cityscapes" / "semantic_segmentation" / "1.0.0"
    assert f"prepared TFDS cityscapes/semantic_segmentation in {out}" in proc.stdout
    assert list(out.glob("cityscapes-train.array_record-*")), sorted(p.name for p in out.iterdir())
    return root, data_dir, manual


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_items_equal_the_folder_source(prepared, split):
    root, data_dir, _ = prepared
    src = TfdsCityscapesSource(split, data_dir=data_dir)
    ref = CityscapesSource(root, split)
    assert len(src) == len(ref) == SPLITS[split]
    want = {ref.name(i): ref[i] for i in range(len(ref))}
    got = {}
    for i in range(len(src)):
        item = src[i]
        assert set(item) == {"image", "label", "name"} and isinstance(item["name"], str)
        assert item["image"].dtype == np.uint8 and item["image"].shape == (32, 64, 3)
        assert item["label"].dtype == np.uint8 and item["label"].shape == (32, 64)
        got[item["name"]] = item
    assert sorted(got) == sorted(want)  # TFDS shuffles the order, not the content
    for name, item in got.items():
        np.testing.assert_array_equal(item["image"], want[name]["image"])
        np.testing.assert_array_equal(item["label"], want[name]["label"])
    assert src[-1]["name"] == src[len(src) - 1]["name"]
    with pytest.raises(IndexError):
        src[len(src)]


def test_repr_pickle_grain_and_no_tensorflow(prepared):
    _, data_dir, _ = prepared
    src = TfdsCityscapesSource("val", data_dir=str(data_dir))
    root = str(data_dir / "cityscapes" / "semantic_segmentation" / "1.0.0")
    assert repr(src) == f"TfdsCityscapesSource(root={root!r}, split='validation', n=2)"
    blob = pickle.dumps(src)
    assert len(blob) < 2000  # arguments only: the reader is re-opened in the worker
    clone = pickle.loads(blob)
    assert repr(clone) == repr(src)
    np.testing.assert_array_equal(clone[1]["label"], src[1]["label"])
    ds = grain.MapDataset.source(src).shuffle(seed=1).map(lambda it: it["name"])
    assert sorted(ds[i] for i in range(len(ds))) == sorted(src[i]["name"] for i in range(2))
    assert "tensorflow" not in sys.modules  # reading never imports TF
    sub = TfdsCityscapesSource("train[:2]", data_dir=data_dir)
    assert len(sub) == 2
    built = sources.build_source("tfds_cityscapes", str(data_dir), "test")
    assert isinstance(built, TfdsCityscapesSource) and len(built) == 1


def test_errors(prepared, tmp_path):
    _, data_dir, _ = prepared
    with pytest.raises(DataError, match=r"no split 'bogus'.*\['train', 'validation', 'test'\]"):
        TfdsCityscapesSource("bogus", data_dir=data_dir)
    with pytest.raises(DataError, match=r"not prepared in .*empty.*--manual-dir"):
        TfdsCityscapesSource("train", data_dir=tmp_path / "empty")
    with pytest.raises(DataError, match="has no segmentation labels"):
        TfdsCityscapesSource("train", data_dir=data_dir, builder_config="stereo_disparity")
    with pytest.raises(DataError, match="cannot build the TFDS builder 'cityscapes/nonsense'"):
        TfdsCityscapesSource("train", data_dir=data_dir, builder_config="nonsense")
    (tmp_path / "manual").mkdir()
    with pytest.raises(DataError, match=r"leftImg8bit_trainvaltest\.zip is missing"):
        prepare(tmp_path / "manual", tmp_path / "tfds")


def test_missing_packages_name_the_pip_package(prepared, monkeypatch):
    _, data_dir, manual = prepared
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    with pytest.raises(ImportError, match="pip install tensorflow-cpu"):
        prepare(manual, data_dir)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
        TfdsCityscapesSource("train", data_dir=data_dir)


def test_tfrecord_preparation_is_refused(prepared, tmp_path):
    """A dataset prepared in the default tfrecord format has no random access: say how to fix it."""
    _, data_dir, _ = prepared
    shutil.copytree(data_dir / "cityscapes", tmp_path / "cityscapes")
    info = tmp_path / "cityscapes" / "semantic_segmentation" / "1.0.0" / "dataset_info.json"
    meta = json.loads(info.read_text())
    meta["fileFormat"] = "tfrecord"
    info.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"prepared as \['tfrecord'\].*file_format='array_record'"):
        TfdsCityscapesSource("train", data_dir=tmp_path)


def test_bad_records_name_the_record():
    where = "record 3 of TFDS cityscapes/semantic_segmentation split 'train' in /d (bonn_000001_000019)"
    ids = np.full((4, 5), 7, np.uint8)  # road
    ids[0, :2] = [200, 34]
    with pytest.raises(DataError, match=r"label of record 3 .*bonn_000001_000019.* contains ids \[34, 200\]"):
        _train_ids(Image.fromarray(ids), where)
    ids[0, :2] = 7
    np.testing.assert_array_equal(_train_ids(Image.fromarray(ids), where), np.zeros((4, 5), np.uint8))
    with pytest.raises(DataError, match="has mode 'RGB'"):
        _train_ids(Image.fromarray(np.zeros((4, 5, 3), np.uint8)), where)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(buf, format="PNG")
    with pytest.raises(DataError, match=r"cannot decode the image of record 3 .*bonn_000001_000019"):
        _decode_png(buf.getvalue()[:60], f"image of {where}")
