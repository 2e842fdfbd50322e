"""The one name-and-layout table between Flax params and PyTorch ``state_dict``s.

Flax and PyTorch trees share module paths (``sfc.conv_offset.1``, ``resnet.layer1.0.bn1``),
so a PyTorch key is the Flax path joined with dots, with the leaf renamed and the array
re-laid-out by the rule below.  The same rules are walked in both directions:

================  =====================  ==================================================
Flax leaf         PyTorch leaf           layout
================  =====================  ==================================================
``kernel`` (4-D)  ``weight``             conv HWIO <-> OIHW
``kernel`` (2-D)  ``weight``             dense [in, out] <-> Conv1d [out, in, 1]
``bias``          ``bias``               same
``scale``         ``weight``             same (BatchNorm)
``mean``          ``running_mean``       same (BatchNorm statistics)
``var``           ``running_var``        same
``num_batches_tracked``  same           int32 <-> int64; optional on import, as in PyTorch
================  =====================  ==================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from csfcn.checkpoints import ConversionError, raise_mismatch
from csfcn.tree import KeyPath

__all__ = ["LEAF_RULES", "ConversionError", "KeyPath", "flax_to_torch", "raise_mismatch", "torch_key", "torch_to_flax"]


@dataclasses.dataclass(frozen=True)
class Rule:
    torch_leaf: str
    to_torch: Callable[[np.ndarray], np.ndarray]
    to_flax: Callable[[np.ndarray], np.ndarray]


def _same(a):
    return a


def _kernel_to_torch(a):
    if a.ndim == 4:
        return a.transpose(3, 2, 0, 1)
    if a.ndim == 2:
        return a.T[:, :, None]
    raise ValueError(f"kernel of rank {a.ndim} has no PyTorch layout rule")


def _kernel_to_flax(a):
    if a.ndim == 4:
        return a.transpose(2, 3, 1, 0)
    if a.ndim == 3:
        return a[:, :, 0].T
    raise ValueError(f"weight of rank {a.ndim} has no Flax layout rule")


LEAF_RULES: dict[str, Rule] = {
    "kernel": Rule("weight", _kernel_to_torch, _kernel_to_flax),
    "bias": Rule("bias", _same, _same),
    "scale": Rule("weight", _same, _same),
    "mean": Rule("running_mean", _same, _same),
    "var": Rule("running_var", _same, _same),
    "num_batches_tracked": Rule(
        "num_batches_tracked", lambda a: a.astype(np.int64), lambda a: np.asarray(a).astype(np.int32)
    ),
}
# PyTorch checkpoints written before BatchNorm counted batches (e.g. torchvision's
# resnet18-5c106cde.pth) lack these; PyTorch itself accepts that, so do we.
OPTIONAL_LEAVES = frozenset({"num_batches_tracked"})


def torch_key(path: KeyPath) -> str:
    *mods, leaf = path
    if leaf not in LEAF_RULES:
        raise ConversionError(f"no conversion rule for Flax leaf {'.'.join(map(str, path))!r}")
    return ".".join([*map(str, mods), LEAF_RULES[leaf].torch_leaf])


def flax_to_torch(flat: Mapping[KeyPath, np.ndarray]) -> dict[str, np.ndarray]:
    """Flax flat params {path: array} -> PyTorch layout {key: array}."""
    out = {}
    for path, arr in flat.items():
        out[torch_key(path)] = np.array(LEAF_RULES[path[-1]].to_torch(np.asarray(arr)), order="C")  # keeps 0-d shapes
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
        try:
            conv = LEAF_RULES[path[-1]].to_flax(arr)
        except ValueError as e:
            bad_shape.append(f"{key}: {tuple(arr.shape)} ({e})")
            continue
        if tuple(conv.shape) != tuple(shape):
            want = tuple(LEAF_RULES[path[-1]].to_torch(np.zeros(shape, np.float32)).shape)
            bad_shape.append(f"{key}: checkpoint has {tuple(arr.shape)}, model expects {want}")
            continue
        params[path] = conv
    unexpected = sorted(k for k in tensors if k not in used and not ignore(k))
    raise_mismatch(source, bad_shape, missing, unexpected, strict)
    return params, missing, unexpected
