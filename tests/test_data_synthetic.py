"""The synthetic street-scene generator: determinism, layout, class coverage, learnable colours, CLI."""

from __future__ import annotations

import re

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import trainId2label
from PIL import Image

from jax_csfcn.data.cityscapes import IGNORE_INDEX, NUM_CLASSES, label_id_to_train_id
from jax_csfcn.data.synthetic import generate_scene, scene_name, write_synthetic_cityscapes
from tools.synthetic_data import main

SIZE = (128, 256)
LUT = label_id_to_train_id()


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))


def test_scene_is_a_pure_function_of_seed_split_index():
    img, ids = generate_scene(0, "train", 3, SIZE)
    img2, ids2 = generate_scene(0, "train", 3, SIZE)
    assert img.shape == (*SIZE, 3) and img.dtype == np.uint8
    assert ids.shape == SIZE and ids.dtype == np.uint8
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(ids, ids2)
    for other in [(1, "train", 3), (0, "val", 3), (0, "train", 4)]:
        assert not np.array_equal(generate_scene(*other, SIZE)[1], ids), other


def test_files_identical_bytes_for_same_seed_and_differ_for_another(tmp_path):
    kw = dict(splits={"train": 3, "val": 2}, size=(64, 128), progress=False)
    counts = write_synthetic_cityscapes(tmp_path / "a", seed=7, **kw)
    write_synthetic_cityscapes(tmp_path / "b", seed=7, **kw)
    write_synthetic_cityscapes(tmp_path / "c", seed=8, **kw)
    assert counts == {"train": 3, "val": 2}
    files = _files(tmp_path / "a")
    assert len(files) == 2 * 5 and files == _files(tmp_path / "b") == _files(tmp_path / "c")
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert all((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)


def test_cityscapes_layout_names_and_modes(tmp_path):
    write_synthetic_cityscapes(tmp_path, splits={"train": 4, "val": 1}, size=(48, 96), progress=False)
    stem = r"([a-z]+)_(\d{6})_(\d{6})"
    for f in _files(tmp_path):
        m = re.fullmatch(rf"(leftImg8bit|gtFine)/(train|val)/([a-z]+)/{stem}_(leftImg8bit|gtFine_labelIds)\.png", f)
        assert m, f
        assert m.group(3) == m.group(4)  # file prefixed by its city folder
        assert (m.group(1) == "leftImg8bit") == (m.group(7) == "leftImg8bit"), f
        with Image.open(tmp_path / f) as im:
            assert im.size == (96, 48)
            assert im.mode == ("RGB" if m.group(1) == "leftImg8bit" else "L"), f
    for i in range(4):
        city, name = scene_name("train", i)
        assert (tmp_path / "leftImg8bit" / "train" / city / f"{name}_leftImg8bit.png").is_file()
        assert (tmp_path / "gtFine" / "train" / city / f"{name}_gtFine_labelIds.png").is_file()
    assert {scene_name("train", i)[0] for i in range(4)}.isdisjoint({scene_name("val", i)[0] for i in range(4)})


def test_all_train_classes_and_void_appear_in_a_small_split():
    counts = np.zeros(256, np.int64)
    for i in range(20):
        counts += np.bincount(generate_scene(0, "train", i, SIZE)[1].ravel(), minlength=256)
    ids = np.flatnonzero(counts)
    assert set(ids) <= set(range(34)), "labelIds outside the Cityscapes table"
    train = set(LUT[ids].tolist()) - {IGNORE_INDEX}
    assert train == set(range(NUM_CLASSES)), [trainId2label[c].name for c in set(range(NUM_CLASSES)) - train]
    assert counts[[0, 1]].sum() > 0, "no void pixels"
    assert counts[[0, 1]].sum() < 0.05 * counts.sum()


def test_colour_is_informative_but_not_a_constant():
    # Nearest Cityscapes-palette colour gets most pixels right (learnable) but not all (textured).
    palette = np.array([trainId2label[c].color for c in range(NUM_CLASSES)], np.float32)
    hits = total = 0
    for i in range(4):
        img, ids = generate_scene(0, "val", i, SIZE)
        y = LUT[ids]
        valid = y != IGNORE_INDEX
        px = img[valid].astype(np.float32)
        pred = ((px[:, None] - palette[None]) ** 2).sum(-1).argmin(1)
        hits, total = hits + int((pred == y[valid]).sum()), total + int(valid.sum())
        road = img[y == 0]
        assert road.std(axis=0).min() > 3.0  # textured, not flat
    assert 0.6 < hits / total < 0.98, hits / total


def test_other_sizes_and_extra_splits(tmp_path):
    counts = write_synthetic_cityscapes(tmp_path, splits={"test": 1}, size=(37, 61), progress=False)
    assert counts == {"test": 1}
    (f,) = (tmp_path / "leftImg8bit" / "test").rglob("*.png")
    assert Image.open(f).size == (61, 37)


def test_cli(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "--train", "2", "--val", "1", "--size", "32", "64", "--no-progress"]) == {
        "train": 2,
        "val": 1,
    }
    assert "wrote" in capsys.readouterr().out
    assert len(_files(tmp_path)) == 6
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--root" in capsys.readouterr().out
