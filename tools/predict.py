"""Predict label maps for images, folders, globs or videos, and export them for benchmarks.

    python -m torch_deploy.predict --checkpoint model.safetensors --input street.png --out pred/
    python -m torch_deploy.predict --checkpoint model.safetensors --input 'frames/*.jpg' --out pred/
    python -m torch_deploy.predict --checkpoint model.safetensors --input drive.mp4 --out pred/
    python -m torch_deploy.predict --checkpoint model.safetensors \\
        --input cityscapes/leftImg8bit/test --out submission/ --format cityscapes-submission
    python -m torch_deploy.predict --server http://127.0.0.1:8000 --input frames/ --out pred/

``--server URL`` sends the images (or a video's frames) to a running ``python -m
torch_deploy.serve`` instead of loading a checkpoint: ``--in-flight`` requests at once, outputs
in input order, the same files as a local run of the server's checkpoint (torch_deploy/remote.py).

Outputs for images (``REL`` is the image's path relative to the input folder, or its name):

* ``OUT/labels/REL.png``   single-channel class indices (Cityscapes train ids 0..18, or CamVid
  class indices 0..10 with ``--format camvid``, or your class table's mask values with
  ``--format raw``);
* ``OUT/color/REL.png``    the labels in the dataset's palette (a model trained on your own
  data carries its class table: names and colours come from it);
* ``OUT/overlay/REL.png``  the image blended with the colours (``--opacity``);
* ``OUT/legend.png``       the classes and their colours.

For a video: ``OUT/STEM_overlay.mp4`` (overlays at the input's frame rate) and the legend;
``--save-frames`` also writes the per-frame PNGs above under ``STEM/``.

``--format cityscapes-submission`` takes ``*_leftImg8bit.png`` inputs and writes only what the
Cityscapes test server wants, flat in OUT: one PNG of Cityscapes *label ids* (not train ids)
per image, named ``{city}_{seq}_{frame}_leftImg8bit.png``, the pattern
``{city}_{seq}_{frame}*.png`` that cityscapesscripts' evaluation matches.  Zip the PNGs and
upload (``cd OUT && zip ../submission.zip *.png``: the hidden record below stays out), or
evaluate locally with ``CITYSCAPES_RESULTS=OUT csEvalPixelLevelSemanticLabeling``.

One folder, one model: ``OUT/.csfcn-predict.json`` records the checkpoint (path and
fingerprint), format and dataset that wrote OUT and the files written. A later run of the same
checkpoint adds to it; a run of another checkpoint or format is refused unless ``--overwrite``
(which first removes the recorded outputs of the other model), and so is a run into a folder
holding files it would replace that no record names. A run holds ``OUT/.csfcn-predict.lock``
(``flock``) while it predicts: a second run into the same folder at the same time stops at
once, naming the first (pid and host). OUT must not lie inside the ``--input`` folder (nor may
a ``--input`` pattern match files inside OUT): outputs are never read back as inputs.

A folder input is searched recursively, following symbolic links to folders (a note names
them; a link back to a folder above it, a cycle, is skipped with a note).

Every file is written under a temporary name and renamed when complete.  Bad input (a file
that is not a checkpoint, an unreadable image or video, an output folder that cannot be
written, an unknown dataset, a video codec ffmpeg lacks) stops the run with a message before
any output is written.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import imageio.v2 as iio
import imageio_ffmpeg
import numpy as np
from PIL import Image
from tqdm import tqdm

from convert.formats import load_torch_model
from csfcn.cli import DEBUG_HELP, report_errors
from csfcn.extras import MissingExtra
from csfcn.files import checkpoint_fingerprint, child_path, probe_folder, walk_files
from csfcn.palette import (
    DATASETS,
    colorize,
    dataset_palette,
    legend_image,
    overlay,
    raw_value_lut,
    train_id_to_label_id,
    write_atomic,
    write_png,
)
from torch_deploy.precision import AUTO_HELP, CHOICES
from torch_deploy.predictor import InputError, Predictor, _check_8_bit, load_image
from torch_deploy.remote import RemoteError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FORMATS = ("trainids", "cityscapes-submission", "camvid", "raw")
DEFAULT_DATASET = {19: "cityscapes", 11: "camvid"}
CITYSCAPES_NAME = re.compile(r"^(?P<city>[^_/]+)_(?P<seq>\d+)_(?P<frame>\d+)_leftImg8bit\.png$")
MANIFEST = ".csfcn-predict.json"  # in --out: which checkpoint (and format) wrote the outputs there
LOCK = ".csfcn-predict.lock"  # in --out while a run predicts into it


class PredictError(Exception):
    """A problem with the command's input; the message says what and where."""


# --------------------------------------------------------------------------- inputs
def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def _unique_names(items: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Output names keep their suffix where two inputs share one (``x.png`` and ``x.jpg`` would
    otherwise write the same ``x`` outputs, the second over the first)."""
    count: dict[str, int] = {}
    for _, name in items:
        count[name] = count.get(name, 0) + 1
    return [(p, name if count[name] == 1 else f"{name}.{p.suffix.lstrip('.').lower()}") for p, name in items]


def collect_inputs(spec: str) -> tuple[str, list[tuple[Path, str]]]:
    """('images' | 'video', [(path, rel name without suffix)]) for an image, folder, glob or video.

    Names are unique: where two files differ only by their suffix, both keep it in their name."""
    p = Path(spec)
    if p.is_dir():
        found, followed, cycles = walk_files(p)  # symbolic links to folders are followed (and said)
        if followed:
            shown = ", ".join(f"{link.relative_to(p)} -> {target}" for link, target in followed[:3])
            more = f" and {len(followed) - 3} more" if len(followed) > 3 else ""
            print(f"note: {spec}: following symbolic link(s) to folders: {shown}{more}", file=sys.stderr)
        for link, target in cycles:
            print(
                f"note: {spec}: skipping {link.relative_to(p)} -> {target}: it leads back to a folder above it "
                "(a cycle)",
                file=sys.stderr,
            )
        files = [f for f in found if f.suffix.lower() in IMAGE_EXTS]
        if not files:
            raise PredictError(f"{spec}: folder holds no images ({', '.join(IMAGE_EXTS)})")
        return "images", _unique_names([(f, str(f.relative_to(p).with_suffix(""))) for f in files])
    if p.is_file():
        if p.suffix.lower() in VIDEO_EXTS:
            return "video", [(p, p.stem)]
        return "images", [(p, p.stem)]
    if _has_magic(spec):
        files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if os.path.isfile(f))
        files = [f for f in files if f.suffix.lower() in IMAGE_EXTS]
        if not files:
            raise PredictError(f"{spec}: the pattern matches no image files")
        root = Path(os.path.commonpath([str(f.parent.absolute()) for f in files]))
        return "images", _unique_names([(f, str(f.absolute().relative_to(root).with_suffix(""))) for f in files])
    raise PredictError(f"{spec}: no such file, folder or matching pattern")


def check_images(items) -> None:
    """Open every image's header, so that an unreadable file fails before any output exists."""

    for path, _ in items:
        try:
            with Image.open(path) as im:
                _check_8_bit(im, path)
                im.verify()
        except InputError as e:
            raise PredictError(str(e)) from e
        except Exception as e:
            raise PredictError(f"{path}: cannot read this image ({type(e).__name__}: {e})") from e


def check_submission_names(items) -> None:
    bad = [str(p) for p, _ in items if not CITYSCAPES_NAME.match(p.name)]
    if bad:
        raise PredictError(
            f"--format cityscapes-submission needs Cityscapes images named "
            f"{{city}}_{{seq}}_{{frame}}_leftImg8bit.png; {len(bad)} do not match, e.g. {bad[:3]}"
        )


# --------------------------------------------------------------------------- video
def ffmpeg_has_encoder(codec: str) -> bool:

    out = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True, check=False
    ).stdout
    return any(line.split()[1:2] == [codec] for line in out.splitlines() if line.startswith(" "))


def open_video(path: Path):

    try:
        reader = iio.get_reader(str(path), format="FFMPEG")
        meta = reader.get_meta_data()
        fps = float(meta.get("fps") or 25.0)
    except Exception as e:
        raise PredictError(f"{path}: cannot read this video ({type(e).__name__}: {e})") from e
    return reader, fps, meta


def announced_frames(meta: dict) -> int | None:
    """The frame count a video's header announces: ``nframes``, else duration x fps, else None."""
    n = meta.get("nframes")
    if isinstance(n, (int, float)) and np.isfinite(n):
        return int(n)
    duration, fps = meta.get("duration"), meta.get("fps")
    if isinstance(duration, (int, float)) and isinstance(fps, (int, float)) and duration > 0 and fps > 0:
        return int(round(duration * fps))
    return None


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad odd heights/widths by repeating the last row/column (yuv420p needs even sizes)."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else frame


# --------------------------------------------------------------------------- outputs
def _inside(path, folder) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (real paths: links and '..' resolved)."""
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def check_out_apart(spec: str, out: Path, items) -> None:
    """Outputs are never read back as inputs: an --out inside the --input folder is refused (a
    second run would predict the first one's PNGs as photos), and so is a pattern that matches
    files inside --out."""
    if Path(spec).is_dir() and _inside(out, spec):
        raise PredictError(
            f"--out {out} lies inside --input {spec}: a later run would read the outputs back as input images; "
            "choose an --out outside the input folder"
        )
    if _has_magic(spec):
        inside = [str(path) for path, _ in items if _inside(path, out)]
        if inside:
            raise PredictError(
                f"--input {spec!r} matches {len(inside)} file(s) inside --out {out} (earlier outputs, e.g. "
                f"{inside[0]}); narrow the pattern or choose an --out outside it"
            )


@contextlib.contextmanager
def out_lock(out: Path):
    """Hold ``OUT/.csfcn-predict.lock`` (an exclusive ``flock``) while predicting: a second run
    into the same folder stops at once, naming the run that holds it. The kernel drops the lock
    however the holder ends (SIGKILL too); the file is removed when the run finishes."""
    path = out / LOCK
    while True:
        f = open(path, "a+")  # noqa: SIM115 (held open for the whole run)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a run just starting"
            f.close()
            raise PredictError(
                f"--out {out} is in use by another predict run ({holder}); wait for it to finish, or give this "
                "run its own --out"
            ) from None
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()  # the holder finished and removed the file between our open and our lock: again
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)  # still locked: no other run holds this file
        f.close()


def read_manifest(out: Path) -> dict | None:
    try:
        data = json.loads((out / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise PredictError(
            f"--out {out}: {MANIFEST} (the record of what wrote this folder) is unreadable ({e}); pass --overwrite "
            "to replace its outputs, or choose another --out"
        ) from None
    return data if isinstance(data, dict) else {}


def write_manifest(out: Path, record: dict) -> None:
    write_atomic(out / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))


def claim_out_dir(out: Path, record: dict, planned: list[str], overwrite: bool) -> dict:
    """Check that --out holds no other model's results (``record``: checkpoint, fingerprint,
    format, dataset), then write the manifest naming this run's outputs. Another model's outputs
    (or files this command did not record) are refused unless ``overwrite``; with it, the outputs
    the earlier run recorded are removed first, so that the folder never mixes two models."""
    old = read_manifest(out)
    same = ("fingerprint", "format", "dataset")
    if old is not None and all(old.get(k) == record[k] for k in same):
        files = sorted(set(old.get("files", [])) | set(planned))  # the same model, more images
        write_manifest(out, dict(record, files=files))
        return dict(record, files=files)
    if old is not None and not overwrite:
        raise PredictError(
            f"--out {out} holds the outputs of another model or format ({old.get('checkpoint')}, "
            f"format {old.get('format')}, dataset {old.get('dataset')}, written {old.get('written', '?')}; see "
            f"{out / MANIFEST}); pass --overwrite to replace them, or choose another --out"
        )
    if old is None and not overwrite:
        clash = [rel for rel in planned if os.path.lexists(out / rel)]
        if clash:
            raise PredictError(
                f"--out {out} already holds {len(clash)} file(s) this run would replace (e.g. {clash[0]}) and no "
                f"record ({MANIFEST}) that this command wrote them; pass --overwrite to replace them, or choose "
                "another --out"
            )
    removed, keep = 0, set(planned)
    if old is not None:  # --overwrite: the earlier model's outputs go, all of them
        for rel in old.get("files", []):
            try:
                path = child_path(out, str(rel))
            except ValueError:
                continue  # a hand-edited record naming something outside --out: not ours
            if rel not in keep and path.is_file() and not os.path.islink(out / rel):
                path.unlink()
                removed += 1
    if removed:
        print(f"note: --overwrite: removed {removed} output(s) of {old.get('checkpoint')} from {out}", file=sys.stderr)
    write_manifest(out, dict(record, files=sorted(planned)))
    return dict(record, files=sorted(planned))


def planned_outputs(kind: str, items, fmt: str, save_frames: bool) -> list[str]:
    """The files (relative to --out) a run will write, as far as known before it starts."""
    if kind == "video":
        return [f"{items[0][1]}_overlay.mp4", "legend.png"]
    if fmt == "cityscapes-submission":
        return [path.name for path, _ in items]
    return ["legend.png"] + [f"{sub}/{rel}.png" for _, rel in items for sub in ("labels", "color", "overlay")]


def prepare_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PredictError(f"--out {out}: exists and is not a folder")
    try:
        probe_folder(out)
    except OSError as e:
        raise PredictError(f"--out {out}: cannot write there ({e.strerror or e})") from e


def _write_visuals(out: Path, rel: str, image, labels, palette, opacity, label_values=None) -> None:
    for sub, arr in (
        ("labels", labels if label_values is None else label_values),
        ("color", colorize(labels, palette)),
        ("overlay", overlay(image, labels, palette, opacity)),
    ):
        dst = out / sub / f"{rel}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_png(dst, arr)


def run(args) -> dict:
    """The command; returns a summary dict. Raises PredictError (and friends) on bad input."""

    if args.dataset is not None and args.dataset not in DATASETS:
        raise PredictError(f"--dataset {args.dataset!r}: unknown dataset/palette; choose one of {sorted(DATASETS)}")
    if args.format not in FORMATS:
        raise PredictError(f"--format {args.format!r}: choose one of {FORMATS}")
    if not 0.0 <= args.opacity <= 1.0:
        raise PredictError(f"--opacity {args.opacity}: must lie in [0, 1]")
    if args.batch_size < 1:
        raise PredictError(f"--batch-size {args.batch_size}: must be >= 1")

    kind, items = collect_inputs(args.input)
    check_out_apart(args.input, Path(args.out), items)
    if kind == "video":
        if args.format == "cityscapes-submission":
            raise PredictError("--format cityscapes-submission takes Cityscapes images, not a video")
        if not ffmpeg_has_encoder(args.codec):
            raise PredictError(f"--codec {args.codec}: this ffmpeg has no such video encoder; try libx264 or mpeg4")
        reader, fps, _ = open_video(items[0][0])
        reader.close()
    else:
        check_images(items)
        if args.format == "cityscapes-submission":
            check_submission_names(items)

    predictor = _remote(args) if args.server else _local(args)
    try:
        return _run_with(args, kind, items, predictor)
    finally:
        if args.server:
            predictor.close()


def _remote(args):
    """--server: a running torch_deploy.serve does the predicting; precision and device are its own."""
    from torch_deploy.remote import RemotePredictor

    given = [
        f
        for f, v in (("--checkpoint", args.checkpoint), ("--calibration", args.calibration), ("--device", args.device))
        if v
    ] + (["--precision"] if args.precision != "auto" else [])
    if given:
        raise PredictError(
            f"--server {args.server}: {', '.join(given)} belong to the server (python -m torch_deploy.serve); "
            "drop them here"
        )
    if args.in_flight < 1:
        raise PredictError(f"--in-flight {args.in_flight}: must be >= 1")
    try:
        return RemotePredictor(args.server, in_flight=args.in_flight)
    except (RuntimeError, MissingExtra) as e:
        raise PredictError(str(e)) from None


def _local(args):
    if not args.checkpoint:
        raise PredictError("give --checkpoint (a model file or run) or --server (a running torch_deploy.serve)")
    try:
        model = load_torch_model(args.checkpoint)  # any format: a training run needs the training extra
        calibration = None
        if args.precision == "int8" or (args.precision == "auto" and args.calibration):
            if not args.calibration:
                raise PredictError("--precision int8 needs --calibration IMAGES (a few training images)")
            kind, found = collect_inputs(args.calibration)
            if kind != "images":
                raise PredictError(f"--calibration {args.calibration}: give images, not a video")
            calibration = [str(path) for path, _ in found[:: max(1, len(found) // 8)][:8]]
        predictor = Predictor(
            model,
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
            calibration=calibration,
        )
    except (OSError, ValueError, KeyError, RuntimeError, MissingExtra) as e:
        # ConversionError (a ValueError) names the checkpoint; RuntimeError: no CUDA for --device
        raise PredictError(str(e)) from e
    return predictor


def _run_with(args, kind, items, predictor) -> dict:
    k = predictor.num_classes
    own = predictor.config.classes  # a user's class table, carried by the checkpoint
    raw_lut = None
    if own and args.dataset is None:
        dataset = "own"
        names, palette = predictor.config.class_names, np.array(predictor.config.class_colors, np.uint8)
        if args.format == "raw":
            try:
                raw_lut = raw_value_lut(own)
            except ValueError as e:
                raise PredictError(f"--format raw: {e}") from None
    else:
        dataset = args.dataset or DEFAULT_DATASET.get(k)
        if dataset is None:
            raise PredictError(f"the checkpoint has {k} classes; pass --dataset ({sorted(DATASETS)}) for its palette")
        names, palette = dataset_palette(dataset)
        if len(names) != k:
            raise PredictError(f"the checkpoint has {k} classes but dataset {dataset!r} has {len(names)}")
    if args.format == "raw" and raw_lut is None:
        raise PredictError(
            "--format raw writes the mask values of the class table the checkpoint was trained with; "
            + ("drop --dataset, which replaces that table" if own else "this checkpoint carries none (use trainids)")
        )
    wanted = {"cityscapes-submission": "cityscapes", "camvid": "camvid"}.get(args.format)
    if wanted and dataset != wanted:
        raise PredictError(f"--format {args.format} needs --dataset {wanted} (got {dataset})")

    out = Path(args.out)
    prepare_out_dir(out)
    record = {
        "checkpoint": f"{args.server} ({predictor.info['checkpoint']})"
        if args.server
        else os.path.abspath(args.checkpoint),
        # a server's is its checkpoint's: a folder may hold a local and a served run of one model
        "fingerprint": predictor.fingerprint if args.server else checkpoint_fingerprint(args.checkpoint),
        "format": args.format,
        "dataset": dataset,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with out_lock(out):
        record = claim_out_dir(out, record, planned_outputs(kind, items, args.format, args.save_frames), args.overwrite)
        return _predict(args, out, kind, items, predictor, names, palette, raw_lut, dataset, record)


def _predict(args, out, kind, items, predictor, names, palette, raw_lut, dataset, record) -> dict:
    written = 0
    if args.format != "cityscapes-submission":
        write_png(out / "legend.png", legend_image(names, palette))

    if kind == "images":
        bar = tqdm(total=len(items), unit="img", desc="predict", disable=args.quiet)
        for s in range(0, len(items), predictor.batch_size):
            chunk = items[s : s + predictor.batch_size]
            images = [load_image(p) for p, _ in chunk]
            for (path, rel), image, labels in zip(chunk, images, predictor.predict(images)):
                if args.format == "cityscapes-submission":
                    write_png(out / path.name, train_id_to_label_id(labels))
                else:
                    values = None if raw_lut is None else raw_lut[labels]
                    _write_visuals(out, rel, image, labels, palette, args.opacity, values)
                written += 1
                bar.update(1)
        bar.close()
        return {
            "images": written,
            "out": str(out),
            "dataset": dataset,
            "device": str(predictor.device),
            "precision": predictor.path,
        }

    # video

    path, stem = items[0]
    reader, fps, meta = open_video(path)
    total = announced_frames(meta)
    dst = out / f"{stem}_overlay.mp4"

    def frames():
        try:
            yield from reader
        except Exception as e:
            raise PredictError(f"{path}: cannot decode the video ({type(e).__name__}: {e})") from e

    def write(tmp):
        nonlocal written
        bar = tqdm(total=total, unit="frame", desc="predict", disable=args.quiet)
        writer = iio.get_writer(tmp, format="FFMPEG", fps=fps, codec=args.codec, macro_block_size=1)
        try:
            for frame in _chunks(frames(), predictor.batch_size):
                buffer = [np.ascontiguousarray(np.asarray(f)[..., :3]) for f in frame]
                for image, labels in zip(buffer, predictor.predict(buffer)):
                    writer.append_data(_even(overlay(image, labels, palette, args.opacity)))
                    if args.save_frames:
                        _write_visuals(out / stem, f"{written:06d}", image, labels, palette, args.opacity)
                    written += 1
                    bar.update(1)
        finally:
            writer.close()
            reader.close()
            bar.close()
        if written == 0:
            raise PredictError(f"{path}: the video has no frames")

    try:
        write_atomic(dst, write)
    except PredictError:
        raise
    except Exception as e:
        raise PredictError(f"writing {dst} failed ({type(e).__name__}: {e})") from e
    finally:  # the frames on disk are recorded for a later --overwrite, also when the run stops part-way
        if args.save_frames and written:
            frame_files = [
                f"{stem}/{sub}/{i:06d}.png" for i in range(written) for sub in ("labels", "color", "overlay")
            ]
            write_manifest(out, dict(record, files=sorted(set(record["files"]) | set(frame_files))))
    summary = {"frames": written, "video": str(dst), "fps": fps, "dataset": dataset, "device": str(predictor.device)}
    summary["precision"] = predictor.path
    if total is not None and written < total - 1:  # (duration x fps rounds; one frame of slack)
        summary["frames_announced"] = total
        print(
            f"warning: {path}: decoded {written} of the {total} frames its header announces; the file looks cut "
            f"off. {dst} holds the {written} frames that could be read",
            file=sys.stderr,
        )
    return summary


def _chunks(it, n):
    chunk = []
    for x in it:
        chunk.append(x)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m torch_deploy.predict",
        description="Label maps, colour maps and overlays for images, folders, globs or videos; "
        "Cityscapes test-server export. See the module docstring for the output layout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", default=None, help=".safetensors, upstream .pth, or Orbax Flax directory")
    p.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="instead of --checkpoint: a running python -m torch_deploy.serve, http://HOST:8000 or grpc://HOST:8001 "
        "(needs the serve extra); the outputs are those of a local run of the server's checkpoint",
    )
    p.add_argument("--in-flight", type=int, default=8, help="with --server: requests on the wire at once")
    p.add_argument(
        "--input",
        required=True,
        help="an image, a folder (searched recursively; symbolic links to folders are followed, with a note), a "
        "quoted glob, or a video",
    )
    p.add_argument(
        "--out",
        required=True,
        help=f"output folder (created). It must not lie inside the --input folder (outputs are never read back as "
        f"inputs). {MANIFEST} in it records the checkpoint that wrote it: a run of another checkpoint or --format "
        "into the same folder is refused unless --overwrite; two runs at once into one folder are refused too",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what --out holds: another checkpoint's outputs (those are removed first, so that the folder "
        "never mixes two models) or files this command did not record",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help=f"palette and class names: {sorted(DATASETS)}; default: the class table the checkpoint carries "
        "(trained on your own data), else from the class count",
    )
    p.add_argument(
        "--format",
        default="trainids",
        help="label PNG format: trainids (class indices), camvid (CamVid class indices 0..10), raw (the mask "
        "values of your own class table, for a checkpoint trained on a folder dataset), or "
        "cityscapes-submission (label ids for the test server, flat in --out, no visualisations)",
    )
    p.add_argument("--opacity", type=float, default=0.5, help="weight of the colours in the overlays")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...; default: cuda if available")
    p.add_argument(
        "--precision",
        default="auto",
        choices=CHOICES,
        help=f"default {AUTO_HELP} (--calibration)",
    )
    p.add_argument(
        "--calibration",
        default=None,
        metavar="IMAGES",
        help="for int8 (--precision int8, or auto, which then picks int8 on a CPU): a few training images "
        "(a folder or a quoted glob) to calibrate on",
    )
    p.add_argument("--codec", default="libx264", help="video encoder for the overlay video (ffmpeg name)")
    p.add_argument("--save-frames", action="store_true", help="for a video, also write per-frame PNGs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def predict() -> None:
        summary = run(args)
        if not args.quiet:
            print(" ".join(f"{k}={v}" for k, v in summary.items()))

    return report_errors(predict, (PredictError, InputError, RemoteError), debug=args.debug)  # csfcn/cli.py


if __name__ == "__main__":
    sys.exit(main())
