"""Checkpoint files: read and write every supported format, and infer a model's config.

Formats (the direction of a conversion is inferred from these):

* ``*.safetensors`` -- our PyTorch export: upstream key names and layouts, the model config
  as JSON in the file metadata (``csfcn_config``) so that loading needs nothing else.
* ``*.pth`` / ``*.pt`` / ``*.pth.tar`` -- a PyTorch ``state_dict`` with upstream names (an
  official CSFCN checkpoint, or one we wrote); the config is inferred from tensor shapes.
* a directory -- Flax params saved with Orbax (``params/``) next to ``csfcn_config.json``.

ImageNet ResNet-18 ``state_dict``s (torchvision / timm naming) are a backbone source, read
by :func:`load_imagenet_backbone`, not a whole-model checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from convert.table import ConversionError, KeyPath, flax_to_torch, raise_mismatch, torch_to_flax
from csfcn.extras import require
from csfcn.files import write_atomic
from csfcn.model_config import HEAD_UPSAMPLE, ModelConfig
from csfcn.tree import flatten, unflatten

CONFIG_KEY = "csfcn_config"  # safetensors metadata key
CONFIG_FILE = "csfcn_config.json"  # next to Orbax params
PARAMS_DIR = "params"
TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".bin", ".ckpt")


def kind_of(path) -> str:
    """'safetensors', 'pth' or 'orbax' from the path (existing or to be written)."""
    p = str(path)
    if p.endswith(".safetensors"):
        return "safetensors"
    if p.endswith(TORCH_SUFFIXES):
        return "pth"
    if os.path.isdir(p) or not os.path.splitext(p)[1]:
        return "orbax"
    raise ConversionError(
        f"{p}: unknown checkpoint type; use .safetensors, .pth/.pt, or a directory (Orbax Flax params)"
    )


# --------------------------------------------------------------------------- Flax side
def flatten_state(tree, leaf=np.asarray) -> dict[KeyPath, np.ndarray]:
    """Nested pure dict (as ``nnx.to_pure_dict`` gives) -> {path tuple: leaf(value)}."""
    return flatten(tree, leaf=leaf)


def model_flat(model) -> dict[KeyPath, np.ndarray]:
    require("train", "the Flax side of convert", modules=("jax", "flax"))
    from flax import nnx

    return flatten_state(nnx.to_pure_dict(nnx.state(model)))


def model_template(config: ModelConfig) -> dict[KeyPath, tuple[int, ...]]:
    """{path: shape} of every variable of the model, without allocating it."""
    require("train", "the Flax side of convert", modules=("jax", "flax"))
    from flax import nnx

    from jax_csfcn.model import build_model

    abstract = nnx.eval_shape(lambda: build_model(config))
    return flatten_state(nnx.to_pure_dict(nnx.state(abstract)), leaf=lambda v: tuple(v.shape))


def set_model_flat(model, flat: dict[KeyPath, np.ndarray]) -> None:
    """Write {path: array} into the model's variables (paths must exist)."""
    require("train", "the Flax side of convert", modules=("jax", "flax"))
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)
    for path, arr in flat.items():
        node = pure
        for k in path[:-1]:
            node = node[k]
        if tuple(node[path[-1]].shape) != tuple(arr.shape):
            raise ConversionError(f"{'.'.join(map(str, path))}: shape {arr.shape} != model {node[path[-1]].shape}")
        node[path[-1]] = jnp.asarray(arr, dtype=node[path[-1]].dtype)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


# --------------------------------------------------------------------------- config inference
def infer_config(tensors: dict[str, np.ndarray], source: str = "checkpoint") -> ModelConfig:
    """Variant, class count and stem from upstream-named tensor shapes."""
    try:
        head_bias = tensors["conv_out32.conv_out.bias"]
        offset_in = tensors["sfc.conv_offset.0.conv.weight"].shape[1]
    except KeyError as e:
        raise ConversionError(f"{source}: not a CSFCN state_dict (no {e.args[0]!r})") from None
    stem = "deep" if "resnet.conv1.0.weight" in tensors else "torchvision"
    has_1x1 = "sfc.cp1x1.weight" in tensors
    if has_1x1 and offset_in == 64:
        variant = "csfcn"
    elif not has_1x1 and offset_in == 256:
        variant = "csfcn_tiny"
    else:
        raise ConversionError(
            f"{source}: ambiguous variant (sfc.cp1x1 {'present' if has_1x1 else 'absent'}, "
            f"conv_offset input width {offset_in}); expected CSFCN (present, 64) or CSFCN-Tiny (absent, 256)"
        )
    k = int(head_bias.shape[0])
    if variant == "csfcn":
        if k % HEAD_UPSAMPLE**2:
            raise ConversionError(
                f"{source}: conv_out32.conv_out has {k} outputs, not a multiple of {HEAD_UPSAMPLE**2}; "
                "cannot infer the class count of a pixel-shuffle head"
            )
        k //= HEAD_UPSAMPLE**2
    return ModelConfig(variant=variant, num_classes=k, stem=stem)


# --------------------------------------------------------------------------- PyTorch files
def _unwrap_state_dict(obj, source: str) -> dict:
    if isinstance(obj, dict) and not any(hasattr(v, "shape") for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            if isinstance(obj.get(key), dict):
                return _unwrap_state_dict(obj[key], source)
        raise ConversionError(f"{source}: no state_dict inside (top-level keys: {sorted(obj)[:10]})")
    if not isinstance(obj, dict):
        raise ConversionError(f"{source}: expected a state_dict, got {type(obj).__name__}")
    # DataParallel ("module.") and training wrappers ("model.") prefix every key.
    for prefix in ("module.", "model."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def read_torch_file(path) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors in PyTorch layout, metadata) of a .safetensors or .pth file."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="np") as f:
                meta = f.metadata() or {}
                return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 - safe_open is not a dict
        except (SafetensorError, OSError) as e:
            raise ConversionError(f"{path}: not a readable safetensors file ({e})") from e
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt files raise anything from IndexError to UnpicklingError
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    sd = _unwrap_state_dict(obj, path)
    return {k: v.detach().cpu().numpy() for k, v in sd.items() if hasattr(v, "detach")}, {}


def write_safetensors(path, config: ModelConfig, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    meta = {CONFIG_KEY: config.to_json(), "format": "csfcn-torch"}
    write_atomic(path, lambda tmp: save_file({k: np.array(v, order="C") for k, v in tensors.items()}, tmp, meta))


def write_pth(path, tensors: dict[str, np.ndarray]) -> None:
    import torch

    sd = {k: torch.from_numpy(np.array(v, order="C")) for k, v in tensors.items()}
    write_atomic(path, lambda tmp: torch.save(sd, tmp))


# --------------------------------------------------------------------------- Orbax (Flax)
def write_orbax(path, config: ModelConfig, flat: dict[KeyPath, np.ndarray]) -> None:
    """Flax params + BN statistics with Orbax, and the config as JSON, into directory ``path``."""
    require("train", "reading or writing Orbax checkpoints", modules=("orbax",))
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path}: directory exists and is not empty; remove it or choose another")
    tree = unflatten(flat, leaf=np.asarray, key=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_DIR, tree)
            ckptr.wait_until_finished()
        (tmp / CONFIG_FILE).write_text(config.to_json())
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def read_orbax(path) -> tuple[ModelConfig, dict[tuple[str, ...], np.ndarray]]:
    """(config, {path of str keys: array}) of an Orbax params directory."""
    require("train", "reading or writing Orbax checkpoints", modules=("orbax",))
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file() or not (path / PARAMS_DIR).is_dir():
        raise ConversionError(f"{path}: not a csfcn Flax checkpoint (expected {CONFIG_FILE} and {PARAMS_DIR}/ inside)")
    config = ModelConfig.from_json(cfg_file.read_text())
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(path / PARAMS_DIR)
    return config, {tuple(map(str, p)): np.asarray(v) for p, v in flatten_state(tree).items()}


def _match_template(template: dict[KeyPath, tuple], flat_str: dict, source: str) -> dict[KeyPath, np.ndarray]:
    """Map string-keyed paths back onto the template's (str | int) paths, strictly."""
    by_str = {tuple(map(str, p)): p for p in template}
    missing = [".".join(s) for s in by_str if s not in flat_str]
    unexpected = [".".join(s) for s in flat_str if s not in by_str]
    bad = [
        f"{'.'.join(s)}: {flat_str[s].shape} vs {template[p]}"
        for s, p in by_str.items()
        if s in flat_str and tuple(flat_str[s].shape) != tuple(template[p])
    ]
    if missing or unexpected or bad:
        raise ConversionError(
            f"{source}: params do not match the model: missing {missing[:10]}, unexpected {unexpected[:10]}, wrong shape {bad[:10]}"
        )
    return {p: flat_str[s] for s, p in by_str.items()}


# --------------------------------------------------------------------------- high level
def _refuse_imagenet(path, tensors) -> None:
    if is_imagenet_resnet(tensors):
        raise ConversionError(
            f"{path}: this is an ImageNet ResNet-18 (torchvision/timm names), not a CSFCN checkpoint; "
            "use it to initialise the backbone (convert.load_imagenet_backbone or `python -m convert "
            f"{path} OUT --variant ... --num-classes ...`)"
        )


def read_checkpoint(path, *, strict: bool = True) -> tuple[ModelConfig, dict[KeyPath, np.ndarray]]:
    """Any supported whole-model checkpoint -> (config, Flax flat params)."""
    kind = kind_of(path)
    if kind == "orbax":
        from jax_csfcn.checkpointing import is_run_dir, read_run_params

        if is_run_dir(path):  # a training run (its best, else latest, checkpoint) or one step of it
            config, flat_str, step_dir = read_run_params(path)
            return config, _match_template(model_template(config), flat_str, str(step_dir))
        config, flat_str = read_orbax(path)
        return config, _match_template(model_template(config), flat_str, str(path))
    tensors, meta = read_torch_file(path)
    _refuse_imagenet(path, tensors)
    config = config_of(tensors, meta, str(path))
    flat, _, _ = torch_to_flax(model_template(config), tensors, strict=strict, source=str(path))
    return config, flat


# --------------------------------------------------------------------------- PyTorch formats only
STAT_LEAVES = {"running_mean": "mean", "running_var": "var", "num_batches_tracked": "num_batches_tracked"}


def check_torch_tensors(config: ModelConfig, tensors: dict[str, np.ndarray], *, strict: bool, source: str) -> dict:
    """``tensors`` checked against the PyTorch twin's ``state_dict`` (names and shapes, as
    :func:`convert.table.torch_to_flax` checks them against the Flax model), in its order.
    Needs torch only: a deploy install converts between .pth and .safetensors without JAX."""
    import torch

    from torch_deploy.model import CSFCN as TorchCSFCN

    with torch.device("meta"):
        ref = {k: tuple(v.shape) for k, v in TorchCSFCN(config).state_dict().items()}
    missing = [k for k in ref if k not in tensors and not k.endswith("num_batches_tracked")]
    unexpected = sorted(k for k in tensors if k not in ref)
    bad = [
        f"{k}: checkpoint has {tuple(np.shape(tensors[k]))}, model expects {ref[k]}"
        for k in ref
        if k in tensors and tuple(np.shape(tensors[k])) != ref[k]
    ]
    raise_mismatch(source, bad, missing, unexpected, strict)
    return {k: np.asarray(tensors[k]) for k in ref if k in tensors}


def read_torch_checkpoint(path, *, strict: bool = True) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """A .pth/.safetensors CSFCN checkpoint -> (config, checked PyTorch tensors), without Flax."""
    tensors, meta = read_torch_file(path)
    _refuse_imagenet(path, tensors)
    config = config_of(tensors, meta, str(path))
    return config, check_torch_tensors(config, tensors, strict=strict, source=str(path))


def write_torch_checkpoint(path, config: ModelConfig, tensors: dict[str, np.ndarray]) -> str:
    """PyTorch-layout tensors into a .safetensors (config in the metadata) or an upstream .pth."""
    kind = kind_of(path)
    if kind == "safetensors":
        write_safetensors(path, config, tensors)
    elif kind == "pth":
        write_pth(path, _upstream_order(config, tensors))
    else:
        raise ConversionError(f"{path}: write_torch_checkpoint writes .safetensors or .pth, not {kind}")
    return kind


def write_checkpoint(path, config: ModelConfig, flat: dict[KeyPath, np.ndarray]) -> str:
    """Write Flax flat params in the format named by ``path``; returns the kind written."""
    if kind_of(path) == "orbax":
        write_orbax(path, config, flat)
        return "orbax"
    return write_torch_checkpoint(path, config, flax_to_torch(flat))


def _upstream_order(config: ModelConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keys in the upstream module registration order (a meta-device twin gives it for free)."""
    import torch

    from torch_deploy.model import CSFCN as TorchCSFCN

    with torch.device("meta"):
        order = list(TorchCSFCN(config).state_dict())
    return {k: tensors[k] for k in order if k in tensors} | {k: v for k, v in tensors.items() if k not in order}


def config_of(tensors: dict[str, np.ndarray], meta: dict, source: str) -> ModelConfig:
    """The config stored in our metadata, else the one inferred from upstream tensor shapes."""
    return ModelConfig.from_json(meta[CONFIG_KEY]) if CONFIG_KEY in meta else infer_config(tensors, source)


def is_imagenet_resnet(tensors) -> bool:
    """torchvision/timm ResNet naming (top-level ``layer1``), not a CSFCN ``resnet.`` tree."""
    return "layer1.0.conv1.weight" in tensors and not any(k.startswith("resnet.") for k in tensors)


def load_imagenet_backbone(config: ModelConfig, flat: dict[KeyPath, np.ndarray], path, *, strict: bool = True):
    """Replace the ``resnet`` params of ``flat`` with an ImageNet ResNet-18 ``state_dict``.

    torchvision and timm name ResNet-18 alike (``conv1``, ``bn1``, ``layerN``, ``fc``); timm's
    ``resnet18d`` deep stem matches ``stem: deep``.  ``fc.*`` is ignored; anything else that
    does not map onto the backbone is an error.  Returns (new flat params, loaded key count).
    """
    tensors, _ = read_torch_file(path)
    if not is_imagenet_resnet(tensors):
        raise ConversionError(f"{path}: not an ImageNet ResNet-18 state_dict (no top-level layer1.0.conv1.weight)")
    template = {p[1:]: s for p, s in model_template(config).items() if p[0] == "resnet"}
    params, _, _ = torch_to_flax(
        template, tensors, strict=strict, ignore=lambda k: k.startswith("fc."), source=f"{path} (ImageNet backbone)"
    )
    out = dict(flat)
    out.update({("resnet", *p): v for p, v in params.items()})
    return out, len(params)


def save_flax_model(path, model) -> str:
    """Save an nnx CSFCN in the format named by ``path``."""
    return write_checkpoint(path, model.config, model_flat(model))
