"""Your own data: the class table file (csfcn/class_table.py) and the folder source
(jax_csfcn/data/folder.py) -- index, binary 0/255 and colour-coded masks, list files, JPEG
images, and the named errors of bad tables and bad masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from csfcn.class_table import ClassTableError, parse_class_table, read_class_table
from csfcn.model_config import ModelConfig
from jax_csfcn.data import sources
from jax_csfcn.data.cityscapes import DataError
from jax_csfcn.data.folder import FolderSource, write_synthetic_folder


def test_index_table_defaults_and_lookup():
    t = parse_class_table({"classes": [{"name": "a", "color": [1, 2, 3]}, {"name": "b", "color": [4, 5, 6]}]})
    assert t.mask == "index" and t.names == ("a", "b") and t.ignore == (255,)
    mask = np.array([[0, 1], [255, 1]], np.uint8)
    np.testing.assert_array_equal(t.to_train_ids(mask, "m.png"), [[0, 1], [255, 1]])
    assert t.model_classes() == (("a", (1, 2, 3), 0), ("b", (4, 5, 6), 1))


def test_binary_0_255_masks_map_255_to_a_class():
    t = parse_class_table(
        {
            "classes": [
                {"name": "background", "color": [0, 0, 0], "values": [0]},
                {"name": "crack", "color": [255, 0, 0], "values": [255]},
            ]
        }
    )
    assert t.ignore == ()  # 255 is a class here, so it is not ignored by default
    rng = np.random.default_rng(0)
    mask = rng.choice(np.array([0, 255], np.uint8), size=(5, 7))
    np.testing.assert_array_equal(t.to_train_ids(mask, "m.png"), (mask == 255).astype(np.uint8))


def test_colour_masks_and_16_bit_values():
    t = parse_class_table(
        {
            "mask": "color",
            "classes": [
                {"name": "road", "color": [128, 64, 128]},
                {"name": "car", "color": [0, 0, 142], "values": [[0, 0, 142], [0, 0, 70]]},
            ],
            "ignore": [[0, 0, 0]],
        }
    )
    mask = np.array([[[128, 64, 128], [0, 0, 70]], [[0, 0, 0], [0, 0, 142]]], np.uint8)
    np.testing.assert_array_equal(t.to_train_ids(mask, "m.png"), [[0, 1], [255, 1]])
    assert t.model_classes()[1] == ("car", (0, 0, 142), (0, 0, 142))
    wide = parse_class_table({"classes": [{"name": "x", "color": [9, 9, 9], "values": [1000]}]})
    np.testing.assert_array_equal(wide.to_train_ids(np.full((2, 2), 1000, np.uint16), "m.png"), 0)


def test_unknown_mask_value_names_file_value_and_table():
    t = parse_class_table({"classes": [{"name": "a", "color": [1, 2, 3]}]}, source="class table x.json")
    with pytest.raises(ClassTableError, match=r"mask m\.png contains values \[7\].*class table x\.json.*a=0"):
        t.to_train_ids(np.array([[0, 7]], np.uint8), "m.png")


@pytest.mark.parametrize(
    "table, message",
    [
        ({"classes": []}, "non-empty list"),
        ({"classes": [{"name": "a"}]}, "needs a display"),
        ({"classes": [{"name": "a", "color": [1, 2]}]}, r"colour \[r, g, b\]"),
        ({"classes": [{"name": "a", "color": [1, 2, 3], "train_id": 3}]}, "train-id order"),
        ({"classes": [{"name": "a", "color": [1, 2, 3]}, {"name": "a", "color": [1, 2, 3]}]}, "more than once"),
        ({"classes": [{"name": "a", "color": [0, 0, 0], "values": [1]}, {"name": "b", "color": [0, 0, 0]}]}, "both"),
        ({"classes": [{"name": "a", "color": [0, 0, 0]}], "colour": 1}, "unknown keys"),
        ({"mask": "rgb", "classes": [{"name": "a", "color": [0, 0, 0]}]}, "mask"),
    ],
)
def test_bad_tables_are_named(table, message):
    with pytest.raises(ClassTableError, match=message):
        parse_class_table(table, source="t.json")


def test_table_files_json_and_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("classes:\n  - {name: sky, color: [70, 130, 180]}\n")
    assert read_class_table(tmp_path / "c.yaml").names == ("sky",)
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ClassTableError, match=r"c\.json is not valid json"):
        read_class_table(tmp_path / "c.json")
    with pytest.raises(ClassTableError, match="not found"):
        read_class_table(tmp_path / "missing.json")


def test_model_config_carries_the_classes_through_json():
    t = parse_class_table({"mask": "color", "classes": [{"name": "a", "color": [1, 2, 3]}]})
    mc = ModelConfig(name="csfcn_tiny", num_classes=1, classes=t.model_classes())
    assert ModelConfig.from_json(mc.to_json()) == mc
    assert "classes" not in json.loads(ModelConfig().to_json())  # the fixed datasets' checkpoints stay as they were
    with pytest.raises(ValueError, match="lists 1 classes but model.num_classes=2"):
        ModelConfig(num_classes=2, classes=t.model_classes())


@pytest.fixture(scope="module")
def colour_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder_colour")
    write_synthetic_folder(root, splits={"train": 3, "val": 2}, size=(40, 56), seed=1)
    return root


def test_folder_source_reads_colour_masks_and_jpeg(colour_root):
    src = sources.build_source("folder", str(colour_root), "train")
    assert isinstance(src, FolderSource) and len(src) == 3
    item = src[0]
    assert item["image"].shape == (40, 56, 3) and item["label"].shape == (40, 56)
    assert set(np.unique(item["label"])) <= {0, 1, 2, 3, 4, 255}
    assert item["name"] == "scene_0000"
    assert sources.class_names("folder", str(colour_root))[0] == "flat"
    assert sources.palette("folder", str(colour_root)).shape == (5, 3)


def test_index_masks_with_raw_values_and_a_list_file(tmp_path):
    root = tmp_path / "idx"
    write_synthetic_folder(root, splits={"val": 2}, size=(32, 48), mask="index")
    table = json.loads((root / "classes.json").read_text())
    assert table["classes"][0]["values"] == [10] and table["ignore"] == [0]
    raw = np.asarray(Image.open(root / "masks/val/scene_0001.png"))
    label = FolderSource(root, "val")[1]["label"]
    np.testing.assert_array_equal(label, np.where(raw == 0, 255, raw // 10 - 1))
    # a list file wins over the folders; paths relative to the root
    (root / "mine.txt").write_text("# pairs\nimages/val/scene_0001.jpg masks/val/scene_0001.png\n")
    src = FolderSource(root, "mine")
    assert len(src) == 1 and src.name(0) == "images/val/scene_0001"
    np.testing.assert_array_equal(src[0]["label"], label)


def test_folder_errors_name_the_file_and_the_fix(tmp_path):
    root = tmp_path / "bad"
    write_synthetic_folder(root, splits={"train": 2}, size=(32, 48), mask="index")
    with pytest.raises(DataError, match=r"split 'val' not found.*splits present.*train"):
        FolderSource(root, "val")
    # a mask value outside the table: the file, the value, the table
    Image.fromarray(np.full((32, 48), 77, np.uint8)).save(root / "masks/train/scene_0001.png")
    with pytest.raises(DataError, match=r"scene_0001\.png contains values \[77\].*classes\.json"):
        FolderSource(root, "train")[1]
    # a colour mask where the table says index
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(root / "masks/train/scene_0001.png")
    with pytest.raises(DataError, match="mode 'RGB'.*mask=index"):
        FolderSource(root, "train")[1]
    # a mask of another size
    Image.fromarray(np.zeros((16, 48), np.uint8)).save(root / "masks/train/scene_0001.png")
    with pytest.raises(DataError, match="48x32.*48x16"):
        FolderSource(root, "train")[1]
    (root / "masks/train/scene_0000.png").unlink()
    with pytest.raises(DataError, match=r"scene_0000\.jpg has no mask"):
        FolderSource(root, "train")
    (root / "classes.json").unlink()
    with pytest.raises(DataError, match=r"class table .*classes\.json not found"):
        FolderSource(root, "train")


def test_list_names_readme_txt_one_bit_masks_and_numpy_colours(tmp_path):
    from csfcn.class_table import write_class_table
    from tools.folder_data import main as folder_main

    root, elsewhere = tmp_path / "ds", tmp_path / "elsewhere"
    write_synthetic_folder(root, splits={"val": 1}, size=(32, 48), mask="index")
    elsewhere.mkdir()
    img = Image.open(root / "images/val/scene_0000.jpg")
    img.save(elsewhere / "far.jpg")
    # a 1-bit binary mask, with a table mapping 0/255
    Image.fromarray(np.arange(32 * 48).reshape(32, 48) % 3 == 0).convert("1").save(elsewhere / "far.png")
    write_class_table(tmp_path / "binary.json", ["bg", "fg"], np.array([[0, 0, 0], [255, 0, 0]]), values=[[0], [255]])
    (root / "outside.txt").write_text(f"{elsewhere / 'far.jpg'} {elsewhere / 'far.png'}\n")
    src = FolderSource(root, "outside", classes=str(tmp_path / "binary.json"))
    assert src.name(0) == "far"  # not ../elsewhere/far: names become dump file names
    assert src[0]["label"].max() == 1 and src[0]["label"].min() == 0
    assert src.max_size() == (32, 48)
    # a README.txt beside the splits is not a split
    (root / "README.txt").write_text("my dataset, labelled in 2026\n")
    assert folder_main([str(root), "--no-progress", "--split", "val"]) == 0
    assert folder_main([str(root), "--no-progress"]) == 2  # "outside" needs its own table: named error
    with pytest.raises(DataError, match=r"splits present under .*\['outside', 'val'\]"):
        FolderSource(root, "test")


def test_table_of_255_classes_fits_and_256_is_refused(rng):
    """Train ids are 8-bit and 255 is ignore: 255 classes (ids 0..254) fit, a 256th does not."""
    entries = [{"name": f"c{i}", "color": [i, 0, 0]} for i in range(255)]
    t = parse_class_table({"classes": entries})
    assert t.num_classes == 255 and t.ignore == (255,), "a table of 255 classes (train ids 0..254) was not accepted"
    mask = rng.integers(0, 256, size=(6, 9)).astype(np.uint8)  # every class value, and 255 = ignore
    np.testing.assert_array_equal(t.to_train_ids(mask, "m.png"), mask, err_msg="255 classes: ids not read as given")
    with pytest.raises(ClassTableError, match="256 classes; at most 255"):
        parse_class_table({"classes": [*entries, {"name": "c255", "color": [0, 1, 0]}]})


def test_a_class_is_written_back_as_its_first_raw_value(rng):
    """Several raw values may map to one class; writing back (``--format raw``) uses the first
    one listed, not the last nor the smallest."""
    from csfcn.palette import raw_value_lut

    t = parse_class_table(
        {
            "classes": [
                {"name": "bg", "color": [0, 0, 0], "values": [7, 3, 9]},
                {"name": "leaf", "color": [0, 255, 0], "values": [40, 20]},
            ]
        }
    )
    assert t.raw_ids() == (7, 40), f"raw values written back {t.raw_ids()}: expected each class's first, (7, 40)"
    raw = rng.choice(np.array([7, 3, 9, 40, 20], np.uint8), size=(5, 6))
    back = raw_value_lut(t.model_classes())[t.to_train_ids(raw, "m.png")]
    np.testing.assert_array_equal(back, np.where(raw < 10, 7, 40), err_msg="mask written back with other raw values")
    colour = parse_class_table(
        {"mask": "color", "classes": [{"name": "car", "color": [0, 0, 142], "values": [[0, 0, 70], [0, 0, 142]]}]}
    )
    assert colour.raw_ids() == ((0, 0, 70),), f"colour class written back as {colour.raw_ids()}, not its first value"


def test_folder_pairs_images_and_masks_by_their_path_under_the_split(tmp_path, rng):
    """a/x.png and b/x.png share a file name: each reads the mask at its own relative path."""
    root = tmp_path / "nested"
    root.mkdir()
    (root / "classes.json").write_text(
        json.dumps({"classes": [{"name": f"c{i}", "color": [i, i, i]} for i in range(4)]})
    )
    want = {}
    for sub, values in (("a", [0, 1]), ("b", [2, 3])):
        for kind in ("images", "masks"):
            (root / kind / "train" / sub).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, size=(8, 12, 3), dtype=np.uint8)).save(root / f"images/train/{sub}/x.png")
        want[f"{sub}/x"] = rng.choice(np.array(values, np.uint8), size=(8, 12))
        Image.fromarray(want[f"{sub}/x"]).save(root / f"masks/train/{sub}/x.png")
    # a stray mask of that file name at the top of the split belongs to neither image
    Image.fromarray(np.full((8, 12), 3, np.uint8)).save(root / "masks/train/x.png")
    src = FolderSource(root, "train")
    assert sorted(src.name(i) for i in range(len(src))) == ["a/x", "b/x"]
    for i in range(len(src)):
        np.testing.assert_array_equal(src[i]["label"], want[src.name(i)], err_msg=f"{src.name(i)} got another mask")


def test_list_file_written_elsewhere_finds_nested_pairs_under_the_root(tmp_path, rng):
    """A list written on another machine (absolute paths, or relative to another base) finds each
    file by its last two path parts under the root: the folder is kept, not only the file name."""
    root = tmp_path / "ds"
    root.mkdir()
    classes = [{"name": "bg", "color": [0, 0, 0]}, {"name": "fg", "color": [9, 9, 9]}]
    (root / "classes.json").write_text(json.dumps({"classes": classes}))
    want = {}
    for sub in ("imgA", "imgB"):
        (root / sub).mkdir()
        (root / sub.replace("img", "lab")).mkdir()
        Image.fromarray(rng.integers(0, 256, size=(6, 10, 3), dtype=np.uint8)).save(root / sub / "x.png")
        want[f"{sub}/x"] = rng.integers(0, 2, size=(6, 10)).astype(np.uint8)
        Image.fromarray(want[f"{sub}/x"]).save(root / sub.replace("img", "lab") / "x.png")
    (root / "mine.txt").write_text(
        "/mnt/other/machine/ds/imgA/x.png /mnt/other/machine/ds/labA/x.png\nold/base/imgB/x.png old/base/labB/x.png\n"
    )
    src = FolderSource(root, "mine")
    assert [src.name(i) for i in range(len(src))] == ["imgA/x", "imgB/x"]
    for i in range(len(src)):
        np.testing.assert_array_equal(src[i]["label"], want[src.name(i)], err_msg=f"{src.name(i)} got another mask")


def test_symlinked_image_folders_are_followed_with_one_note_and_cycles_skipped(tmp_path, rng, capsys):
    """images/train/more -> a folder elsewhere (the masks beside it alike): its images belong to
    the split, named once on stderr however often the source is built; a link back up is skipped."""
    root, elsewhere = tmp_path / "ds", tmp_path / "elsewhere"
    (root / "classes.json").parent.mkdir()
    (root / "classes.json").write_text(json.dumps({"classes": [{"name": "a", "color": [1, 1, 1]}]}))
    for kind in ("images", "masks"):
        (root / kind / "train").mkdir(parents=True)
        (elsewhere / kind).mkdir(parents=True)
        (root / kind / "train" / "more").symlink_to(elsewhere / kind, target_is_directory=True)
    for folder, name in ((root, "x"), (elsewhere, "y")):
        sub = "train/" if folder is root else ""
        Image.fromarray(rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)).save(folder / f"images/{sub}{name}.png")
        Image.fromarray(np.zeros((4, 6), np.uint8)).save(folder / f"masks/{sub}{name}.png")
    (root / "images" / "train" / "up").symlink_to(root / "images" / "train", target_is_directory=True)  # a cycle
    src = FolderSource(root, "train")
    assert sorted(src.name(i) for i in range(len(src))) == ["more/y", "x"]
    assert src[[src.name(i) for i in range(2)].index("more/y")]["label"].shape == (4, 6)
    err = capsys.readouterr().err
    assert f"following the symbolic link {root / 'images/train/more'} -> {(elsewhere / 'images').resolve()}" in err
    assert "skipping the symbolic link" in err and "(a cycle)" in err
    FolderSource(root, "train")
    assert capsys.readouterr().err == ""  # said once
