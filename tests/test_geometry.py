"""The training geometry on the device (jax_csfcn/data/geometry.py) against Pillow on the host.

Everything here is integer arithmetic, so the rule is equality: the tables applied in numpy and
in JAX give exactly the bytes of ``augment_record`` with ``geometry="host"`` (Pillow's resize with
a box, pad, flip), for fresh random images and draws, labels included.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jax_csfcn.data import geometry as geo
from jax_csfcn.data.augment import AugmentConfig, PipelineError, augment_record, scaled_size


@pytest.fixture
def rng():
    return np.random.default_rng()


def _pair(aug: AugmentConfig, image, label, seed: int):
    """(host record, device-geometry record) of the same draws."""
    host = augment_record(image, label, dataclasses.replace(aug, geometry="host"), np.random.default_rng(seed))
    dev = augment_record(image, label, dataclasses.replace(aug, geometry="device"), np.random.default_rng(seed))
    return host, dev


def _random_case(rng, h_range=(2, 160), crop_range=(1, 96)):
    h, w = (int(v) for v in rng.integers(*h_range, size=2))
    crop = tuple(int(v) for v in rng.integers(*crop_range, size=2))
    aug = AugmentConfig(crop_size=crop, scale_range=(0.125, 2.0), photometric="device")
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, 256, (h, w), dtype=np.uint8)
    return aug, image, label


def test_tables_give_pillows_bytes(rng):
    """Random sizes from 2 px (every rounding and edge case of the windows), crops smaller and
    larger than the scaled image, flips: the numpy application of the tables is Pillow's output."""
    orders = set()
    for _ in range(150):
        aug, image, label = _random_case(rng)
        host, dev = _pair(aug, image, label, int(rng.integers(2**32)))
        img, lab = geo.apply_geometry_host(dev["image"], dev["label"], dev["geometry"], ignore_index=aug.ignore_index)
        np.testing.assert_array_equal(img, host["image"])
        np.testing.assert_array_equal(lab, host["label"])
        np.testing.assert_array_equal(dev["photometric"]["content"], host["photometric"]["content"])
        orders.add(int(dev["geometry"]["vertical_first"]))
    assert 0 in orders


def test_the_pass_order_is_pillows():
    """A tall source shrunk in height: Pillow 13 runs the vertical pass first, which rounds
    differently; the tables follow the installed Pillow (both orders compared on the same draw)."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (120, 30, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (120, 30), dtype=np.uint8)
    aug = AugmentConfig(crop_size=(24, 40), scale_range=(0.5, 0.5), flip=False, photometric="device")
    host, dev = _pair(aug, image, label, 0)
    t = dev["geometry"]
    assert bool(t["vertical_first"]) == geo._PILLOW_ORDERS_BY_SIZE  # H - oh = 96 > 2 * (W - ow) = 30
    img, _ = geo.apply_geometry_host(image, label, t, ignore_index=255)
    np.testing.assert_array_equal(img, host["image"])
    other, _ = geo.apply_geometry_host(
        image, label, {**t, "vertical_first": np.int32(1 - t["vertical_first"])}, ignore_index=255
    )
    assert (other != host["image"]).any(), "the two orders round alike here: pick another case"


def test_device_equals_the_tables_in_numpy(rng):
    """The jitted batch version, with both pass orders in one batch, gives the numpy bytes."""
    import jax

    h, w = 100, 60
    aug = AugmentConfig(crop_size=(64, 64), scale_range=(0.125, 1.5), photometric="device", geometry="device")
    orders = geo.possible_orders(aug, (h, w))
    want_both = geo._PILLOW_ORDERS_BY_SIZE
    assert orders == (geo.ORDERS if want_both else geo.ORDERS[:1])
    records, flags = [], set()
    while len(records) < 4 or (want_both and len(flags) < 2):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = rng.integers(0, 19, (h, w), dtype=np.uint8)
        rec = augment_record(image, label, aug, np.random.default_rng(int(rng.integers(2**32))))
        flags.add(int(rec["geometry"]["vertical_first"]))
        records.append(rec)
    records = records[-4:] if len(flags) < 2 else records
    tables = geo.stack_geometry([r["geometry"] for r in records])
    images = np.stack([r["image"] for r in records])
    labels = np.stack([r["label"] for r in records])
    fn = jax.jit(lambda a, b, t: geo.apply_geometry(a, b, t, ignore_index=255, orders=orders))
    got_img, got_lab = (np.asarray(v) for v in fn(images, labels, tables))
    for i, r in enumerate(records):
        img, lab = geo.apply_geometry_host(r["image"], r["label"], r["geometry"], ignore_index=255)
        np.testing.assert_array_equal(got_img[i], img)
        np.testing.assert_array_equal(got_lab[i], lab)
    if want_both:
        with pytest.raises(ValueError, match="leaves out"):
            geo.apply_geometry(images, labels, tables, ignore_index=255, orders=geo.ORDERS[:1])


def test_possible_orders_and_taps_cover_every_draw(rng):
    """Every drawn record's pass order is among possible_orders and its window fits max_taps;
    the upstream Cityscapes recipe (1024x2048, 1024x1024 crops) only ever runs horizontal first."""
    big = AugmentConfig(photometric="device")
    assert geo.possible_orders(big, (1024, 2048)) == ("horizontal_first",)
    assert geo.max_taps(big, (1024, 2048)) >= 17  # the 1/8 scale: a 16-pixel triangle, 17 taps
    for _ in range(20):
        aug, image, label = _random_case(rng, h_range=(8, 200), crop_range=(4, 120))
        orders = geo.possible_orders(aug, label.shape)
        taps = geo.max_taps(aug, label.shape)
        for _ in range(25):
            r = np.random.default_rng(int(rng.integers(2**32)))
            nh, nw = scaled_size(label.shape, r.uniform(*aug.scale_range), None)
            oh, ow = min(aug.crop_size[0], nh), min(aug.crop_size[1], nw)
            assert geo.ORDERS[int(geo.vertical_first(label.shape, (oh, ow)))] in orders
            y0, x0 = int(r.integers(0, nh - oh + 1)), int(r.integers(0, nw - ow + 1))
            t = geo.geometry_tables(label.shape, (nh, nw), (y0, x0), (oh, ow), aug.crop_size, False, taps)
            assert t["x_weights"].shape[1] == taps


def test_loader_batches_equal_after_the_device_step():
    """The loader with the geometry left to the device, then apply_geometry: the host loader's
    batches exactly, photometric parameters included."""
    from jax_csfcn.data.pipeline import train_loader

    rng = np.random.default_rng()

    class Source:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            r = np.random.default_rng(i)
            return {
                "image": r.integers(0, 256, (40, 56, 3), dtype=np.uint8),
                "label": r.integers(0, 19, (40, 56), dtype=np.uint8),
                "name": f"r{i}",
            }

    aug = AugmentConfig(
        crop_size=(32, 32), scale_range=(0.25, 1.75), blur_prob=0.5, color_jitter=0.4, photometric="device"
    )
    dev_aug = dataclasses.replace(aug, geometry="device", source_size=(40, 56))
    seed = int(rng.integers(1000))
    a = iter(train_loader(Source(), aug, batch_size=2, seed=seed))
    b = iter(train_loader(Source(), dev_aug, batch_size=2, seed=seed))
    orders = geo.possible_orders(dev_aug, (40, 56))
    for _ in range(4):  # across an epoch boundary
        x, y = next(a), next(b)
        assert y["image"].shape == (2, 40, 56, 3)
        img, lab = geo.apply_geometry(y["image"], y["label"], y["geometry"], ignore_index=255, orders=orders)
        np.testing.assert_array_equal(np.asarray(img), x["image"])
        np.testing.assert_array_equal(np.asarray(lab), x["label"])
        for k in x["photometric"]:
            np.testing.assert_array_equal(y["photometric"][k], x["photometric"][k])


def test_a_record_of_another_size_is_refused_by_name(rng):
    aug = AugmentConfig(crop_size=(16, 16), photometric="device", geometry="device", source_size=(32, 48))
    image = rng.integers(0, 256, (30, 48, 3), dtype=np.uint8)
    with pytest.raises(PipelineError, match=r"record 'b/odd' is 30x48 among 32x48 sources.*data\.geometry=host"):
        augment_record(image, np.zeros((30, 48), np.uint8), aug, np.random.default_rng(0), "b/odd")
    with pytest.raises(ValueError, match="needs AugmentConfig.photometric='device'"):
        AugmentConfig(geometry="device", photometric="host")
