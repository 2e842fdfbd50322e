"""What each deployment path costs in accuracy: mIoU of the deployed model itself on a dataset split.

    python -m tools.accuracy --checkpoint runs/demo/model.safetensors --dataset synthetic \\
        --root data/synthetic --split val --json accuracy.json

Every path predicts the same images (normalised and zero-padded to a multiple of 8 exactly as
:class:`torch_deploy.Predictor` does) and is scored with the training side's confusion matrix
and scores (``jax_csfcn.metrics``), so its numbers are comparable with ``tools.evaluate``
(single scale). Paths:

  twin            the PyTorch twin, eager fp32 (the reference)
  optimize-fp32   torch_deploy.optimize, labels
  optimize-bf16   the same in bf16 (where the CPU computes bf16 natively, or on a GPU)
  optimize-int8   torch_deploy.optimize with oneDNN's int8 convolutions, calibrated on
                  --calibration-images images of --calibration-split (torch_deploy/quantize.py)
  onnxruntime     ONNX Runtime fp32 on our ONNX export
  onnxruntime-int8  ONNX Runtime's static int8 quantization of that ONNX, calibrated on the
                  same images (torch_deploy/cpu_peers.py)
  openvino        OpenVINO fp32 on the same ONNX (the openvino extra)
  openvino-bf16   OpenVINO bf16
  openvino-int8   OpenVINO running the quantized ONNX of onnxruntime-int8
  onnx-file       an ONNX file you exported (--onnx FILE, python -m tools.export_onnx; a
                  static export must have the split's size, padded to a multiple of 8, or use
                  --dynamic), run by ONNX Runtime: what you ship, scored as it is

Besides mIoU and pixel accuracy, each path's argmax agreement with the twin's is reported: the
share of pixels where the deployed model predicts what the reference predicts. A path whose
runtime is missing is skipped with the extra to install. This tool reads datasets through
``jax_csfcn.data`` and scores with ``jax_csfcn.metrics``, so it needs the training extra.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from convert.formats import load_torch_model
from csfcn.cli import DEBUG_HELP, report_errors
from csfcn.extras import MissingExtra, require
from csfcn.files import write_atomic
from csfcn.tables import markdown_table
from torch_deploy.cpu_peers import OnnxPeer, peer_missing
from torch_deploy.optimize import optimize
from torch_deploy.precision import refusal
from torch_deploy.predictor import normalise, pad_to_multiple

PATHS = (
    "twin",
    "optimize-fp32",
    "optimize-bf16",
    "optimize-int8",
    "onnxruntime",
    "onnxruntime-int8",
    "openvino",
    "openvino-bf16",
    "openvino-int8",
)
PEERS = {  # path -> (runtime, precision) of torch_deploy.cpu_peers.OnnxPeer
    "onnxruntime": ("onnxruntime", "fp32"),
    "onnxruntime-int8": ("onnxruntime", "int8"),
    "openvino": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
    "openvino-int8": ("openvino", "int8"),
}


class AccuracyError(ValueError):
    """A bad argument or input of this tool; the message says which."""


def build_path(name: str, twin, calibration: list[torch.Tensor]):
    """(labels function of normalised padded NCHW fp32, None), (None, None) for the twin itself, or
    (None, why it is skipped)."""
    if name == "twin":  # the reference itself: evaluate_paths computes it once per image
        return None, None
    if name.startswith("optimize-"):
        precision = name.split("-", 1)[1]
        why = refusal(precision, next(twin.parameters()).device)
        if why:
            return None, why
        if precision == "int8":
            return optimize(twin, "int8", "labels", calibration=calibration), None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the one-time CPU notice
            return optimize(twin, precision, "labels"), None
    runtime, precision = PEERS[name]
    gone = peer_missing(runtime) or (precision == "int8" and peer_missing("onnxruntime"))
    if gone:
        return None, gone
    why = refusal(precision, "cpu") if precision == "bf16" else None  # the runtimes' own int8 runs anywhere
    if why:
        return None, why
    return OnnxPeer(twin, runtime, precision, calibration if precision == "int8" else None), None


def onnx_file_path(path, num_classes: int):
    """(labels function running the ONNX file ``path`` in ONNX Runtime, None), or (None, why skipped).

    The file's first output is taken as logits (N, K, H, W; argmax over K) or labels (N, H, W);
    K, or a label outside 0..K-1, other than the checkpoint's ``num_classes`` is an error.
    """
    gone = peer_missing("onnxruntime")
    if gone:
        return None, gone
    import onnxruntime as ort  # optional: the onnx extra

    if not Path(path).is_file():
        raise AccuracyError(f"--onnx {path}: no such file (python -m tools.export_onnx writes one)")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise AccuracyError(f"--onnx {path}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from None
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> np.ndarray:
        a = x.numpy()
        try:
            out = session.run(None, {name: a})[0]
        except Exception as e:
            raise AccuracyError(
                f"--onnx {path}: cannot run on a {tuple(a.shape)} input ({type(e).__name__}: {e}); export it with "
                "--dynamic or at this size"
            ) from None
        if out.ndim == 4 and out.shape[1] != num_classes:
            raise AccuracyError(
                f"--onnx {path}: it predicts {out.shape[1]} classes, the checkpoint {num_classes}; export the "
                "same model"
            )
        labels = out.argmax(1) if out.ndim == 4 else out
        if labels.size and labels.max() >= num_classes:
            raise AccuracyError(
                f"--onnx {path}: it outputs label {int(labels.max())}, the checkpoint has {num_classes} classes"
            )
        return labels

    return run, None


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    return pad_to_multiple(normalise(np.array(image[None])))  # a writable copy: sources may hand out read-only arrays


def evaluate_paths(
    checkpoint,
    dataset: str,
    root,
    split: str,
    paths,
    *,
    calibration_split="train",
    calibration_images=8,
    progress=True,
    classes: str | None = None,
    onnx_file=None,
) -> dict:
    """{"paths": {name: scores + agreement}, "skipped": {name: why}, "classes": [...]} on ``split``
    (``classes``: a folder dataset's class table; ``onnx_file``: also score that file as "onnx-file")."""
    require("train", "python -m tools.accuracy (datasets and scores)")
    from jax_csfcn.data.sources import build_source, class_names  # optional: the training extra
    from jax_csfcn.metrics import confusion_matrix, scores  # optional: the training extra

    twin = load_torch_model(checkpoint)
    k = twin.config.num_classes
    names = list(class_names(dataset, root, classes))
    if len(names) != k:
        raise AccuracyError(f"{checkpoint} predicts {k} classes, dataset {dataset!r} has {len(names)}")
    own = list(twin.config.class_names)
    if own and own != names:
        raise AccuracyError(
            f"{checkpoint} was trained on classes {own}, the dataset's table lists {names}: the same train ids "
            "mean other classes; score it on the data it was trained for"
        )
    src = build_source(dataset, root, split, classes)
    calibration = []
    if any(name.endswith("int8") for name in paths):
        cal_src = build_source(dataset, root, calibration_split, classes)
        step = max(1, len(cal_src) // max(1, calibration_images))
        calibration = [_image_tensor(cal_src[i]["image"]) for i in range(0, len(cal_src), step)][:calibration_images]
    runs, skipped = {}, {}
    if onnx_file is not None:
        paths = [*paths, "onnx-file"]
    for name in paths:
        fn, why = onnx_file_path(onnx_file, k) if name == "onnx-file" else build_path(name, twin, calibration)
        if why is not None:
            skipped[name] = why
        else:
            runs[name] = fn
    conf = {name: np.zeros((k, k), np.int64) for name in runs}
    agree = dict.fromkeys(runs, 0)
    total = 0
    with torch.inference_mode():
        for i in tqdm(range(len(src)), desc=f"accuracy {split}", unit="img", disable=not progress):
            item = src[i]
            image, label = item["image"], item["label"]
            h, w = label.shape
            x = _image_tensor(image)
            ref = twin(x).argmax(1)[0, :h, :w].numpy()
            total += ref.size
            for name, fn in runs.items():
                pred = (ref if fn is None else np.asarray(fn(x))[0, :h, :w]).astype(np.int32)
                conf[name] += np.asarray(confusion_matrix(pred, label, k), np.int64)
                agree[name] += int((pred == ref).sum())
    out = {"paths": {}, "skipped": skipped, "classes": names, "images": len(src), "split": split}
    for name in runs:
        sc = scores(conf[name])
        out["paths"][name] = {
            "miou": sc["miou"],
            "pixel_acc": sc["pixel_acc"],
            "agreement_with_twin": agree[name] / total,
            "iou": dict(zip(names, (float(v) for v in sc["iou"]))),
        }
    return out


def format_report(report: dict) -> str:
    base = report["paths"].get("twin", {}).get("miou")
    rows = []
    for name, r in report["paths"].items():
        delta = f"{100 * (r['miou'] - base):+.2f}" if base is not None else "-"
        rows.append(
            [
                name,
                f"{100 * r['miou']:.2f}",
                delta,
                f"{100 * r['pixel_acc']:.2f}",
                f"{100 * r['agreement_with_twin']:.3f}",
            ]
        )
    text = markdown_table(["path", "mIoU %", "vs twin", "pixel acc %", "argmax agreement with twin %"], rows)
    for name, why in report["skipped"].items():
        text += f"\nskipped {name}: {why}"
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.accuracy",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2].split("\n\nBesides")[0],
    )
    p.add_argument("--checkpoint", required=True, help="any checkpoint: .safetensors, upstream .pth, a training run")
    p.add_argument("--dataset", default="synthetic", help="cityscapes, camvid, synthetic, tfds_cityscapes or folder")
    p.add_argument("--root", default="data/synthetic", help="the dataset folder (TFDS: its data_dir)")
    p.add_argument("--classes", default=None, help="a folder dataset's class table (default: ROOT/classes.json)")
    p.add_argument("--onnx", metavar="FILE", default=None, help="also score this exported ONNX file (onnx-file)")
    p.add_argument("--split", default="val")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    p.add_argument("--calibration-split", default="train", help="where the int8 calibration images come from")
    p.add_argument("--calibration-images", type=int, default=8, help="how many (spread over the split)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (the peers use as many)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    paths = [s for s in args.paths.replace(" ", "").split(",") if s]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown or not paths:
        p.error(f"--paths {args.paths}: unknown {unknown}; choose from {','.join(PATHS)}")
    if args.calibration_images < 1:
        p.error(f"--calibration-images {args.calibration_images}: must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    def run() -> None:
        report = evaluate_paths(
            args.checkpoint,
            args.dataset,
            args.root,
            args.split,
            paths,
            calibration_split=args.calibration_split,
            calibration_images=args.calibration_images,
            progress=not args.quiet,
            classes=args.classes,
            onnx_file=args.onnx,
        )
        report["command"] = "python -m tools.accuracy " + " ".join(sys.argv[1:] if argv is None else argv)
        print(format_report(report))
        if args.json:
            write_atomic(args.json, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))

    return report_errors(run, (AccuracyError, MissingExtra, ValueError, FileNotFoundError), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
