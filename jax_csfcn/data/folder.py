"""Your own dataset: image and mask folders (or a list file of pairs) and a class table.

The command line is ``python -m tools.folder_data`` (tools/folder_data.py).

``data.dataset = "folder"`` reads::

    root/classes.json                       the class table (csfcn/class_table.py; or data.classes)
    root/images/{split}/**/NAME.{png,jpg,jpeg}
    root/masks/{split}/**/NAME.png          the mask of each image, same relative path, PNG

(symbolic links to folders under ``images/{split}`` are followed, each named once on stderr; a
link back to a folder above it, a cycle, is skipped with a note)

or, when it exists, a list file ``root/{split}.txt`` of ``image_path mask_path`` pairs, one per
line (blank lines and ``#`` comments skipped; a relative path is read under ``root``; a path
whose last two parts exist under ``root`` is found there too, so lists written on another
machine work where the folder is unpacked).  Any image size (an image and its mask must match),
any number of classes, index masks (one value per pixel: 8- or 16-bit, or palette PNGs, whose
indices are what is stored) or colour-coded RGB masks, mapped to train ids by the table.

    src = FolderSource("data/leaves", "train")
    item = src[0]   # {"image": uint8 HxWx3, "label": uint8 HxW train ids (255 = ignore), "name": rel path}

Bad data fails loudly with the offending file in the message: layout and table problems when
the source is built, decoding problems and mask values outside the table when the item is read.
:func:`write_synthetic_folder` writes the synthetic street scenes in this layout with a
colour-coded table (tests, the README's example).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import name2label
from PIL import Image
from tqdm import tqdm

from csfcn.class_table import IGNORE_INDEX, TABLE_NAME, ClassTable, ClassTableError, read_class_table, write_class_table
from csfcn.files import walk_files
from jax_csfcn.data.cityscapes import DataError, PairSource
from jax_csfcn.data.synthetic import generate_scene

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
MASK_EXT = ".png"
IMAGE_DIR, MASK_DIR = "images", "masks"
LIST_SUFFIX = ".txt"
_NOTED: set = set()  # the link notes already printed by this process (a source is built once per split)


def _resolve(text: str, root: Path) -> Path | None:
    """A path from a list file: as written (relative: under ``root``), else its last two parts
    under ``root``; None when neither exists."""
    p = Path(text)
    candidates = [p if p.is_absolute() else root / p]
    if len(p.parts) >= 2:
        candidates.append(root.joinpath(*p.parts[-2:]))
    return next((c for c in candidates if c.is_file()), None)


def read_pair_list(list_file: Path, root: Path) -> list[tuple[Path, Path]]:
    """``(image, label)`` paths of a list file of ``image_path label_path`` lines; errors name the line."""
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read list file {list_file}: {type(e).__name__}: {e}") from e
    pairs = []
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DataError(
                f"{list_file} line {lineno}: expected 'image_path label_path', got {len(fields)} field(s): {line!r}"
            )
        img = _resolve(fields[0], root)
        if img is None:
            raise DataError(
                f"{list_file} line {lineno}: image {fields[0]} not found (also tried it under {root}); "
                "fix the path or the dataset root"
            )
        lab = _resolve(fields[1], root)
        if lab is None:
            raise DataError(
                f"{list_file} line {lineno}: image {img} has no label file: {fields[1]} not found "
                f"(also tried it under {root}); add the label or remove the line"
            )
        pairs.append((img, lab))
    return pairs


def _record_name(img: Path, root: Path) -> str:
    """A list file's image named by its path under ``root``, or by its file name when it lies
    elsewhere (names become dump file names, which must stay inside the dump folder)."""
    try:
        return os.fspath(img.resolve().relative_to(root.resolve()))
    except ValueError:
        return img.name


def list_splits(root: Path) -> list[str]:
    """The ``{split}.txt`` files of ``root`` that are pair lists (a README.txt is not)."""
    out = []
    for p in sorted(root.glob(f"*{LIST_SUFFIX}")):
        try:
            lines = [ln.split() for ln in p.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        except (OSError, UnicodeDecodeError):
            continue
        if lines and len(lines[0]) == 2:
            out.append(p.stem)
    return out


def table_path(root, classes: str | None = None) -> Path:
    """The class table of a folder dataset: ``classes`` when given, else ``root/classes.json``."""
    return Path(classes) if classes else Path(root) / TABLE_NAME


def read_table(root, classes: str | None = None) -> ClassTable:
    """The checked class table of a folder dataset (a :class:`DataError` on any problem)."""
    try:
        return read_class_table(table_path(root, classes))
    except ClassTableError as e:
        raise DataError(str(e)) from None


class FolderSource(PairSource):
    """``grain`` RandomAccessDataSource over one split of a folder dataset (module docstring).

    Holds only file paths and the table, so it pickles cheaply into grain worker processes.
    """

    def __init__(self, root, split: str, classes: str | None = None):
        self.root, self.split = Path(root), str(split)
        if not self.root.is_dir():
            raise DataError(
                f"dataset root {self.root} does not exist or is not a directory; set data.root to the folder "
                f"holding {IMAGE_DIR}/{self.split}/ and {MASK_DIR}/{self.split}/ (or {self.split}{LIST_SUFFIX})"
            )
        self.table = read_table(self.root, classes)
        list_file = self.root / (self.split + LIST_SUFFIX)
        if list_file.is_file():
            pairs = read_pair_list(list_file, self.root)
            where = f"list file {list_file}"
            names = [_record_name(img, self.root) for img, _ in pairs]
        else:
            pairs, names = self._scan()
            where = f"{self.root / IMAGE_DIR / self.split}"
        if not pairs:
            raise DataError(f"split {self.split!r} of {self.root} is empty: no images in {where}")
        self._images = [os.fspath(img) for img, _ in pairs]
        self._labels = [os.fspath(lab) for _, lab in pairs]
        self._names = [os.path.splitext(n)[0] for n in names]

    def _scan(self) -> tuple[list[tuple[Path, Path]], list[str]]:
        image_dir, mask_dir = self.root / IMAGE_DIR / self.split, self.root / MASK_DIR / self.split
        if not image_dir.is_dir():
            have = list_splits(self.root)
            if (self.root / IMAGE_DIR).is_dir():
                have += sorted(p.name for p in (self.root / IMAGE_DIR).iterdir() if p.is_dir())
            raise DataError(
                f"split {self.split!r} not found: neither {self.root / (self.split + LIST_SUFFIX)} nor {image_dir}/ "
                f"exists (splits present under {self.root}: {sorted(set(have)) or 'none'})"
            )
        if not mask_dir.is_dir():
            raise DataError(
                f"mask folder {mask_dir} is missing: the images of {image_dir} need their masks there (same "
                f"relative path, {MASK_EXT}), or list the pairs in {self.root / (self.split + LIST_SUFFIX)}"
            )
        found, followed, cycles = walk_files(image_dir)  # links to folders are followed, and said once
        notes = [f"following the symbolic link {link} -> {target}" for link, target in followed]
        notes += [
            f"skipping the symbolic link {link} -> {target}: it leads back to a folder above it (a cycle)"
            for link, target in cycles
        ]
        for note in notes:
            if note not in _NOTED:
                _NOTED.add(note)
                print(f"note: split {self.split!r}: {note}", file=sys.stderr)
        images = [p for p in found if p.suffix.lower() in IMAGE_EXTS]
        rels = [p.relative_to(image_dir) for p in images]
        masks = [mask_dir / rel.with_suffix(MASK_EXT) for rel in rels]
        missing = [(img, m) for img, m in zip(images, masks) if not m.is_file()]
        if missing:
            img, m = missing[0]
            raise DataError(
                f"image {img} has no mask {m} ({len(missing)} of {len(images)} images in split {self.split!r} "
                "lack one); add the masks or remove the images"
            )
        return list(zip(images, masks)), [os.fspath(r) for r in rels]

    def __repr__(self) -> str:  # grain uses the repr to check a restored loader state matches
        return f"FolderSource(root={os.fspath(self.root)!r}, split={self.split!r}, n={len(self)})"

    def name(self, index: int) -> str:
        """The image's path relative to its split folder (or root), without the extension."""
        return self._names[index]

    def train_ids(self, lab: Image.Image, lab_path) -> np.ndarray:
        if self.table.mask == "color":
            mask = np.asarray(lab.convert("RGB"))
        elif lab.mode == "1":  # a 1-bit PNG: a binary mask, stored values 0 and 255
            mask = np.asarray(lab.convert("L"))
        elif lab.mode in ("L", "P", "I", "I;16"):
            mask = np.asarray(lab)  # for "P": the palette indices, which are what gets stored
        else:
            raise DataError(
                f"mask {lab_path} has mode {lab.mode!r} but {self.table.source} says mask=index (one value per "
                'pixel); for colour-coded masks set "mask": "color" in the table'
            )
        try:
            return self.table.to_train_ids(mask, lab_path)
        except ClassTableError as e:
            raise DataError(str(e)) from None


# A small colour-coded label space for the synthetic example: the street scenes' classes merged
# into five, stored as RGB masks (the Cityscapes label id of each scene pixel picks the class).
EXAMPLE_CLASSES = (
    ("flat", (128, 64, 128), ("road", "sidewalk", "parking", "rail track")),
    ("construction", (70, 70, 70), ("building", "wall", "fence", "guard rail", "bridge", "tunnel")),
    ("nature", (107, 142, 35), ("vegetation", "terrain")),
    ("sky", (70, 130, 180), ("sky",)),
    (
        "object",
        (220, 20, 60),
        (
            "pole",
            "traffic light",
            "traffic sign",
            "person",
            "rider",
            "car",
            "truck",
            "bus",
            "train",
            "motorcycle",
            "bicycle",
        ),
    ),
)
EXAMPLE_IGNORE = (0, 0, 0)  # drawn black: the scenes' void pixels


def write_synthetic_folder(
    root,
    *,
    splits=None,
    size=(96, 128),
    seed: int = 0,
    classes=EXAMPLE_CLASSES,
    mask: str = "color",
    progress: bool = False,
) -> dict:
    """Write synthetic scenes as a folder dataset with its ``classes.json``; returns the counts.

    ``classes``: ``(name, colour, Cityscapes class names it merges)`` per train id (default
    :data:`EXAMPLE_CLASSES`).  Images go to ``root/images/{split}/scene_NNNN.jpg`` (JPEG, to
    exercise that path) and masks to ``root/masks/{split}/scene_NNNN.png``: RGB in the class
    colours with void black (``mask="color"``), or one byte per pixel holding ``10 * (train id
    + 1)`` with void 0 (``mask="index"``, listed as each class's ``values``: raw values that are
    not the train ids, as in most user data).  The table lists the void value under ``ignore``.
    """
    if mask not in ("color", "index"):
        raise ValueError(f"mask={mask!r}: choose 'color' or 'index'")
    splits = dict(splits if splits is not None else {"train": 8, "val": 2})
    root = Path(root)
    # Cityscapes label id -> mask value (void: black / 0)
    lut = np.zeros((256, 3) if mask == "color" else 256, np.uint8)
    for i, (_, colour, members) in enumerate(classes):
        for m in members:
            lut[name2label[m].id] = colour if mask == "color" else 10 * (i + 1)
    write_class_table(
        root / TABLE_NAME,
        [n for n, _, _ in classes],
        [c for _, c, _ in classes],
        mask=mask,
        values=None if mask == "color" else [[10 * (i + 1)] for i in range(len(classes))],
        ignore=[EXAMPLE_IGNORE if mask == "color" else 0],
    )
    for split, n in splits.items():
        (root / IMAGE_DIR / split).mkdir(parents=True, exist_ok=True)
        (root / MASK_DIR / split).mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(int(n)), desc=f"folder {split} -> {root}", disable=not progress, unit="img"):
            image, ids = generate_scene(seed, f"folder-{split}", i, size)
            Image.fromarray(image).save(root / IMAGE_DIR / split / f"scene_{i:04d}.jpg", quality=95)
            Image.fromarray(lut[ids]).save(root / MASK_DIR / split / f"scene_{i:04d}.png", compress_level=1)
    return {split: int(n) for split, n in splits.items()}


def survey(src: FolderSource, *, progress: bool = True) -> dict:
    """Read every record of ``src`` (so a bad file fails now, named) and count what it holds:
    images, their sizes, and each class's pixels (and ignored ones)."""
    counts = np.zeros(256, np.int64)
    sizes: dict[tuple[int, int], int] = {}
    for i in tqdm(range(len(src)), desc=f"check {src.split}", unit="img", disable=not progress):
        label = src[i]["label"]
        counts += np.bincount(label.ravel(), minlength=256)
        sizes[label.shape] = sizes.get(label.shape, 0) + 1
    k = src.table.num_classes
    return {
        "split": src.split,
        "images": len(src),
        "sizes": {f"{h}x{w}": n for (h, w), n in sorted(sizes.items())},
        "pixels": {name: int(counts[i]) for i, name in enumerate(src.table.names)},
        "ignored": int(counts[IGNORE_INDEX]),
        "absent": [src.table.names[i] for i in range(k) if counts[i] == 0],
    }


def format_survey(s: dict) -> str:
    total = sum(s["pixels"].values()) + s["ignored"]
    lines = [f"split {s['split']!r}: {s['images']} images, sizes (HxW: count) {s['sizes']}"]
    lines += [f"  {name:<24} {n:>12,} px  {100 * n / max(1, total):5.1f} %" for name, n in s["pixels"].items()]
    lines.append(f"  {'(ignore)':<24} {s['ignored']:>12,} px  {100 * s['ignored'] / max(1, total):5.1f} %")
    if s["absent"]:
        lines.append(f"  no pixels of: {', '.join(s['absent'])} (the model cannot learn what it never sees)")
    return "\n".join(lines)
