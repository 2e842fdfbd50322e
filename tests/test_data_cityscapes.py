"""CityscapesSource: reads the layout back, maps labelIds to train ids, fails loudly, works in grain."""

from __future__ import annotations

import pickle
import shutil

import grain
import grain.python as pygrain
import numpy as np
import pytest
from cityscapesscripts.helpers.labels import name2label
from PIL import Image

from jax_csfcn.data.cityscapes import (
    CLASS_NAMES,
    IGNORE_INDEX,
    NUM_CLASSES,
    CityscapesSource,
    DataError,
    label_id_to_train_id,
)
from jax_csfcn.data.synthetic import write_synthetic_cityscapes


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """20 train / 4 val synthetic scenes at 128x256, shared (read-only) by this module."""
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_cityscapes(root, splits={"train": 20, "val": 4}, size=(128, 256), progress=False)
    return root


@pytest.fixture
def tiny(tmp_path):
    """A private 2-image dataset that a test may break; returns (root, image path, label path)."""
    write_synthetic_cityscapes(tmp_path, splits={"train": 2}, size=(32, 64), progress=False)
    img = sorted((tmp_path / "leftImg8bit" / "train").rglob("*.png"))[0]
    lab = tmp_path / "gtFine" / "train" / img.parent.name / img.name.replace("_leftImg8bit", "_gtFine_labelIds")
    return tmp_path, img, lab


def test_lookup_table_follows_the_official_table():
    lut = label_id_to_train_id()
    assert lut.shape == (256,) and lut.dtype == np.uint8
    for name, train_id in [
        ("road", 0),
        ("sky", 10),
        ("car", 13),
        ("bicycle", 18),
        ("unlabeled", 255),
        ("ego vehicle", 255),
        ("parking", 255),
    ]:
        assert lut[name2label[name].id] == train_id, name
    assert (lut[[7, 23, 26, 0]] == [0, 10, 13, 255]).all()
    assert (lut[34:] == IGNORE_INDEX).all()
    assert sorted(lut[lut != IGNORE_INDEX].tolist()) == list(range(NUM_CLASSES))
    assert CLASS_NAMES[0] == "road" and CLASS_NAMES[-1] == "bicycle" and len(CLASS_NAMES) == 19


def test_reads_the_synthetic_split_back(synth):
    src = CityscapesSource(synth, "train")
    assert len(src) == 20 and len(CityscapesSource(synth, "val")) == 4
    assert "train" in repr(src) and "n=20" in repr(src)
    seen = set()
    for i in range(len(src)):
        item = src[i]
        assert set(item) == {"image", "label", "name"}
        assert item["image"].shape == (128, 256, 3) and item["image"].dtype == np.uint8
        assert item["label"].shape == (128, 256) and item["label"].dtype == np.uint8
        city = item["name"].split("_")[0]
        raw = np.asarray(Image.open(synth / "gtFine" / "train" / city / f"{item['name']}_gtFine_labelIds.png"))
        raw_img = np.asarray(Image.open(synth / "leftImg8bit" / "train" / city / f"{item['name']}_leftImg8bit.png"))
        np.testing.assert_array_equal(item["image"], raw_img)
        for label_id, train_id in [(7, 0), (23, 10), (26, 13), (0, 255), (1, 255)]:
            assert (item["label"][raw == label_id] == train_id).all(), (label_id, item["name"])
        np.testing.assert_array_equal(item["label"], label_id_to_train_id()[raw])
        seen |= set(np.unique(item["label"]).tolist())
    assert seen == set(range(NUM_CLASSES)) | {IGNORE_INDEX}
    assert src[-1]["name"] == src[len(src) - 1]["name"] and src[np.int64(2)]["name"] == src.name(2)
    with pytest.raises(IndexError):
        src[20]


def test_grain_map_dataset_and_data_loader(synth):
    src = CityscapesSource(synth, "val")
    assert isinstance(src, grain.sources.RandomAccessDataSource)
    assert pygrain.MapDataset is grain.MapDataset  # one class, two import paths in grain 0.2.x
    ds = grain.MapDataset.source(src).shuffle(seed=0).map(lambda d: d["label"].max())
    assert len(ds) == 4 and all(ds[i] == IGNORE_INDEX or ds[i] < NUM_CLASSES for i in range(4))
    assert pickle.loads(pickle.dumps(src))[1]["name"] == src[1]["name"]  # what workers receive
    sampler = pygrain.IndexSampler(len(src), pygrain.NoSharding(), shuffle=True, num_epochs=1, seed=0)
    loader = pygrain.DataLoader(data_source=src, sampler=sampler, worker_count=0)
    names = [item["name"] for item in loader]
    assert sorted(names) == sorted(src.name(i) for i in range(4))


# ----------------------------------------------------------------------------- errors
def test_missing_split(tiny):
    root, _, _ = tiny
    with pytest.raises(DataError, match=r"leftImg8bit/val.*splits present.*train"):
        CityscapesSource(root, "val")
    shutil.rmtree(root / "gtFine" / "train")
    with pytest.raises(DataError, match=r"gtFine/train"):
        CityscapesSource(root, "train")


def test_empty_split(tiny):
    root, _, _ = tiny
    (root / "leftImg8bit" / "test" / "somecity").mkdir(parents=True)
    (root / "gtFine" / "test").mkdir(parents=True)
    with pytest.raises(DataError, match="'test' is empty"):
        CityscapesSource(root, "test")


@pytest.mark.parametrize(("bad", "hint"), [(40, "not in the Cityscapes label table"), (255, "labelTrainIds")])
def test_label_ids_outside_the_table(tiny, bad, hint):
    root, _, lab = tiny
    ids = np.asarray(Image.open(lab)).copy()
    ids[3, 5] = bad
    Image.fromarray(ids).save(lab)
    with pytest.raises(DataError, match=rf"{lab.name}.*\[{bad}\].*"):
        CityscapesSource(root, "train")[0]
    with pytest.raises(DataError, match=hint):
        CityscapesSource(root, "train")[0]


def test_wide_label_image_out_of_range(tiny):
    root, _, lab = tiny
    ids = np.asarray(Image.open(lab)).astype(np.uint16)
    ids[0, 0] = 1000
    Image.fromarray(ids).save(lab)
    with pytest.raises(DataError, match=rf"{lab.name}.*outside 0..255"):
        CityscapesSource(root, "train")[0]
