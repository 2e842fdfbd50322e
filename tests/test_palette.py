"""Palettes, label colouring, legend, Cityscapes id mapping and the atomic PNG writer."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as cs_labels
from cityscapesscripts.helpers.labels import trainId2label
from PIL import Image

from csfcn import palette as P


def test_cityscapes_table_comes_from_cityscapesscripts():
    assert len(P.CITYSCAPES_NAMES) == 19 == len(P.CITYSCAPES_PALETTE)
    for k in range(19):
        assert P.CITYSCAPES_NAMES[k] == trainId2label[k].name
        assert tuple(P.CITYSCAPES_PALETTE[k]) == trainId2label[k].color
        assert P.CITYSCAPES_LABEL_IDS[k] == trainId2label[k].id
    assert P.CITYSCAPES_NAMES[0] == "road" and P.CITYSCAPES_NAMES[-1] == "bicycle"


def test_camvid_palette():
    names, pal = P.dataset_palette("camvid")
    assert len(names) == 11 == len(pal) and pal.dtype == np.uint8
    assert len({tuple(c) for c in pal}) == 11  # distinct colours
    assert names[0] == "Sky" and names[-1] == "Bicyclist"
    try:
        from jax_csfcn.data import camvid
    except ImportError:
        return
    assert tuple(camvid.CLASS_NAMES) == names
    np.testing.assert_array_equal(camvid.PALETTE, pal)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset/palette 'kitti'"):
        P.dataset_palette("kitti")
    assert P.dataset_palette("CityScapes")[0] == P.CITYSCAPES_NAMES


def test_colorize(rng):
    labels = rng.integers(0, 19, (7, 9)).astype(np.uint8)
    labels[0, 0] = 255
    labels[1, 1] = 40  # beyond the palette
    out = P.colorize(labels, P.CITYSCAPES_PALETTE)
    assert out.shape == (7, 9, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[2, 3], P.CITYSCAPES_PALETTE[labels[2, 3]])
    assert out[0, 0].tolist() == [0, 0, 0] and out[1, 1].tolist() == [0, 0, 0]
    mask = labels < 19
    np.testing.assert_array_equal(out[mask], P.CITYSCAPES_PALETTE[labels[mask]])
    with pytest.raises(ValueError, match="2-D"):
        P.colorize(labels[None], P.CITYSCAPES_PALETTE)
    with pytest.raises(ValueError, match="integers"):
        P.colorize(labels.astype(np.float32), P.CITYSCAPES_PALETTE)
    with pytest.raises(ValueError, match="palette"):
        P.colorize(labels, P.CITYSCAPES_PALETTE[:, :2])


def test_overlay(rng):
    image = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    labels = rng.integers(0, 11, (6, 8)).astype(np.int32)
    labels[0, :] = 255
    pal = P.CAMVID_PALETTE
    np.testing.assert_array_equal(P.overlay(image, labels, pal, 0.0), image)
    full = P.overlay(image, labels, pal, 1.0)
    np.testing.assert_array_equal(full[1:], pal[labels[1:]])
    np.testing.assert_array_equal(full[0], image[0])  # ignore keeps the image
    half = P.overlay(image, labels, pal, 0.5)
    want = np.rint(0.5 * image[1:].astype(np.float32) + 0.5 * pal[labels[1:]].astype(np.float32))
    np.testing.assert_array_equal(half[1:], want.astype(np.uint8))
    with pytest.raises(ValueError, match="opacity"):
        P.overlay(image, labels, pal, 1.5)
    with pytest.raises(ValueError, match="must be"):
        P.overlay(image[:5], labels, pal)


def test_legend_image():
    img = P.legend_image(P.CITYSCAPES_NAMES, P.CITYSCAPES_PALETTE)
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    arr = np.asarray(img)
    swatch, pad = 20, 4
    assert arr.shape[0] == pad + 19 * (swatch + pad)
    for k in range(19):  # the centre of each swatch has the class colour
        y = pad + k * (swatch + pad) + swatch // 2
        np.testing.assert_array_equal(arr[y, pad + swatch // 2], P.CITYSCAPES_PALETTE[k])
    # the names are drawn: the text column is not blank
    assert (arr[:, pad + swatch + 8 :] < 128).any()
    with pytest.raises(ValueError, match="names"):
        P.legend_image(P.CITYSCAPES_NAMES[:3], P.CITYSCAPES_PALETTE)


def test_train_id_to_label_id():
    ids = P.train_id_to_label_id(np.array([[0, 1, 18, 255]], np.uint8))
    assert ids.dtype == np.uint8
    assert ids.tolist() == [[7, 8, 33, 0]]
    all_ids = P.train_id_to_label_id(np.arange(19))
    assert all_ids.tolist() == [trainId2label[k].id for k in range(19)]
    unlabeled = [lab.id for lab in cs_labels if lab.name == "unlabeled"]
    assert P.train_id_to_label_id(np.array([255]))[0] == unlabeled[0]
    with pytest.raises(ValueError, match=r"found \[19, 200\]"):
        P.train_id_to_label_id(np.array([3, 19, 200]))
    with pytest.raises(ValueError, match="integers"):
        P.train_id_to_label_id(np.zeros(3, np.float32))


def test_write_png_roundtrip(tmp_path, rng):
    gray = rng.integers(0, 19, (5, 7)).astype(np.uint8)
    rgb = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
    P.write_png(tmp_path / "a.png", gray)
    P.write_png(tmp_path / "b.png", rgb)
    P.write_png(tmp_path / "c.png", Image.fromarray(rgb))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), gray)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.png")), rgb)
    assert oct(os.stat(tmp_path / "a.png").st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.png", "c.png"]
    with pytest.raises(ValueError, match="uint8"):
        P.write_png(tmp_path / "d.png", gray.astype(np.int32))
    assert not (tmp_path / "d.png").exists()


def test_write_png_is_atomic(tmp_path, rng, monkeypatch):
    """A writer that dies half way leaves neither the target nor its temporary file behind."""
    dst = tmp_path / "x.png"
    P.write_png(dst, np.full((4, 4), 3, np.uint8))
    before = dst.read_bytes()

    def dying_save(self, fp, *a, **k):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        P.write_png(dst, np.zeros((4, 4), np.uint8))
    with pytest.raises(OSError, match="disk full"):
        P.write_png(tmp_path / "new.png", np.zeros((4, 4), np.uint8))
    assert dst.read_bytes() == before  # the old complete file is untouched
    assert sorted(os.listdir(tmp_path)) == ["x.png"]


def test_palette_imports_neither_jax_nor_torch():
    code = (
        "import sys, csfcn.palette as p; p.colorize(p.np.zeros((2, 2), p.np.uint8), p.CAMVID_PALETTE); "
        "bad = [m for m in ('jax', 'torch', 'flax') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
