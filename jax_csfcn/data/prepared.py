"""The prepared format: a dataset decoded once into ArrayRecord shards that the loader reads
without a PNG decode.

The command is ``python -m tools.prepare`` (tools/prepare.py); training and evaluation read the
result with ``data.dataset = "prepared"`` and ``data.root = DIR``::

    DIR/prepared.json                        the manifest (below)
    DIR/{split}-{k:05d}-of-{n:05d}.array_record  the records of a split, in source order
    DIR/classes.json                         a folder dataset's class table (copied)

One record is one example: a 24-byte header (magic ``CSFR``, version, H, W, the CRC-32 of the
pixel bytes, the length of the name), the name (UTF-8), then the image (H x W x 3 uint8, RGB)
and the label (H x W uint8 train ids, 255 = ignore) as raw bytes. Reading one is a copy out of
the shard, no image codec. The shards' own chunk compression (ArrayRecord's riegeli options:
``uncompressed``, ``snappy``, ``zstd``) is chosen by measurement (BENCHMARKS.md, "Input
pipeline: the prepared format"); riegeli hashes every chunk and refuses a damaged one on read.

The manifest holds the format, the origin dataset (its name decides the label space: a folder
dataset's table is copied beside the shards, so the class table travels with the data), the
encoding, and per split its record count and per shard the records' CRC-32s and names.
:func:`verify` recomputes them all.

Writing is atomic per shard and resumable: a shard is written under a temporary name and
renamed when complete, and its entry (counts, CRCs) is saved in ``DIR/.progress/``; a second run
with the same settings skips the finished shards. The manifest is written last, so a folder
with a manifest is complete, and one without is a preparation still under way (or killed).
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from tqdm import tqdm

from csfcn.files import write_atomic
from jax_csfcn.data.augment import pixels_problem
from jax_csfcn.data.cityscapes import DataError

FORMAT = "csfcn-prepared-v1"
MANIFEST = "prepared.json"
PROGRESS = ".progress"
SUFFIX = ".array_record"
# Encodings: the ArrayRecord (riegeli) chunk compression of the shards. One record per chunk
# (group_size:1), so that a random read decompresses one example only.
ENCODINGS = {"raw": "uncompressed", "snappy": "snappy", "zstd": "zstd:1"}
DEFAULT_ENCODING = "snappy"  # by measurement: BENCHMARKS.md, "Input pipeline: the prepared format"

_MAGIC = b"CSFR"
_VERSION = 1
_HEADER = struct.Struct("<4sHHIIIII")  # magic, version, reserved, H, W, crc32, name bytes, reserved


def encode_record(image: np.ndarray, label: np.ndarray, name: str) -> bytes:
    """One example as bytes (layout: module doc). ``image`` uint8 HxWx3, ``label`` uint8 HxW."""
    image = np.ascontiguousarray(image)
    label = np.ascontiguousarray(label)
    problem = pixels_problem(image, label)
    if problem:
        raise DataError(f"record {name!r}: {problem}")
    h, w = label.shape
    raw_name = name.encode("utf-8")
    crc = zlib.crc32(label.data, zlib.crc32(image.data))
    return b"".join((_HEADER.pack(_MAGIC, _VERSION, 0, h, w, crc, len(raw_name), 0), raw_name, image.data, label.data))


def decode_record(data: bytes, where: str, *, check_crc: bool = False) -> dict:
    """The example in ``data``: ``{"image", "label", "name"}`` (arrays are read-only views of it).

    ``where`` names the record in errors. ``check_crc`` also recomputes the CRC-32 of the pixels
    (about 1.5 ms per 1024x2048 example; :func:`verify` does it for a whole dataset)."""
    data = memoryview(data)
    if len(data) < _HEADER.size:
        raise DataError(f"{where}: {len(data)} bytes, shorter than a record header; re-run python -m tools.prepare")
    magic, version, _, h, w, crc, name_len, _ = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        raise DataError(
            f"{where}: not a csfcn prepared record (magic {bytes(magic)!r}, version {version}); "
            "re-run python -m tools.prepare"
        )
    start = _HEADER.size + name_len
    n_image, n_label = h * w * 3, h * w
    if len(data) != start + n_image + n_label:
        raise DataError(
            f"{where}: {len(data)} bytes, expected {start + n_image + n_label} for a {h}x{w} example; "
            "the shard is damaged: re-run python -m tools.prepare"
        )
    pixels = data[start:]
    if check_crc and zlib.crc32(pixels) != crc:
        raise DataError(f"{where}: CRC-32 mismatch; the shard is damaged: re-run python -m tools.prepare")
    image = np.frombuffer(pixels, np.uint8, n_image).reshape(h, w, 3)
    label = np.frombuffer(pixels, np.uint8, n_label, offset=n_image).reshape(h, w)
    return {"image": image, "label": label, "name": bytes(data[_HEADER.size : start]).decode("utf-8")}


def record_crc(data: bytes) -> int:
    """The CRC-32 a record's header holds (that of its pixel bytes)."""
    return _HEADER.unpack_from(data)[5]


def shard_name(split: str, k: int, n: int) -> str:
    return f"{split}-{k:05d}-of-{n:05d}{SUFFIX}"


def read_manifest(root) -> dict:
    """The manifest of a prepared dataset; a :class:`DataError` naming the fix when there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        hint = (
            " (a preparation was started here and not finished: run python -m tools.prepare again to resume it)"
            if (Path(root) / PROGRESS).is_dir()
            else ""
        )
        raise DataError(
            f"{root} is not a prepared dataset: no {MANIFEST}{hint}; write one with python -m tools.prepare"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}; re-run python -m tools.prepare") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DataError(f"{path}: format {got!r}, expected {FORMAT!r}; re-run python -m tools.prepare")
    return manifest


def origin(root) -> str:
    """The dataset the prepared data came from (its label space): "cityscapes", "folder", ..."""
    return read_manifest(root)["origin"]["dataset"]


class PreparedSource:
    """One split of a prepared dataset as a random-access source (``len``, ``[i]``), in the
    order of the source it was prepared from; picklable for grain workers (paths, not readers)."""

    def __init__(self, root, split: str, *, check_crc: bool = False):
        self.root, self.split, self.check_crc = Path(root), str(split), bool(check_crc)
        manifest = read_manifest(self.root)
        splits = manifest["splits"]
        if self.split not in splits:
            raise DataError(
                f"{self.root} has no split {self.split!r}; prepared splits: {', '.join(sorted(splits))} "
                f"(prepare it with python -m tools.prepare --splits {self.split})"
            )
        entry = splits[self.split]
        self.paths = [self.root / s["file"] for s in entry["shards"]]
        missing = [p.name for p in self.paths if not p.is_file()]
        if missing:
            raise DataError(
                f"{self.root}: shard(s) {', '.join(missing)} of split {self.split!r} are missing; re-run python -m tools.prepare"
            )
        self._len = int(entry["records"])
        self.encoding = manifest["encoding"]
        self._reader = None

    def _open(self):
        import grain  # the train extra; only a reader needs it

        # grain's ArrayRecord source: random access across the shards, no read-ahead.
        reader = grain.sources.ArrayRecordDataSource([str(p) for p in self.paths])
        if len(reader) != self._len:
            raise DataError(
                f"{self.root}: split {self.split!r} has {len(reader)} records in its shards, the manifest says "
                f"{self._len}; the dataset is damaged: re-run python -m tools.prepare"
            )
        return reader

    def __len__(self) -> int:
        return self._len

    def raw(self, i: int) -> bytes:
        """Record ``i`` as stored (header, name, pixels)."""
        if self._reader is None:
            self._reader = self._open()
        i = int(i)
        if not 0 <= i < self._len:
            raise IndexError(f"record {i} of a {self._len}-record split")
        try:
            return self._reader[i]
        except Exception as e:  # riegeli refuses a damaged chunk
            raise DataError(
                f"{self._where(i)}: cannot read it ({type(e).__name__}: {e}); re-run python -m tools.prepare"
            ) from e

    def _where(self, i: int) -> str:
        return f"{self.root} split {self.split!r} record {i}"

    def __getitem__(self, i: int) -> dict:
        return decode_record(self.raw(i), self._where(i), check_crc=self.check_crc)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_reader"] = None  # each process opens its own reader
        return state

    def __repr__(self) -> str:
        return f"PreparedSource({str(self.root)!r}, {self.split!r})"


# ----------------------------------------------------------------------------------------------
# Writing and verifying


def _write_json(path: Path, value) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=1) + "\n"))


def _write_shard(path: Path, source, indices: range, encoding: str, tick: Callable[[], None]) -> dict:
    """Write records ``indices`` of ``source`` to one shard at ``path`` (atomically); its entry."""
    crcs, names = [], []

    def write(tmp: str) -> None:
        writer = ArrayRecordWriter(tmp, f"group_size:1,{ENCODINGS[encoding]}")
        try:
            for i in indices:
                item = source[i]
                name = str(item.get("name", i))
                data = encode_record(np.asarray(item["image"]), np.asarray(item["label"]), name)
                writer.write(data)
                crcs.append(record_crc(data))
                names.append(name)
                tick()
        finally:
            writer.close()

    write_atomic(path, write)
    return {"file": path.name, "records": len(indices), "crc32": crcs, "names": names}


def prepare(sources: Mapping[str, object], out, *, origin: Mapping, encoding: str = DEFAULT_ENCODING,
            records_per_shard: int = 64, table_file=None, progress: bool = True) -> dict:  # fmt: skip
    """Write ``sources`` (split name -> random-access source) to ``out`` in the prepared format and
    return the manifest; resumes an unfinished preparation of the same settings (module doc).

    ``origin``: ``{"dataset": name, ...}`` recorded in the manifest (its label space);
    ``table_file``: a folder dataset's class table, copied to ``out/classes.json``."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    if int(records_per_shard) < 1:
        raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    out = Path(out)
    plan = {
        "format": FORMAT,
        "origin": dict(origin),
        "encoding": encoding,
        "records_per_shard": int(records_per_shard),
        "splits": {split: len(src) for split, src in sources.items()},
    }
    plan = json.loads(json.dumps(plan))
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        if {k: manifest.get(k) for k in plan if k != "splits"} == {k: v for k, v in plan.items() if k != "splits"} and {
            s: e["records"] for s, e in manifest["splits"].items()
        } == plan["splits"]:
            return manifest  # already complete with these settings
        raise DataError(
            f"{out} already holds a prepared dataset with other settings; pass --overwrite to replace it, "
            "or choose another --out"
        )
    empty = [s for s, n in plan["splits"].items() if n < 1]
    if empty:
        raise DataError(f"split(s) {', '.join(empty)} of the source are empty; nothing to prepare")
    progress_dir = out / PROGRESS
    plan_path = progress_dir / "plan.json"
    if plan_path.is_file():
        try:
            saved = json.loads(plan_path.read_text())
        except ValueError:
            saved = None
        if saved != plan:
            raise DataError(
                f"{out} holds an unfinished preparation with other settings (source, encoding, shard size or "
                "splits); pass --overwrite to start over, or choose another --out"
            )
    else:
        _write_json(plan_path, plan)

    jobs = []  # (split, shard index, shard count, indices)
    for split, src in sources.items():
        n = len(src)
        count = -(-n // int(records_per_shard))
        for k in range(count):
            jobs.append((split, k, count, range(k * records_per_shard, min(n, (k + 1) * records_per_shard))))
    entries: dict[str, list] = {split: [] for split in sources}
    todo = []
    for split, k, count, indices in jobs:
        name = shard_name(split, k, count)
        done = progress_dir / f"{name}.json"
        if done.is_file() and (out / name).is_file():
            entries[split].append(json.loads(done.read_text()))
        else:
            todo.append((split, k, count, indices))
    total = sum(plan["splits"].values())
    finished = sum(e["records"] for es in entries.values() for e in es)
    with tqdm(total=total, initial=finished, unit="img", desc=f"prepare {out.name}", disable=not progress) as bar:
        for split, k, count, indices in todo:
            name = shard_name(split, k, count)
            entry = _write_shard(out / name, sources[split], indices, encoding, lambda: bar.update(1))
            _write_json(progress_dir / f"{name}.json", entry)
            entries[split].append(entry)
    if table_file is not None:
        write_atomic(out / "classes.json", lambda tmp: shutil.copyfile(table_file, tmp))
    manifest = {
        **{k: v for k, v in plan.items() if k != "splits"},
        "splits": {
            split: {"records": plan["splits"][split], "shards": sorted(es, key=lambda e: e["file"])}
            for split, es in entries.items()
        },
    }
    _write_json(out / MANIFEST, manifest)
    shutil.rmtree(progress_dir, ignore_errors=True)
    return manifest


def verify(root, *, progress: bool = True) -> dict:
    """Read every record of a prepared dataset and check it against the manifest: the record
    count of each split and shard, each record's CRC-32 (recomputed) and name. Returns
    ``{split: records}``; a :class:`DataError` naming the first bad record."""
    manifest = read_manifest(root)
    counts = {}
    total = sum(e["records"] for e in manifest["splits"].values())
    with tqdm(total=total, unit="img", desc=f"verify {Path(root).name}", disable=not progress) as bar:
        for split, entry in manifest["splits"].items():
            src = PreparedSource(root, split, check_crc=True)
            i = 0
            for shard in entry["shards"]:
                if len(shard["crc32"]) != shard["records"] or len(shard["names"]) != shard["records"]:
                    raise DataError(
                        f"{root}/{MANIFEST}: the entry of {shard['file']} is inconsistent; re-run python -m tools.prepare"
                    )
                for crc, name in zip(shard["crc32"], shard["names"]):
                    raw = src.raw(i)
                    item = decode_record(raw, src._where(i), check_crc=True)  # the header's CRC vs the pixels
                    if record_crc(raw) != crc or item["name"] != name:
                        raise DataError(
                            f"{root}: split {split!r} record {i} ({shard['file']}) is {item['name']!r} with CRC "
                            f"{record_crc(raw):08x}; the manifest says {name!r}, {crc:08x}. Re-run python -m tools.prepare"
                        )
                    i += 1
                    bar.update(1)
            if i != len(src):
                raise DataError(f"{root}: split {split!r} has {len(src)} records, its shards list {i}")
            counts[split] = i
    return counts
