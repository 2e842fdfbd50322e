"""The errors every labelled-image dataset gives alike (Cityscapes and CamVid layouts): a missing
root, an image without its label, a damaged or vanished file named when it is read (through grain
too, the other records unharmed), sizes that differ, an image that is not RGB, a colour picture
where the class indices belong. Each dataset's own errors stay in its test file."""

from __future__ import annotations

import grain
import numpy as np
import pytest
from PIL import Image

from jax_csfcn.data.camvid import CamVidSource, write_synthetic_camvid
from jax_csfcn.data.cityscapes import CityscapesSource, DataError
from jax_csfcn.data.synthetic import write_synthetic_cityscapes


def _cityscapes(root):
    write_synthetic_cityscapes(root, splits={"train": 2}, size=(32, 64), progress=False)
    img = sorted((root / "leftImg8bit" / "train").rglob("*.png"))[0]
    lab = root / "gtFine" / "train" / img.parent.name / img.name.replace("_leftImg8bit", "_gtFine_labelIds")
    return CityscapesSource, img, lab


def _camvid(root):
    write_synthetic_camvid(root, splits={"train": 2}, size=(32, 64), list_files=False)
    img = sorted((root / "train").iterdir())[0]
    return CamVidSource, img, root / "trainannot" / img.name


@pytest.fixture(params=[_cityscapes, _camvid], ids=["cityscapes", "camvid"])
def tiny(request, tmp_path):
    """(source class, root, image path, label path) of a private 2-image dataset a test may break."""
    cls, img, lab = request.param(tmp_path)
    return cls, tmp_path, img, lab


def test_missing_root(tiny, tmp_path):
    cls, _, _, _ = tiny
    with pytest.raises(DataError, match=r"nowhere.*(does not exist|not found)|(does not exist|not found).*nowhere"):
        cls(tmp_path / "nowhere", "train")


def test_image_without_label(tiny):
    cls, root, img, lab = tiny
    lab.unlink()
    with pytest.raises(DataError, match=rf"{img.name}.*no label file.*{lab.name}"):
        cls(root, "train")


@pytest.mark.parametrize("which", ["image", "label"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_file_is_named_when_read(tiny, which, damage):
    cls, root, img, lab = tiny
    path = img if which == "image" else lab
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a png at all" * 10)
    src = cls(root, "train")  # the layout is fine: the damage shows at read time
    with pytest.raises(DataError, match=rf"cannot decode {which} .*{path.name}"):
        src[0]
    with pytest.raises(DataError, match=path.name):  # and through grain, unchanged
        grain.MapDataset.source(src)[0]
    src[1]  # the other record still reads


def test_a_file_that_disappears_is_named(tiny):
    cls, root, img, _ = tiny
    src = cls(root, "train")
    img.unlink()
    with pytest.raises(DataError, match=rf"{img.name}.*disappeared|disappeared.*{img.name}"):
        src[0]


def test_image_label_size_mismatch(tiny):
    cls, root, img, lab = tiny
    Image.open(lab).resize((32, 16), Image.NEAREST).save(lab)
    with pytest.raises(DataError, match=rf"{img.name} is 64x32.*{lab.name} is 32x16"):
        cls(root, "train")[0]


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_image_not_rgb(tiny, mode):
    cls, root, img, _ = tiny
    Image.open(img).convert(mode).save(img)
    with pytest.raises(DataError, match=rf"{img.name} has mode '{mode}'"):
        cls(root, "train")[0]


def test_colour_label_rejected(tiny):
    cls, root, img, lab = tiny
    Image.open(img).save(lab)  # an RGB picture where the class indices belong
    with pytest.raises(DataError, match=rf"{lab.name} has mode 'RGB'"):
        cls(root, "train")[0]


def test_an_empty_label_image_is_not_data(tiny):
    """A zero-size label file is a damaged file, named, not an empty segmentation."""
    cls, root, _, lab = tiny
    lab.write_bytes(b"")
    src = cls(root, "train")
    with pytest.raises(DataError, match=lab.name):
        src[0]
    assert np.asarray(src[1]["label"]).size > 0
