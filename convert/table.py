"""The one name-and-layout table between Flax params and PyTorch ``state_dict``s.

Flax and PyTorch trees share module paths (``sfc.conv_offset.1``, ``resnet.layer1.0.bn1``),
so a PyTorch key is the Flax path joined with dots, with the leaf renamed and the array
re-laid-out by the rule below.  The same rules are walked in both directions:

================  =====================  ==================================================
Flax leaf         PyTorch leaf           layout
================  =====================  ==================================================
``kernel`` (4-D)  ``weight``             Conv2d, any ``groups``: HWIO <-> OIHW, I = in / groups
                                         (depthwise: [k, k, 1, C] <-> [C, 1, k, k])
``kernel`` (3-D)  ``weight``             Conv1d, any kernel size: [k, in, out] <-> [out, in, k]
``kernel`` (2-D)  ``weight``             dense [in, out] <-> Conv1d kernel 1 [out, in, 1]
                                         (CSFCN's key/value convs) or Linear [out, in]
``bias``          ``bias``               same
``scale``         ``weight``             same (BatchNorm)
``mean``          ``running_mean``       same (BatchNorm statistics)
``var``           ``running_var``        same
``num_batches_tracked``  same           int32 <-> int64; optional on import, as in PyTorch
================  =====================  ==================================================

A leaf with more than one PyTorch layout (the dense kernel) is read from either: the
PyTorch tensor's rank and the Flax template's tell them apart.  Written out, it takes the
first layout listed (Conv1d, the upstream CSFCN's) unless :func:`flax_to_torch` is given the
target ``state_dict``'s shapes, as a model with ``nn.Linear`` layers needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from csfcn.checkpoints import ConversionError, raise_mismatch
from csfcn.tree import KeyPath

__all__ = [
    "LEAF_RULES",
    "ConversionError",
    "KeyPath",
    "Layout",
    "Rule",
    "flax_to_torch",
    "raise_mismatch",
    "torch_key",
    "torch_to_flax",
]


@dataclasses.dataclass(frozen=True)
class Layout:
    """One PyTorch form of a Flax leaf: the ranks on each side (None: any, kept) and the
    re-layouts both ways."""

    flax_rank: int | None
    torch_rank: int | None
    to_torch: Callable[[np.ndarray], np.ndarray]
    to_flax: Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
    """A Flax leaf's PyTorch name and its layouts, in order of preference."""

    torch_leaf: str
    layouts: tuple[Layout, ...]

    def to_torch(self, a: np.ndarray, like: Sequence[int] | None = None) -> np.ndarray:
        """Flax -> PyTorch layout: the first layout for ``a``'s rank, or, given the PyTorch
        shape ``like``, the one that produces it."""
        fits = [lay for lay in self.layouts if lay.flax_rank in (None, a.ndim)]
        if not fits:
            raise ValueError(f"a Flax leaf of rank {a.ndim} has no PyTorch {self.torch_leaf!r} layout rule")
        if like is None:
            return fits[0].to_torch(a)
        for lay in fits:
            out = lay.to_torch(a)
            if tuple(out.shape) == tuple(like):
                return out
        raise ValueError(f"Flax shape {tuple(a.shape)} has no PyTorch layout of shape {tuple(like)}")

    def to_flax(self, a: np.ndarray, flax_rank: int | None = None) -> np.ndarray:
        """PyTorch -> Flax layout: the layout for ``a``'s rank (and the Flax side's, if given)."""
        for lay in self.layouts:
            if lay.torch_rank in (None, a.ndim) and (flax_rank is None or lay.flax_rank in (None, flax_rank)):
                return lay.to_flax(a)
        want = "" if flax_rank is None else f" for a Flax leaf of rank {flax_rank}"
        raise ValueError(f"{self.torch_leaf} of rank {a.ndim} has no Flax layout rule{want}")

    def torch_shapes(self, flax_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Every PyTorch shape a Flax leaf of ``flax_shape`` is written as or read from."""
        a = np.zeros(flax_shape, np.float32)
        return [tuple(lay.to_torch(a).shape) for lay in self.layouts if lay.flax_rank in (None, a.ndim)]


def _same(a):
    return a


def _swap(a):  # reverses the axes: [k, in, out] <-> [out, in, k], [in, out] <-> [out, in]
    return a.T


ANY = Layout(None, None, _same, _same)
KERNEL_LAYOUTS = (
    Layout(4, 4, lambda a: a.transpose(3, 2, 0, 1), lambda a: a.transpose(2, 3, 1, 0)),  # Conv2d, any groups
    Layout(3, 3, _swap, _swap),  # Conv1d
    Layout(2, 3, lambda a: a.T[:, :, None], lambda a: a[:, :, 0].T),  # dense as Conv1d, kernel 1
    Layout(2, 2, _swap, _swap),  # Linear
)

LEAF_RULES: dict[str, Rule] = {
    "kernel": Rule("weight", KERNEL_LAYOUTS),
    "bias": Rule("bias", (ANY,)),
    "scale": Rule("weight", (ANY,)),
    "mean": Rule("running_mean", (ANY,)),
    "var": Rule("running_var", (ANY,)),
    "num_batches_tracked": Rule(
        "num_batches_tracked",
        (Layout(None, None, lambda a: a.astype(np.int64), lambda a: np.asarray(a).astype(np.int32)),),
    ),
}
# Constant (non-BN) buffers a model keeps in its state_dict: SwiftNet's input statistics.
for _buffer in ("img_mean", "img_std"):
    LEAF_RULES[_buffer] = Rule(_buffer, (ANY,))
# PyTorch checkpoints written before BatchNorm counted batches (e.g. torchvision's
# resnet18-5c106cde.pth) lack these; PyTorch itself accepts that, so do we.
OPTIONAL_LEAVES = frozenset({"num_batches_tracked"})


def torch_key(path: KeyPath) -> str:
    *mods, leaf = path
    if leaf not in LEAF_RULES:
        raise ConversionError(f"no conversion rule for Flax leaf {'.'.join(map(str, path))!r}")
    return ".".join([*map(str, mods), LEAF_RULES[leaf].torch_leaf])


def flax_to_torch(
    flat: Mapping[KeyPath, np.ndarray], torch_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, np.ndarray]:
    """Flax flat params {path: array} -> PyTorch layout {key: array}.

    ``torch_shapes`` ({key: shape}, e.g. from the target module's ``state_dict()``) picks the
    layout of leaves that have several (a dense kernel as ``nn.Linear`` rather than Conv1d);
    keys it lacks take the table's first layout.  A shape no layout produces is an error.
    """
    out, bad_shape = {}, []
    for path, arr in flat.items():
        key = torch_key(path)
        like = None if torch_shapes is None else torch_shapes.get(key)
        try:
            conv = LEAF_RULES[path[-1]].to_torch(np.asarray(arr), like)
        except ValueError as e:
            bad_shape.append(f"{key}: {e}")
            continue
        out[key] = np.array(conv, order="C")  # keeps 0-d shapes
    if bad_shape:
        raise ConversionError("Flax params do not fit the PyTorch layouts: " + "; ".join(bad_shape))
    return out


def torch_to_flax(
    template: Mapping[KeyPath, tuple[int, ...]],
    tensors: Mapping[str, np.ndarray],
    *,
    strict: bool = True,
    ignore: Callable[[str], bool] = lambda key: False,
    source: str = "checkpoint",
) -> tuple[dict[KeyPath, np.ndarray], list[str], list[str]]:
    """PyTorch layout {key: array} -> Flax flat params for every path of ``template``.

    ``template`` maps each Flax path to its expected shape.  Returns (params, missing,
    unexpected).  With ``strict`` any missing, unexpected or wrongly shaped tensor raises a
    :class:`ConversionError` that lists them; keys for which ``ignore(key)`` is true are
    dropped silently (the ImageNet classifier, say).
    """
    params: dict[KeyPath, np.ndarray] = {}
    missing, bad_shape = [], []
    used = set()
    for path, shape in template.items():
        key = torch_key(path)
        if key not in tensors:
            if path[-1] not in OPTIONAL_LEAVES:
                missing.append(key)
            continue
        used.add(key)
        arr = np.asarray(tensors[key])
        rule = LEAF_RULES[path[-1]]
        try:
            conv = rule.to_flax(arr, len(shape))
        except ValueError as e:
            bad_shape.append(f"{key}: {tuple(arr.shape)} ({e})")
            continue
        if tuple(conv.shape) != tuple(shape):
            want = " or ".join(map(str, rule.torch_shapes(shape)))
            bad_shape.append(f"{key}: checkpoint has {tuple(arr.shape)}, model expects {want}")
            continue
        params[path] = conv
    unexpected = sorted(k for k in tensors if k not in used and not ignore(k))
    raise_mismatch(source, bad_shape, missing, unexpected, strict)
    return params, missing, unexpected
