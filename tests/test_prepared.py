"""The prepared format (jax_csfcn/data/prepared.py, tools/prepare.py): written once, read back
identical to its source, the same train batches, the class table travelling with it, atomic and
resumable shards, and one-line errors for every damaged or missing piece."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from jax_csfcn.data import prepared, sources
from jax_csfcn.data.cityscapes import DataError
from jax_csfcn.data.folder import FolderSource, write_synthetic_folder
from jax_csfcn.data.pipeline import AugmentConfig, train_loader
from jax_csfcn.data.prepared import PreparedSource
from tools import prepare as prepare_tool


class RandomSource:
    """Fresh random examples of varied sizes (a source as the pipeline wants one)."""

    def __init__(self, rng, n: int, stop_at: int | None = None):
        self.items = []
        for i in range(n):
            h, w = (int(v) for v in rng.integers(9, 40, 2))
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            label = rng.choice(np.array([0, 1, 2, 255], np.uint8), (h, w))
            self.items.append({"image": image, "label": label, "name": f"ex{i}-é"})
        self.stop_at = stop_at
        self.reads = 0

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        if self.stop_at is not None and i == self.stop_at:
            raise KeyboardInterrupt  # a Ctrl-C in the middle of a shard
        self.reads += 1
        return self.items[i]


def _prepare(srcs, out, **kw):
    kw.setdefault("records_per_shard", 3)
    return prepared.prepare(srcs, out, origin={"dataset": "cityscapes"}, progress=False, **kw)


@pytest.mark.parametrize("encoding", sorted(prepared.ENCODINGS))
def test_every_record_reads_back_identical(rng, tmp_path, encoding):
    srcs = {"train": RandomSource(rng, 7), "val": RandomSource(rng, 2)}
    manifest = _prepare(srcs, tmp_path / "p", encoding=encoding)
    assert {s: e["records"] for s, e in manifest["splits"].items()} == {"train": 7, "val": 2}
    assert [sh["file"] for sh in manifest["splits"]["train"]["shards"]] == [
        f"train-0000{k}-of-00003.array_record" for k in range(3)
    ]
    for split, src in srcs.items():
        back = PreparedSource(tmp_path / "p", split, check_crc=True)
        assert len(back) == len(src)
        for i, item in enumerate(src.items):
            got = back[i]
            np.testing.assert_array_equal(got["image"], item["image"])
            np.testing.assert_array_equal(got["label"], item["label"])
            assert got["name"] == item["name"]
    assert prepared.verify(tmp_path / "p", progress=False) == {"train": 7, "val": 2}
    # written files have the permissions of a plain write, and no temporary file is left
    mask = os.umask(0)
    os.umask(mask)
    for f in (tmp_path / "p").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f
    assert sorted(f.name for f in (tmp_path / "p").iterdir() if f.name.startswith(".")) == []


def test_the_same_train_batches_as_the_source(rng, tmp_path):
    """The loader over the prepared split gives exactly the batches of the loader over the source
    (same seed, geometry and photometric augmentation)."""
    src = RandomSource(rng, 6)
    _prepare({"train": src}, tmp_path / "p")
    aug = AugmentConfig(crop_size=(16, 16), scale_range=(0.5, 1.5), blur_prob=0.5, color_jitter=0.4, hue_jitter=0.1)
    a = iter(train_loader(src, aug, batch_size=2, seed=3))
    b = iter(train_loader(PreparedSource(tmp_path / "p", "train"), aug, batch_size=2, seed=3))
    for _ in range(4):  # two epochs
        x, y = next(a), next(b)
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_a_killed_preparation_resumes_and_ends_identical(rng, tmp_path):
    items = RandomSource(rng, 8)
    clean = tmp_path / "clean"
    _prepare({"train": items}, clean)
    broken = RandomSource(rng, 0)
    broken.items = items.items
    broken.stop_at = 4  # inside the second shard (records 3..5)
    out = tmp_path / "p"
    with pytest.raises(KeyboardInterrupt):
        _prepare({"train": broken}, out)
    names = sorted(f.name for f in out.iterdir())
    assert names == [".progress", "train-00000-of-00003.array_record"]  # the finished shard, no partial one
    with pytest.raises(DataError, match="not finished: run python -m tools.prepare again"):
        PreparedSource(out, "train")
    broken.stop_at, broken.reads = None, 0
    _prepare({"train": broken}, out)
    assert broken.reads == 5  # the finished shard was not read again
    for f in sorted(clean.iterdir()):
        if f.suffix == ".array_record":
            assert f.read_bytes() == (out / f.name).read_bytes(), f.name
    assert json.loads((clean / "prepared.json").read_text()) == json.loads((out / "prepared.json").read_text())
    assert not (out / ".progress").exists()


def test_other_settings_are_refused_not_mixed(rng, tmp_path):
    src = RandomSource(rng, 4)
    src.stop_at = 3
    with pytest.raises(KeyboardInterrupt):
        _prepare({"train": src}, tmp_path / "p")
    src.stop_at = None
    with pytest.raises(DataError, match="unfinished preparation with other settings"):
        _prepare({"train": src}, tmp_path / "p", encoding="raw")
    _prepare({"train": src}, tmp_path / "p")
    assert _prepare({"train": src}, tmp_path / "p")["encoding"] == prepared.DEFAULT_ENCODING  # done: a no-op
    with pytest.raises(DataError, match="already holds a prepared dataset with other settings"):
        _prepare({"train": src}, tmp_path / "p", records_per_shard=2)


def test_damage_is_named(rng, tmp_path):
    out = tmp_path / "p"
    _prepare({"train": RandomSource(rng, 5)}, out)
    with pytest.raises(DataError, match=r"no split 'val'; prepared splits: train"):
        PreparedSource(out, "val")
    # a flipped byte inside a shard: the shard's chunk hash refuses that record, naming it
    shard = out / "train-00001-of-00002.array_record"
    data = bytearray(shard.read_bytes())
    data[150] ^= 0x5A  # inside the first record of the shard (its chunk starts at byte 64)
    shard.write_bytes(bytes(data))
    src = PreparedSource(out, "train")
    with pytest.raises(DataError, match=r"split 'train' record 3: cannot read it"):
        [src[i] for i in range(5)]
    with pytest.raises(DataError, match=r"record 3"):
        prepared.verify(out, progress=False)
    # a record whose pixels no longer match its header's CRC (written by a buggy writer)
    good = prepared.encode_record(np.ones((4, 5, 3), np.uint8), np.zeros((4, 5), np.uint8), "x")
    bad = bytearray(good)
    bad[-1] ^= 1
    assert prepared.decode_record(good, "r", check_crc=True)["name"] == "x"
    with pytest.raises(DataError, match="r: CRC-32 mismatch"):
        prepared.decode_record(bytes(bad), "r", check_crc=True)
    with pytest.raises(DataError, match="bytes, expected"):
        prepared.decode_record(good[:-3], "r")
    shard.unlink()
    with pytest.raises(DataError, match="train-00001-of-00002.array_record of split 'train' are missing"):
        PreparedSource(out, "train")
    (out / "prepared.json").write_text('{"format": "something-else"}')
    with pytest.raises(DataError, match="format 'something-else'"):
        PreparedSource(out, "train")


def test_the_class_table_travels_with_a_folder_dataset(tmp_path):
    root = tmp_path / "mine"
    write_synthetic_folder(root, splits={"train": 3, "val": 1}, size=(24, 32))
    out = tmp_path / "p"
    prepare_tool.main(["--dataset", "folder", "--root", str(root), "--out", str(out), "--no-progress"])
    assert sources.family("prepared", out) == "folder"
    assert sources.class_names("prepared", out) == sources.class_names("folder", root)
    np.testing.assert_array_equal(sources.palette("prepared", out), sources.palette("folder", root))
    assert sources.model_classes("prepared", out) == sources.model_classes("folder", root)
    a, b = FolderSource(root, "val", None), sources.build_source("prepared", str(out), "val")
    np.testing.assert_array_equal(a[0]["label"], b[0]["label"])


def test_the_command_reports_bad_sources_in_one_line(tmp_path, capsys):
    root = tmp_path / "mine"
    write_synthetic_folder(root, splits={"train": 2}, size=(24, 32))
    with pytest.raises(SystemExit) as e:  # the source's own refusal, named
        prepare_tool.main(["--dataset", "folder", "--root", str(root), "--out", str(tmp_path / "p"), "--no-progress"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "val" in err and "\n" not in err
    assert not (tmp_path / "p" / "prepared.json").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        prepare_tool.main(
            ["--dataset", "folder", "--root", str(root), "--out", str(tmp_path / "other"), "--splits", "train"]
        )
    assert "holds other files" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        prepare_tool.main(["--verify-only", "--out", str(tmp_path / "other")])
    assert e.value.code == 1 and "is not a prepared dataset" in capsys.readouterr().err


def test_the_input_benchmark_runs_both_pipelines_side_by_side(tmp_path):
    """tools.benchmark_input on tiny settings: every table it reports is there and plausible."""
    from tools import benchmark_input

    rep = benchmark_input.main(
        ["--root", str(tmp_path / "d"), "--size", "48", "96", "--train", "4", "--crop", "32", "32", "--batch", "2",
         "--workers", "0", "--seconds", "0.3", "--windows", "1", "--warmup", "0", "--stage-images", "2",
         "--device-batch", "1", "--device-repeats", "1", "--hue-jitter", "0.1"]
    )  # fmt: skip
    assert [r["encoding"].split()[0] for r in rep["encodings"]] == ["png", "prepared", "prepared", "prepared"]
    assert all(r["mb_per_image"] > 0 and r["read_ms"]["median"] > 0 for r in rep["encodings"])
    assert {"total_png+host", "total_prepared+device", "geometry", "augment_all_on_device_host_part"} <= set(
        rep["host_ms_per_image"]
    )
    assert [(r["pipeline"], r["workers"]) for r in rep["loaders"]] == [("png+host", 0), ("prepared+device", 0)]
    assert all(r["images_per_s_median"] > 0 for r in rep["loaders"])
    assert all(rep["device_augment"][k]["ms_per_image"]["n"] == 1 for k in ("geometry", "blur_jitter", "both"))
