"""The grain input pipeline: augmentation semantics, determinism, sharding, resume, eval, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jax_csfcn.data.cityscapes import CityscapesSource, DataError
from jax_csfcn.data.pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    PipelineError,
    augment,
    denormalize,
    eval_loader,
    loader_state,
    normalize,
    restore_loader_state,
    scaled_size,
    train_loader,
)
from jax_csfcn.data.synthetic import write_synthetic_cityscapes

SIZE = (64, 128)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_cityscapes(root, splits={"train": 6, "val": 3}, size=SIZE, seed=0, progress=False)
    return root


class ArraySource:
    """In-memory source: ``make(i) -> (image, label)``; ``sizes`` optional per-record (H, W)."""

    def __init__(self, n, kind, sizes=None):
        self.n, self.kind, self.sizes = n, kind, sizes

    def __len__(self):
        return self.n

    def __repr__(self):
        return f"ArraySource(n={self.n}, kind={self.kind!r})"

    def __getitem__(self, i):
        i = int(i)
        h, w = self.sizes[i] if self.sizes else (16, 24)
        if self.kind == "index":  # every pixel holds the record index + 1: identifies the record
            image = np.full((h, w, 3), i + 1, np.uint8)
            label = np.full((h, w), i % 19, np.uint8)
        elif self.kind == "columns":  # label is a function of the image: column x -> x % 19
            x = np.broadcast_to(np.arange(w, dtype=np.uint8)[None], (h, w))
            image = np.stack([x + 1, np.full_like(x, 7), np.full_like(x, 9)], -1)
            label = x % 19
        else:  # "random": values >= 1 in the image, labels never 255
            rng = np.random.default_rng(i)
            image = rng.integers(1, 256, (h, w, 3), dtype=np.uint8)
            label = rng.integers(0, 19, (h, w), dtype=np.uint8)
        return {"image": np.ascontiguousarray(image), "label": np.ascontiguousarray(label), "name": f"rec{i}"}


def take(loader, k):
    with iter(loader) as it:
        return [next(it) for _ in range(k)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for key in x:
            np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]), err_msg=key)


def identity_aug(hw):
    return AugmentConfig(crop_size=hw, scale_range=(1.0, 1.0), flip=False)


# ---------------------------------------------------------------------------------------------- augmentation


def reference_augment(image, label, aug, rng):
    """The spec's order literally: scale the whole image, pad, crop, flip (same random draws)."""
    h, w = label.shape
    nh, nw = scaled_size((h, w), rng.uniform(*aug.scale_range), aug.base_size)
    img = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    lab = np.asarray(Image.fromarray(label).resize((nw, nh), Image.NEAREST))
    ch, cw = aug.crop_size
    ph, pw = max(nh, ch), max(nw, cw)
    pimg = np.zeros((ph, pw, 3), np.uint8)
    plab = np.full((ph, pw), aug.ignore_index, np.uint8)
    pimg[:nh, :nw], plab[:nh, :nw] = img, lab
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    cimg, clab = pimg[y0 : y0 + ch, x0 : x0 + cw], plab[y0 : y0 + ch, x0 : x0 + cw]
    if aug.flip and rng.random() < 0.5:
        cimg, clab = cimg[:, ::-1], clab[:, ::-1]
    return cimg, clab


@pytest.mark.parametrize(
    "scale_range,crop,base",
    [((0.125, 2.0), (40, 56), None), ((0.5, 0.9), (48, 48), None), ((1.2, 2.0), (30, 70), (20, 40))],
)
def test_fused_scale_crop_equals_scale_pad_crop_flip(scale_range, crop, base):
    src = ArraySource(1, "random", sizes=[(37, 53)])
    image, label = src[0]["image"], src[0]["label"]
    aug = AugmentConfig(crop_size=crop, scale_range=scale_range, base_size=base)
    for s in range(12):
        got_img, got_lab = augment(image, label, aug, np.random.default_rng(s))
        ref_img, ref_lab = reference_augment(image, label, aug, np.random.default_rng(s))
        assert got_img.shape == (*crop, 3) and got_lab.shape == crop
        assert got_img.dtype == np.uint8 and got_lab.dtype == np.uint8
        np.testing.assert_array_equal(got_lab, ref_lab)
        assert np.abs(got_img.astype(int) - ref_img).max() <= 1  # PIL rounding of the box resample


def test_scaled_size_base_and_own():
    assert scaled_size((1024, 2048), 0.5, None) == (512, 1024)
    assert scaled_size((1024, 2048), 2.0, None) == (2048, 4096)
    # base_size: the short side becomes f * min(base), aspect ratio of the image kept
    assert scaled_size((720, 960), 1.0, (1024, 2048)) == (1024, 1365)
    assert scaled_size((10, 10), 0.01, None) == (1, 1)


def test_augment_config_validation_and_json():
    aug = AugmentConfig(crop_size=[32, 48], scale_range=[0.5, 1.5])
    assert aug.crop_size == (32, 48) and aug.scale_range == (0.5, 1.5)
    assert json.loads(json.dumps(aug.to_json()))["crop_size"] == [32, 48]
    for bad in (
        {"crop_size": (0, 10)},
        {"scale_range": (2.0, 1.0)},
        {"scale_range": (0.0, 1.0)},
        {"blur_prob": 1.5},
        {"color_jitter": -0.1},
        {"ignore_index": 300},
        {"crop_size": 512},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AugmentConfig(**bad)


def test_padding_is_ignore_and_zero():
    src = ArraySource(4, "random", sizes=[(20, 30)] * 4)
    aug = AugmentConfig(crop_size=(32, 48), scale_range=(0.5, 1.4), blur_prob=0.5, color_jitter=0.3)
    saw_padding = False
    for batch in take(train_loader(src, aug, batch_size=2, seed=3), 6):
        pad = batch["label"] == 255  # the fake labels are never 255: 255 = padding only
        assert (batch["image"][pad] == 0).all()
        # content is bilinear/blurred/jittered values >= 1, except where jitter darkens to 0
        saw_padding |= bool(pad.any())
        for lab in batch["label"]:
            rows = (lab == 255).all(1)
            assert not rows.any() or rows[np.argmax(rows) :].all()  # padded rows form the bottom block
    assert saw_padding


def test_flip_moves_image_and_label_together():
    src = ArraySource(4, "columns", sizes=[(12, 40)] * 4)
    aug = AugmentConfig(crop_size=(12, 32), scale_range=(1.0, 1.0), flip=True)
    flipped = unflipped = 0
    for batch in take(train_loader(src, aug, batch_size=4, seed=0), 4):
        for img, lab in zip(batch["image"], batch["label"]):
            col = img[0, :, 0].astype(int) - 1  # source column of each output column
            np.testing.assert_array_equal(lab, np.broadcast_to((col % 19)[None], lab.shape))
            step = np.diff(col)
            assert (step == 1).all() or (step == -1).all()
            flipped += int(step[0] == -1)
            unflipped += int(step[0] == 1)
    assert flipped > 2 and unflipped > 2


def test_blur_and_jitter_keep_geometry():
    """Blur/jitter draw after the geometry: the labels do not change when they are turned on."""
    src = ArraySource(4, "random")
    plain = AugmentConfig(crop_size=(24, 24), scale_range=(0.5, 2.0))
    fancy = AugmentConfig(crop_size=(24, 24), scale_range=(0.5, 2.0), blur_prob=1.0, color_jitter=0.4)
    a, b = (
        take(train_loader(src, plain, batch_size=2, seed=5), 2),
        take(train_loader(src, fancy, batch_size=2, seed=5), 2),
    )
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["label"], y["label"])
        assert not np.array_equal(x["image"], y["image"])


# ---------------------------------------------------------------------------------------------- train loader


def test_train_batches_on_cityscapes_layout(synth_root):
    src = CityscapesSource(synth_root, "train")
    ids = set()
    for i in range(len(src)):
        ids |= set(np.unique(src[i]["label"]).tolist())
    aug = AugmentConfig(crop_size=(48, 64))  # the upstream recipe otherwise
    batches = take(train_loader(src, aug, batch_size=3, seed=0), 4)
    for b in batches:
        assert sorted(b) == ["image", "label"]
        assert b["image"].shape == (3, 48, 64, 3) and b["image"].dtype == np.uint8
        assert b["label"].shape == (3, 48, 64) and b["label"].dtype == np.uint8
        assert set(np.unique(b["label"]).tolist()) <= ids | {255}
    assert_batches_equal(batches, take(train_loader(src, aug, batch_size=3, seed=0), 4))
    other = take(train_loader(src, aug, batch_size=3, seed=1), 4)
    assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(batches, other))


def records_of(batches):
    return [int(v) - 1 for b in batches for v in b["image"][:, 0, 0, 0]]


def test_sharding_disjoint_equal_and_epochs_reshuffled():
    n = 9
    src = ArraySource(n, "index")
    aug = identity_aug((16, 24))
    shards = [
        records_of(list(train_loader(src, aug, batch_size=2, seed=4, shard_index=k, shard_count=3, num_epochs=1)))
        for k in range(3)
    ]
    assert [len(s) for s in shards] == [2, 2, 2]  # 3 records per shard, remainder dropped per batch
    flat = sum(shards, [])
    assert len(set(flat)) == len(flat)
    one = train_loader(src, aug, batch_size=1, seed=4, shard_count=2, shard_index=0, num_epochs=1)
    two = train_loader(src, aug, batch_size=1, seed=4, shard_count=2, shard_index=1, num_epochs=1)
    assert len(one) == len(two) == 4  # 9 // 2: the same number of batches on every process
    r0, r1 = records_of(list(one)), records_of(list(two))
    assert not set(r0) & set(r1) and len(set(r0) | set(r1)) == 8
    # Even split: the union is the whole epoch.
    src8 = ArraySource(8, "index")
    halves = [
        records_of(list(train_loader(src8, aug, batch_size=2, seed=4, shard_index=k, shard_count=2, num_epochs=1)))
        for k in range(2)
    ]
    assert sorted(halves[0] + halves[1]) == list(range(8))
    # Infinite by default; every epoch a new permutation of all records.
    stream = records_of(take(train_loader(src8, aug, batch_size=4, seed=4), 6))
    epochs = [stream[i : i + 8] for i in range(0, 24, 8)]
    assert all(sorted(e) == list(range(8)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]


def test_augmentation_does_not_depend_on_shard_count():
    """Position p of an epoch gets the same record and crop whether 1 or 2 processes read it."""
    src = ArraySource(6, "random")
    aug = AugmentConfig(crop_size=(20, 20), scale_range=(0.5, 2.0))
    single = take(train_loader(src, aug, batch_size=1, seed=9), 4)  # positions 0, 1, 2, 3
    shard1 = take(train_loader(src, aug, batch_size=1, seed=9, shard_index=1, shard_count=2), 2)  # 1, 3
    assert_batches_equal([single[1], single[3]], shard1)


def test_resume_worker_count_0(synth_root):
    src = CityscapesSource(synth_root, "train")
    aug = AugmentConfig(crop_size=(32, 48), blur_prob=0.5, color_jitter=0.2)
    loader = train_loader(src, aug, batch_size=4, seed=2)
    it = iter(loader)
    for _ in range(3):  # 3 batches of 4 from 6 records: crosses an epoch boundary
        next(it)
    state = json.loads(json.dumps(loader_state(it)))
    assert state["next_batch"] == 3 and state["source_len"] == 6
    expected = [next(it) for _ in range(3)]
    fresh = iter(train_loader(src, aug, batch_size=4, seed=2))
    restore_loader_state(fresh, state)
    assert_batches_equal(expected, [next(fresh) for _ in range(3)])
    restore_loader_state(it, state)  # rewinding the same iterator works too
    assert_batches_equal(expected, [next(it) for _ in range(3)])
    it.close()


def test_restore_rejects_other_data(synth_root):
    aug = AugmentConfig(crop_size=(32, 32))
    train = CityscapesSource(synth_root, "train")
    with iter(train_loader(train, aug, batch_size=2, seed=0)) as it:
        next(it)
        state = loader_state(it)
    with pytest.raises(ValueError, match="seed: saved 0, now 1"):
        restore_loader_state(iter(train_loader(train, aug, batch_size=2, seed=1)), state)
    with pytest.raises(ValueError, match="split='val'"):
        restore_loader_state(iter(train_loader(CityscapesSource(synth_root, "val"), aug, batch_size=2, seed=0)), state)
    with pytest.raises(ValueError, match="crop_size"):
        restore_loader_state(iter(train_loader(train, AugmentConfig((16, 16)), batch_size=2, seed=0)), state)
    with pytest.raises(ValueError, match="format"):
        restore_loader_state(iter(train_loader(train, aug, batch_size=2, seed=0)), {"next_index": 3})


def test_workers_same_batches_and_resume(synth_root):
    """worker_count=2: the batches of worker_count=0, and a saved state resumes them exactly."""
    src = CityscapesSource(synth_root, "train")
    aug = AugmentConfig(crop_size=(32, 48))
    reference = take(train_loader(src, aug, batch_size=2, seed=7), 7)
    loader = train_loader(src, aug, batch_size=2, seed=7, worker_count=2, worker_buffer_size=1)
    with iter(loader) as it:
        first = [next(it) for _ in range(4)]
        state = json.loads(json.dumps(loader_state(it)))
        assert_batches_equal(reference[:4], first)
    del first
    with iter(loader) as it:
        restore_loader_state(it, state)
        assert_batches_equal(reference[4:], [next(it) for _ in range(3)])
    # A state saved with workers resumes without them (the state does not depend on workers).
    with iter(train_loader(src, aug, batch_size=2, seed=7)) as it:
        restore_loader_state(it, state)
        assert_batches_equal(reference[4:6], [next(it) for _ in range(2)])


@pytest.fixture(scope="module")
def corrupt_root(synth_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt") / "ds"
    shutil.copytree(synth_root, root)
    bad = sorted((root / "leftImg8bit" / "train").glob("*/*.png"))[3]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    return root, bad


@pytest.mark.parametrize("workers", [0, 2])
def test_worker_errors_name_the_file(corrupt_root, workers):
    root, bad = corrupt_root
    loader = train_loader(
        CityscapesSource(root, "train"),
        AugmentConfig((32, 32)),
        batch_size=2,
        seed=0,
        worker_count=workers,
        num_epochs=1,
    )
    with pytest.raises(DataError, match=bad.name), iter(loader) as it:
        for _ in it:
            pass


def test_bad_records_are_named():
    class Gray(ArraySource):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return {**item, "image": item["image"][..., 0]}

    with pytest.raises(PipelineError, match="rec"):
        take(train_loader(Gray(2, "random"), AugmentConfig((8, 8)), batch_size=1, seed=0), 1)
    with pytest.raises(ValueError, match="fewer than shard_count"):
        train_loader(ArraySource(1, "random"), AugmentConfig((8, 8)), batch_size=1, seed=0, shard_count=2)
    with pytest.raises(ValueError, match="no full batch"):
        train_loader(ArraySource(3, "random"), AugmentConfig((8, 8)), batch_size=4, seed=0, num_epochs=1)


# ---------------------------------------------------------------------------------------------- eval loader


def test_eval_covers_every_record_once_with_valid_mask():
    sizes = [(10, 12), (16, 24), (8, 30), (16, 24), (12, 12), (9, 9), (16, 16)]
    src = ArraySource(7, "random", sizes=sizes)
    seen = []
    for k in range(2):
        loader = eval_loader(src, batch_size=3, shard_index=k, shard_count=2)
        batches = list(loader)
        assert len(batches) == len(loader) == 2  # ceil(ceil(7 / 2) / 3) on both shards
        for b in batches:
            assert b["image"].dtype == np.uint8 and b["label"].dtype == np.uint8 and b["valid"].dtype == bool
            assert b["image"].shape[:3] == b["label"].shape and b["image"].shape[0] == 3
            for i in range(3):
                if not b["valid"][i]:
                    assert (b["label"][i] == 255).all() and b["name"][i] == "" and b["index"][i] == -1
                    continue
                g = int(b["index"][i])
                h, w = sizes[g]
                assert tuple(b["size"][i]) == (h, w) and b["name"][i] == f"rec{g}"
                np.testing.assert_array_equal(b["image"][i, :h, :w], src[g]["image"])
                np.testing.assert_array_equal(b["label"][i, :h, :w], src[g]["label"])
                assert (b["label"][i, h:] == 255).all() and (b["label"][i, :, w:] == 255).all()
                assert (b["image"][i, h:] == 0).all() and (b["image"][i, :, w:] == 0).all()
                seen.append(g)
        shard = [int(g) for b in batches for g in b["index"] if g >= 0]
        assert shard == sorted(shard)  # source order
    assert sorted(seen) == list(range(7))


def test_eval_pad_to_and_workers(synth_root):
    src = CityscapesSource(synth_root, "val")
    batches = list(eval_loader(src, batch_size=2, pad_to=(72, 136)))
    assert [b["image"].shape for b in batches] == [(2, 72, 136, 3)] * 2
    assert batches[1]["valid"].tolist() == [True, False]
    assert [str(n) for b in batches for n in b["name"]][:3] == [src.name(i) for i in range(3)]
    with pytest.raises(PipelineError, match="larger than pad_to"):
        list(eval_loader(src, batch_size=2, pad_to=(32, 32)))
    # Workers keep the order and stop at the end of the (finite) split.
    with iter(eval_loader(src, batch_size=1, pad_to=(72, 136), worker_count=2)) as it:
        in_workers = list(it)
    assert_batches_equal(list(eval_loader(src, batch_size=1, pad_to=(72, 136))), in_workers)


def test_normalize_constants():
    x = np.array([[[0, 128, 255]]], np.uint8)
    y = normalize(x)
    ref = (x / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(denormalize(y), x)


def test_colour_jitter_is_the_upstream_one_in_a_random_order():
    """torchvision's ColorJitter, which the upstream uses: brightness, contrast, saturation (and hue
    where asked) with their factors drawn first, then applied in a random order, each step rounded
    to uint8; and the recipe's values in the configs (blur 0.5 / jitter 0.5 for Cityscapes,
    jitter 0.3 + hue 0.1 for CamVid, none for the short synthetic demo run)."""
    from PIL import Image

    from jax_csfcn.data.pipeline import _jitter

    img = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    orders = set()
    for seed in range(12):
        rng = np.random.default_rng(seed)
        b, c, s = rng.uniform(0.5, 1.5, 3)
        h = rng.uniform(-0.1, 0.1)
        order = tuple(int(i) for i in rng.permutation([0, 1, 2, 3]))
        orders.add(order)
        want = img
        for op in order:
            x = want.astype(np.float32)
            if op == 0:
                want = np.clip(np.rint(x * np.float32(b)), 0, 255).astype(np.uint8)
            elif op == 1:
                m = float((x @ np.array([0.299, 0.587, 0.114], np.float32)).mean())
                want = np.clip(np.rint((x - m) * np.float32(c) + m), 0, 255).astype(np.uint8)
            elif op == 2:
                g = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
                want = np.clip(np.rint((x - g) * np.float32(s) + g), 0, 255).astype(np.uint8)
            else:
                hsv = np.array(Image.fromarray(want).convert("HSV"))
                hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(h * 255))) % 256
                want = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
        got = _jitter(img, 0.5, np.random.default_rng(seed), hue=0.1)
        np.testing.assert_array_equal(got, want)
    assert len(orders) > 3  # the order really varies

    from jax_csfcn.cli import load_config_file

    root = Path(__file__).resolve().parents[1] / "configs"
    cs, cam, syn = (load_config_file(str(root / n)) for n in ("cityscapes.py", "camvid.py", "synthetic.py"))
    assert (cs.data.blur_prob, cs.data.color_jitter, cs.data.hue_jitter) == (0.5, 0.5, 0.0)
    assert (cam.data.blur_prob, cam.data.color_jitter, cam.data.hue_jitter) == (0.5, 0.3, 0.1)
    assert (syn.data.blur_prob, syn.data.color_jitter) == (0.0, 0.0)
    assert AugmentConfig().blur_sigma == (0.0, 1.0)  # the upstream's radius ~ U(0, 1)
