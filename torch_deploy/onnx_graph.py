"""The ONNX graph of the twin: BN folded, optionally shape-generic (any batch, H and W).

Library half of ``python -m tools.export_onnx`` (which adds the onnxruntime check and
the CLI): :func:`export_module` is the module that is exported -- the twin's own tree with its
BatchNorms folded, on :class:`ExportOps` for ``dynamic`` -- and :func:`export_graph` writes it
with the dynamo exporter. ``torch_deploy.cpu_peers`` exports through the same two functions.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.export import Dim

from csfcn.model_config import PYRAMID_GRIDS, SFC_GROUPS
from kernels.sfc_fuse import offset_grid
from torch_deploy.model import CSFCN, ReferenceOps
from torch_deploy.optimize import fold_conv_bn_pairs, remove_bn

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


class ExportOps(ReferenceOps):
    """The twin's ops with shape-generic pooling and sampling grids (the ``--dynamic`` export):
    CFC attends over masked, padded pooled positions, SFC samples on a grid built from symbolic
    sizes; every other op is the twin's."""

    name = "export"

    def pool(self, x):
        return pyramid_pool_masked(x)

    def sfc_grid(self, n, h, w, offsets):
        return offset_grid(offsets, SFC_GROUPS)  # the exact linspace, shape-generic (kernels/sfc_fuse.py)


def export_module(model: nn.Module, dynamic: bool) -> nn.Module:
    """What is exported: the twin with its BatchNorms folded, on :class:`ExportOps` when ``dynamic``.
    A zoo model (docs/zoo.md) keeps the BNs its data flow does not let fold (SwiftNet's
    pre-activation ones), exported as BatchNormalization nodes."""
    if model.config.is_zoo:
        return fold_conv_bn_pairs(model)
    folded = fold_batchnorms(model)
    return folded.use_ops(ExportOps()) if dynamic else folded


# --------------------------------------------------------------------------- writing
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
