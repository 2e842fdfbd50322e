"""Export a CSFCN checkpoint to ONNX, and check the file with onnxruntime in the same command.

    python -m torch_deploy.export_onnx --checkpoint model.safetensors --out model.onnx
    python -m torch_deploy.export_onnx --checkpoint model.safetensors --out model.onnx --dynamic

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
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.export import Dim

from convert.formats import load_torch_model
from csfcn.cli import DEBUG_HELP, report_errors
from csfcn.extras import require
from csfcn.files import write_atomic
from csfcn.model_config import PYRAMID_GRIDS, SFC_GROUPS
from torch_deploy.model import CSFCN, ReferenceOps
from torch_deploy.optimize import remove_bn

MAX_REL_L2 = 1e-4
MIN_ARGMAX_AGREEMENT = 0.999
# GridSample needs opset 16; the dynamo exporter writes opset-18 ops and its conversion down to
# 17 fails (ReduceMean's axes input -> attribute), so 18 is the lowest opset that really works.
MIN_OPSET = 18


class ExportError(Exception):
    """A problem with the export's input or its check; the message says what."""


# --------------------------------------------------------------------------- BN folding
def fold_batchnorms(model: CSFCN) -> CSFCN:
    """A copy of the twin with every BatchNorm folded into the conv before it (BN -> Identity):
    :func:`torch_deploy.optimize.remove_bn`, the one folding pass, then a check that none is left."""
    try:
        model = remove_bn(model)
    except ValueError as e:
        raise ExportError(str(e)) from e
    left = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise ExportError(f"BatchNorm layers left unfolded: {left}")
    return model


# --------------------------------------------------------------------------- shape-generic ops
def _pool_matrix(n: int, bins: torch.Tensor, max_bins: int, device) -> torch.Tensor:
    """(max_bins, n) matrix averaging a length-n axis into ``bins`` adaptive-pooling bins.

    Bin i covers [floor(i*n/bins), ceil((i+1)*n/bins)) as in ``adaptive_avg_pool``; rows
    i >= bins are zero.
    """
    i = torch.arange(max_bins, device=device).unsqueeze(1)
    idx = torch.arange(n, device=device).unsqueeze(0)
    start = torch.div(i * n, bins, rounding_mode="floor")
    end = torch.div((i + 1) * n + bins - 1, bins, rounding_mode="floor")
    m = ((idx >= start) & (idx < end) & (i < bins)).to(torch.float32)
    return m / m.sum(1, keepdim=True).clamp(min=1.0)


def pyramid_pool_masked(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> pooled (B, C, S_max) and bool (S_max,) validity, for any H, W.

    The same bins as :func:`torch_deploy.model.pyramid_pool` (grid g x max(1, round(W/H*g)),
    half-to-even rounding in float64 like Python's ``round``), in another order and padded
    with invalid bins up to ``(g*W + H//2)//H + 1`` columns, which bounds the column count.
    """
    b, c, h, w = x.shape
    one = torch.ones((), dtype=torch.float64, device=x.device)
    ratio = (one * w) / (one * h)
    feats, valid = [], []
    for g in PYRAMID_GRIDS:
        cols = torch.clamp(torch.round(ratio * g), min=1).to(torch.int64)
        max_cols = (g * w + h // 2) // h + 1
        rows_m = _pool_matrix(h, torch.full((), g, dtype=torch.int64, device=x.device), g, x.device)
        cols_m = _pool_matrix(w, cols, max_cols, x.device)
        feats.append(torch.matmul(rows_m, torch.matmul(x, cols_m.t())).reshape(b, c, -1))
        valid.append((torch.arange(max_cols, device=x.device) < cols).repeat(g))
    return torch.cat(feats, 2), torch.cat(valid)


def _linspace(n: int, dtype, device) -> torch.Tensor:
    """``torch.linspace(-1, 1, n)`` (same two-sided formula) with a symbolic ``n`` (n >= 2)."""
    i = torch.arange(n, device=device).to(dtype)
    step = 2.0 / (i[-1:]).clamp(min=1.0)
    return torch.where(i < n // 2, -1.0 + step * i, 1.0 - step * ((n - 1) - i))


def _sfc_grid(n: int, h: int, w: int, offsets: torch.Tensor) -> torch.Tensor:
    kw = {"dtype": offsets.dtype, "device": offsets.device}
    ys = _linspace(h, **kw).view(-1, 1) + torch.zeros(1, w, **kw)
    xs = _linspace(w, **kw).view(1, -1) + torch.zeros(h, 1, **kw)
    off = offsets.reshape(n * SFC_GROUPS, 2, h, w).permute(0, 2, 3, 1)
    return torch.stack((xs, ys), dim=2) + torch.stack((off[..., 0] / w, off[..., 1] / h), dim=3)


class ExportOps(ReferenceOps):
    """The twin's ops with shape-generic pooling and sampling grids (the ``--dynamic`` export):
    CFC attends over masked, padded pooled positions, SFC samples on a grid built from symbolic
    sizes; every other op is the twin's."""

    name = "export"

    def pool(self, x):
        return pyramid_pool_masked(x)

    def sfc_grid(self, n, h, w, offsets):
        return _sfc_grid(n, h, w, offsets)


def export_module(model: CSFCN, dynamic: bool) -> CSFCN:
    """What is exported: the twin with its BatchNorms folded, on :class:`ExportOps` when ``dynamic``."""
    folded = fold_batchnorms(model)
    return folded.use_ops(ExportOps()) if dynamic else folded


# --------------------------------------------------------------------------- export + check
def export_graph(
    module: nn.Module, example: torch.Tensor, path: str, opset: int = MIN_OPSET, dynamic: bool = False
) -> None:
    """Write ``module`` as ONNX (dynamo exporter) to ``path``: input "image", output "logits"."""

    kwargs = {}
    if dynamic:
        h8, w8 = Dim("h8", min=4, max=1024), Dim("w8", min=4, max=1024)
        kwargs["dynamic_shapes"] = ({0: Dim("batch", min=1, max=1024), 2: 8 * h8, 3: 8 * w8},)  # the one input
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            verbose=False,
            **kwargs,
        )
    program.save(path, external_data=False)


def compare(session, model: CSFCN, x: torch.Tensor) -> dict:
    """Relative L2 error and argmax agreement of onnxruntime vs the twin on ``x``."""
    with torch.inference_mode():
        ref = model(x).double().numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].astype(np.float64)
    if got.shape != ref.shape:
        raise ExportError(f"onnxruntime output shape {got.shape} != twin {ref.shape} for input {tuple(x.shape)}")
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    return {"shape": list(x.shape), "rel_l2": rel, "argmax_agreement": agree}


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
    require("onnx", "torch_deploy.export_onnx")
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
        if "BatchNormalization" in ops:
            raise ExportError("the exported graph still has BatchNormalization nodes")
        if "GridSample" not in ops:
            raise ExportError(f"the exported graph has no GridSample node (ops: {ops})")
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        checks = [compare(session, twin, x) for x in inputs]
        report = {
            "out": str(out),
            "exporter": "torch.onnx.export(dynamo=True)",
            "opset": written_opset,
            "dynamic": dynamic,
            "config": json.loads(twin.config.to_json()),
            "ops": ops,
            "checks": checks,
            "thresholds": {"rel_l2": MAX_REL_L2, "argmax_agreement": MIN_ARGMAX_AGREEMENT},
        }
        bad = [c for c in checks if not (c["rel_l2"] <= MAX_REL_L2 and c["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT)]
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
        prog="python -m torch_deploy.export_onnx",
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
    require("onnx", "python -m torch_deploy.export_onnx", cli=True)
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
                f"onnxruntime vs twin, input {c['shape']}: rel L2 {c['rel_l2']:.3e} (<= {MAX_REL_L2:g}), "
                f"argmax agreement {100 * c['argmax_agreement']:.4f}% (>= {100 * MIN_ARGMAX_AGREEMENT:g}%)"
            )


if __name__ == "__main__":
    sys.exit(main())
