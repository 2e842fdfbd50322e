"""A user's own label space: the class table file of a custom dataset, read and checked.

numpy only (YAML through PyYAML when the file is ``.yaml``/``.yml``).  The format
(README, "Your own data")::

    {
      "mask": "index",                 # "index": single-channel masks; "color": RGB masks
      "classes": [
        {"name": "background", "color": [0, 0, 0], "values": [0]},
        {"name": "lesion", "color": [255, 0, 0], "values": [255]}
      ],
      "ignore": [128]                  # mask values (or colours) that count for nothing
    }

* ``classes`` is in train-id order: class ``i`` of the list is train id ``i`` (an entry may
  say ``"train_id": i`` to make that explicit; it must then equal its position).
* ``values`` lists the raw mask values that become that class: integers 0..65535 for index
  masks, ``[r, g, b]`` triples for colour masks.  Without it an index mask stores the train
  id itself and a colour mask stores the class's ``color``.
* ``ignore`` lists raw values that become 255 (ignore).  Its default is ``[255]`` for index
  masks (unless a class claims 255, as binary 0/255 masks do) and nothing for colour masks.
* Any other value found in a mask is an error naming the file, the value and the table.

:meth:`ClassTable.model_classes` is what travels inside a checkpoint
(``csfcn.model_config.ModelConfig.classes``): names, display colours and the raw value each
train id is written back as (an index or a colour), so ``predict`` and the dumps of ``evaluate``
draw and name the user's classes without the table file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np

from csfcn.files import write_atomic

IGNORE_INDEX = 255
MASK_KINDS = ("index", "color")
TABLE_NAME = "classes.json"  # the default table file in a dataset's root
_MAX_INDEX_VALUE = 65535  # 16-bit PNG masks


class ClassTableError(ValueError):
    """A class table file or a mask that does not match it; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class ClassTable:
    """The checked contents of a class table file (see the module docstring)."""

    names: tuple[str, ...]
    colors: np.ndarray  # uint8 (K, 3): display colour of each train id
    mask: str  # "index" or "color"
    values: tuple[tuple, ...]  # per train id: its raw values (ints, or (r, g, b) tuples)
    ignore: tuple  # raw values that become IGNORE_INDEX
    source: str = "class table"

    @property
    def num_classes(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------------ masks -> train ids
    def to_train_ids(self, mask: np.ndarray, path) -> np.ndarray:
        """uint8 (H, W) train ids of a decoded mask (H, W) or (H, W, 3); unknown values raise."""
        mask = np.asarray(mask)
        if self.mask == "index":
            if mask.ndim != 2:
                raise ClassTableError(
                    f"mask {path} has shape {mask.shape}: {self.source} says mask=index (one channel of class "
                    f'values); for colour-coded masks set "mask": "color"'
                )
            if mask.size and (mask.min() < 0 or mask.max() > _MAX_INDEX_VALUE):
                raise ClassTableError(f"mask {path} has values outside 0..{_MAX_INDEX_VALUE}")
            keys = mask.astype(np.int64)
        else:
            if mask.ndim != 3 or mask.shape[2] < 3:
                raise ClassTableError(
                    f"mask {path} has shape {mask.shape}: {self.source} says mask=color (RGB masks); for "
                    f'single-channel masks set "mask": "index"'
                )
            rgb = mask[..., :3].astype(np.int64)
            keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        lut_keys, lut_ids = self._lookup
        pos = np.searchsorted(lut_keys, keys)
        pos = np.minimum(pos, len(lut_keys) - 1)
        known = lut_keys[pos] == keys
        if not known.all():
            found = np.unique(keys[~known])[:10]
            shown = [int(v) for v in found] if self.mask == "index" else [_rgb(int(v)) for v in found]
            raise ClassTableError(
                f"mask {path} contains values {shown} ({int((~known).sum())} pixels) that are not in {self.source} "
                f'(known: {self._known_summary()}); add them to a class\'s "values" or to "ignore"'
            )
        return lut_ids[pos].astype(np.uint8)

    @functools.cached_property
    def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted mask keys, their train ids): built once per table, not per mask read."""
        pairs = [(_key(v, self.mask), i) for i, vals in enumerate(self.values) for v in vals]
        pairs += [(_key(v, self.mask), IGNORE_INDEX) for v in self.ignore]
        pairs.sort()
        return np.array([k for k, _ in pairs], np.int64), np.array([i for _, i in pairs], np.int64)

    def _known_summary(self) -> str:
        parts = [f"{n}={list(v) if len(v) > 1 else v[0]}" for n, v in zip(self.names, self.values)]
        text = ", ".join(str(p) for p in parts[:12]) + (" ..." if len(parts) > 12 else "")
        return text + (f"; ignore={list(self.ignore)}" if self.ignore else "")

    # ------------------------------------------------------------------ what a checkpoint carries
    def raw_ids(self) -> tuple:
        """The mask value each train id is written back as: its first value (an int for index
        masks, an (r, g, b) tuple for colour masks)."""
        return tuple(int(v[0]) if self.mask == "index" else tuple(int(c) for c in v[0]) for v in self.values)

    def model_classes(self) -> tuple:
        """``((name, (r, g, b), raw value), ...)``: the ModelConfig.classes of this label space."""
        return tuple(
            (n, tuple(int(c) for c in col), raw) for n, col, raw in zip(self.names, self.colors, self.raw_ids())
        )


def _rgb(key: int) -> list[int]:
    return [(key >> 16) & 255, (key >> 8) & 255, key & 255]


def _key(value, mask: str) -> int:
    if mask == "index":
        return int(value)
    r, g, b = value
    return (int(r) << 16) | (int(g) << 8) | int(b)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _colour(v, where: str) -> tuple[int, int, int]:
    if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_int(c) and 0 <= c <= 255 for c in v)):
        raise ClassTableError(f"{where}: expected a colour [r, g, b] of integers 0..255, got {v!r}")
    return tuple(int(c) for c in v)


def _raw_value(v, mask: str, where: str):
    if mask == "index":
        if not (_is_int(v) and 0 <= v <= _MAX_INDEX_VALUE):
            raise ClassTableError(f"{where}: mask=index values are integers 0..{_MAX_INDEX_VALUE}, got {v!r}")
        return int(v)
    return _colour(v, where)


def parse_class_table(data, source: str = "class table") -> ClassTable:
    """A :class:`ClassTable` from the parsed JSON/YAML mapping; every problem names ``source``."""
    if not isinstance(data, dict):
        raise ClassTableError(f'{source}: expected a mapping with a "classes" list, got {type(data).__name__}')
    unknown = set(data) - {"mask", "classes", "ignore"}
    if unknown:
        raise ClassTableError(f"{source}: unknown keys {sorted(unknown)}; known: classes, mask, ignore")
    mask = data.get("mask", "index")
    if mask not in MASK_KINDS:
        raise ClassTableError(f'{source}: "mask": {mask!r}; choose one of {MASK_KINDS}')
    entries = data.get("classes")
    if not isinstance(entries, list) or not entries:
        raise ClassTableError(f'{source}: "classes" must be a non-empty list of {{name, color[, values]}}')
    if len(entries) > IGNORE_INDEX:
        raise ClassTableError(
            f"{source}: {len(entries)} classes; at most {IGNORE_INDEX} fit in 8-bit train ids (255 is ignore)"
        )
    names, colors, values = [], [], []
    for i, e in enumerate(entries):
        where = f"{source}: classes[{i}]"
        if not isinstance(e, dict):
            raise ClassTableError(f"{where}: expected a mapping {{name, color[, values]}}, got {e!r}")
        bad = set(e) - {"name", "color", "values", "train_id"}
        if bad:
            raise ClassTableError(f"{where}: unknown keys {sorted(bad)}; known: name, color, values, train_id")
        if not isinstance(e.get("name"), str) or not e["name"].strip():
            raise ClassTableError(f'{where}: needs a "name" (a non-empty string)')
        if "train_id" in e and e["train_id"] != i:
            raise ClassTableError(
                f"{where} ({e['name']!r}): train_id {e['train_id']!r} but it is entry {i}; list the classes in "
                "train-id order (0, 1, 2, ...)"
            )
        if "color" not in e:
            raise ClassTableError(f'{where} ({e["name"]!r}): needs a display "color" [r, g, b]')
        colour = _colour(e["color"], f"{where} ({e['name']!r}).color")
        if "values" in e:
            raw = e["values"]
            if not isinstance(raw, list) or not raw:
                raise ClassTableError(f"{where} ({e['name']!r}).values: expected a non-empty list")
            vals = tuple(_raw_value(v, mask, f"{where} ({e['name']!r}).values") for v in raw)
        else:
            vals = (i,) if mask == "index" else (colour,)
        names.append(e["name"].strip())
        colors.append(colour)
        values.append(vals)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ClassTableError(f"{source}: class names {dup} appear more than once")
    claimed = {_key(v, mask) for vals in values for v in vals}
    if "ignore" in data:
        if not isinstance(data["ignore"], list):
            raise ClassTableError(f'{source}: "ignore" must be a list of mask values')
        ignore = tuple(_raw_value(v, mask, f"{source}: ignore") for v in data["ignore"])
    else:
        ignore = (IGNORE_INDEX,) if mask == "index" and IGNORE_INDEX not in claimed else ()
    seen: dict[int, str] = {}
    for name, vals in [*zip(names, values), ("ignore", ignore)]:
        for v in vals:
            k = _key(v, mask)
            if k in seen and seen[k] != name:
                raise ClassTableError(f"{source}: mask value {v!r} belongs to both {seen[k]!r} and {name!r}")
            seen[k] = name
    return ClassTable(
        names=tuple(names),
        colors=np.array(colors, np.uint8),
        mask=mask,
        values=tuple(values),
        ignore=ignore,
        source=source,
    )


def read_class_table(path) -> ClassTable:
    """Read and check a ``.json`` (or ``.yaml``/``.yml``) class table file."""
    path = Path(path)
    if not path.is_file():
        raise ClassTableError(
            f'class table {path} not found; write one (README, "Your own data") or point data.classes at it'
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ClassTableError(f"cannot read class table {path}: {e}") from e
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml  # optional: PyYAML, installed with ml_collections

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError
        raise ClassTableError(f"class table {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {e}") from e
    return parse_class_table(data, source=f"class table {path}")


def write_class_table(path, names, colors, *, mask: str = "index", values=None, ignore=None) -> Path:
    """Write a class table file (JSON) from names and colours; checked by reading it back."""
    entries = []
    for i, (n, c) in enumerate(zip(names, colors)):
        e = {"name": str(n), "color": [int(x) for x in c]}
        if values is not None:
            e["values"] = [
                [int(c) for c in v] if isinstance(v, (tuple, list, np.ndarray)) else int(v) for v in values[i]
            ]
        entries.append(e)
    data = {"mask": mask, "classes": entries}
    if ignore is not None:
        data["ignore"] = [[int(c) for c in v] if isinstance(v, (tuple, list, np.ndarray)) else int(v) for v in ignore]
    parse_class_table(data, source=str(path))
    return write_atomic(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


__all__ = [
    "IGNORE_INDEX",
    "MASK_KINDS",
    "TABLE_NAME",
    "ClassTable",
    "ClassTableError",
    "parse_class_table",
    "read_class_table",
    "write_class_table",
]
