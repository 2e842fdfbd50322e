"""Export a CSFCN checkpoint to ONNX, and check the file with onnxruntime in the same command.

    python -m tools.export_onnx --checkpoint model.safetensors --out model.onnx
    python -m tools.export_onnx --checkpoint model.safetensors --out model.onnx --dynamic

The graph takes normalised images ``image`` (B, 3, H, W) float32 (ImageNet mean/std on 0..1
RGB, H and W multiples of 8; pad as :class:`torch_deploy.Predictor` does) and returns
``logits`` (B, K, H, W).  Opset 18 by default (GridSample needs >= 16; the dynamo exporter
emits opset-18 ops and fails to convert them down to 17, so lower opsets are refused).  BatchNorm is folded into the convs before export
(:func:`torch_deploy.optimize.fold_bn`, no BatchNormalization node is left), SFC's sampling
becomes ONNX ``GridSample`` (opset >= 16) and the head's pixel shuffle a ``DepthToSpace`` /
reshape-transpose.

Static (default): batch and ``--size H W`` are fixed.  ``--dynamic``: batch, H and W are free
(H, W multiples of 8, 32..8192).  The dynamic graph is the twin's own module tree on the
:class:`ExportOps` backend, whose two shape-dependent ops bake no shape in: CFC's pyramid pooling (whose column count ``round(W / H * g)`` depends on
the aspect ratio) becomes averaging matrices built from the shape, padded to a shape-derived
upper bound, with the padded bins masked out of the softmax; SFC's base grid is the
``linspace`` formula on ``arange``.  On the twin's own inputs it computes the same function.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript).  The legacy
TorchScript exporter cannot trace the pyramid pooling (its bin count is Python arithmetic on
the traced shape: ``round(w / h * g)`` fails on a traced tensor) and is deprecated in recent
torch; torch.export also decomposes adaptive pooling with non-divisible sizes, which the
legacy ONNX symbolic refuses.

Check: onnxruntime (CPU) against the PyTorch twin (unfolded, fp32) on seeded random inputs,
at the export size and, for ``--dynamic``, also at another batch, size and aspect ratio:
relative L2 error of the logits <= 1e-4 and argmax agreement >= 99.9%.  The numbers are
printed; the file is written under a temporary name and renamed only when the check passes.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

from convert.formats import load_torch_model
from csfcn.cli import DEBUG_HELP, report_errors
from csfcn.extras import require
from csfcn.files import write_atomic
from csfcn.registry import names
from torch_deploy.model import CSFCN
from torch_deploy.onnx_graph import (  # the graph itself; re-exported for the API of this module
    MIN_OPSET,
    ExportError,
    export_graph,
    export_module,
)

# The check's bound, from the arithmetic. onnxruntime evaluates the twin's fp32 function in
# another order and with other kernels, so its distance to the exact (fp64) function is of the
# order of the twin's own fp32 distance e (measured on the same weights and input); the two fp32
# results then lie within e_ort + e_twin of each other. Allowed: FP32_FACTOR * e (an ORT error of
# up to 2e), and never less than MAX_REL_L2, the fixed bound every model met before it was derived
# (a deep fp32 network such as ICNet's is 1-2e-4 from fp64 itself, above that floor).
MAX_REL_L2 = 1e-4
FP32_FACTOR = 3.0
GRID_SAMPLING = names(samples_at_offsets=True)  # the models that sample at learned offsets
MIN_ARGMAX_AGREEMENT = 0.999


# --------------------------------------------------------------------------- check
def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def compare(session, model: CSFCN, x: torch.Tensor, model64: CSFCN | None = None) -> dict:
    """Relative L2 error and argmax agreement of onnxruntime vs the twin on ``x``, and the bound
    it must meet: ``FP32_FACTOR`` times the twin's own distance to ``model64`` (the twin in fp64;
    default a copy of ``model``), at least ``MAX_REL_L2``."""
    model64 = model64 if model64 is not None else copy.deepcopy(model).double()
    with torch.inference_mode():
        ref = model(x).double().numpy()
        exact = model64(x.double()).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].astype(np.float64)
    if got.shape != ref.shape:
        raise ExportError(f"onnxruntime output shape {got.shape} != twin {ref.shape} for input {tuple(x.shape)}")
    twin_fp32 = _rel(ref, exact)
    return {
        "shape": list(x.shape),
        "rel_l2": _rel(got, ref),
        "twin_vs_fp64": twin_fp32,
        "max_rel_l2": max(MAX_REL_L2, FP32_FACTOR * twin_fp32),
        "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
    }


def check_sizes(size, dynamic: bool) -> list[tuple[int, int, int]]:
    h, w = size
    if h % 8 or w % 8 or h < 32 or w < 32:
        raise ExportError(f"--size {h} {w}: H and W must be multiples of 8 and >= 32 (the predictor pads to 8)")
    shapes = [(1, h, w)]
    if dynamic:  # another batch, size and aspect ratio through the same graph
        shapes.append((2, max(32, h // 2 + 8 * ((h // 16) % 3 + 1)), w + 24))
    return shapes


def export_onnx(checkpoint, out, *, size=(512, 1024), dynamic=False, opset=MIN_OPSET, seed=0) -> dict:
    """Export, check with onnxruntime, then move into place. Returns the report (dict)."""
    require("onnx", "tools.export_onnx")
    import onnx
    import onnxruntime as ort

    if opset < MIN_OPSET:
        raise ExportError(
            f"--opset {opset}: use >= {MIN_OPSET} (GridSample needs 16; the dynamo exporter emits opset-18 "
            "ops and cannot convert them down to 17)"
        )
    shapes = check_sizes(size, dynamic)
    out = Path(out)
    if out.exists() and out.is_dir():
        raise ExportError(f"--out {out}: is a folder; give a file name such as model.onnx")
    holder: dict = {}

    def build(tmp: str) -> None:  # the export and its checks, on the temporary file
        holder["started"] = True
        try:
            twin = load_torch_model(checkpoint)
        except (OSError, ValueError, KeyError) as e:  # ConversionError is a ValueError
            raise ExportError(f"--checkpoint {checkpoint}: {e}") from e
        module = export_module(twin, dynamic)
        gen = torch.Generator().manual_seed(seed)
        inputs = [torch.randn(b, 3, h, w, generator=gen) for b, h, w in shapes]
        # A batch of 2 as the example keeps torch.export from specialising batch 1.
        example = inputs[-1] if dynamic else inputs[0]
        export_graph(module.eval(), example, tmp, opset, dynamic)

        graph = onnx.load(tmp)
        onnx.checker.check_model(graph)
        written_opset = max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
        if written_opset != opset:
            raise ExportError(f"asked for opset {opset}, the exporter wrote opset {written_opset}")
        ops = sorted({n.op_type for n in graph.graph.node})
        if "BatchNormalization" in ops and not twin.config.is_zoo:
            raise ExportError("the exported graph still has BatchNormalization nodes")
        if "GridSample" not in ops and twin.config.name in GRID_SAMPLING:
            raise ExportError(f"the exported graph has no GridSample node (ops: {ops})")
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        twin64 = copy.deepcopy(twin).double()
        checks = [compare(session, twin, x, twin64) for x in inputs]
        report = {
            "out": str(out),
            "exporter": "torch.onnx.export(dynamo=True)",
            "opset": written_opset,
            "dynamic": dynamic,
            "config": json.loads(twin.config.to_json()),
            "ops": ops,
            "checks": checks,
            "thresholds": {
                "rel_l2": f"max({MAX_REL_L2:g}, {FP32_FACTOR:g} x the twin's fp32 distance to fp64)",
                "argmax_agreement": MIN_ARGMAX_AGREEMENT,
            },
        }
        bad = [
            c for c in checks if not (c["rel_l2"] <= c["max_rel_l2"] and c["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT)
        ]
        if bad:
            raise ExportError(f"onnxruntime disagrees with the PyTorch twin: {bad}; nothing written")
        holder["report"] = report

    try:
        write_atomic(out, build)  # kept only if every check passed (csfcn/files.py)
    except OSError as e:
        if holder.get("started"):
            raise
        raise ExportError(f"--out {out}: cannot write there ({e.strerror or e})") from e
    return holder["report"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.export_onnx",
        description="Export a CSFCN checkpoint to ONNX (BN folded, GridSample) and check it with onnxruntime "
        "against the PyTorch twin (relative L2 <= 1e-4, argmax agreement >= 99.9%).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help=".safetensors, upstream .pth, or Orbax Flax directory")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument(
        "--size", nargs=2, type=int, default=(512, 1024), metavar=("H", "W"), help="input size (multiples of 8)"
    )
    p.add_argument("--dynamic", action="store_true", help="free batch, H and W (multiples of 8)")
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    p.add_argument("--seed", type=int, default=0, help="seed of the random check inputs")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    require("onnx", "python -m tools.export_onnx", cli=True)
    rc = report_errors(lambda: _export_and_report(args), (ExportError,), debug=args.debug)  # csfcn/cli.py
    return rc


def _export_and_report(args) -> None:
    report = export_onnx(
        args.checkpoint, args.out, size=tuple(args.size), dynamic=args.dynamic, opset=args.opset, seed=args.seed
    )
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"wrote {report['out']} ({report['exporter']}, opset {report['opset']}, dynamic={report['dynamic']})")
        for c in report["checks"]:
            print(
                f"onnxruntime vs twin, input {c['shape']}: rel L2 {c['rel_l2']:.3e} (<= {c['max_rel_l2']:.2g}; the "
                f"twin is {c['twin_vs_fp64']:.2e} from fp64), "
                f"argmax agreement {100 * c['argmax_agreement']:.4f}% (>= {100 * MIN_ARGMAX_AGREEMENT:g}%)"
            )


if __name__ == "__main__":
    sys.exit(main())
