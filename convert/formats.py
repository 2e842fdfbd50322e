"""The bridge between the two sides' checkpoint files: any supported checkpoint into either
framework, and Flax params out to any format.

Each side reads and writes its own formats -- :mod:`torch_deploy.checkpoint` the PyTorch files
(``.safetensors``, upstream ``.pth``) with torch alone, :mod:`jax_csfcn.checkpointing` training
runs and Orbax params with JAX -- and this module crosses between them through the one rule
table of :mod:`convert.table`. The kinds are listed in :mod:`csfcn.checkpoints`.

ImageNet ResNet-18 ``state_dict``s (torchvision / timm naming) are a backbone source, read
by :func:`load_imagenet_backbone`, not a whole-model checkpoint.

The Flax side is imported where it is used: a deployment install (torch only) converts between
``.pth`` and ``.safetensors`` and loads the twin without JAX (csfcn.extras, "train").
"""

from __future__ import annotations

import numpy as np

from convert.table import KeyPath, flax_to_torch, torch_key, torch_to_flax
from csfcn.checkpoints import (
    ConversionError,
    check_imagenet_stem,
    config_of,
    infer_config,
    is_imagenet_resnet,
    kind_of,
    refuse_imagenet,
)
from csfcn.extras import require
from csfcn.model_config import ModelConfig
from torch_deploy.checkpoint import (
    load_model,
    read_torch_checkpoint,
    read_torch_file,
    twin_from_tensors,
    twin_shapes,
    write_safetensors,
    write_torch_checkpoint,
)

__all__ = [
    "ConversionError",
    "infer_config",
    "kind_of",
    "finetune_params",
    "imagenet_initialised",
    "init_backbone",
    "init_from_checkpoint",
    "load_flax_model",
    "load_imagenet_backbone",
    "load_torch_model",
    "read_checkpoint",
    "read_torch_checkpoint",
    "read_torch_file",
    "save_flax_model",
    "write_checkpoint",
    "write_safetensors",
    "write_torch_checkpoint",
]


def _flax_side(what: str):
    """jax_csfcn.checkpointing, or a one-line MissingExtra naming the "train" extra."""
    require("train", what, modules=("jax", "flax"))
    from jax_csfcn import checkpointing  # optional: the training extra (module docstring)

    return checkpointing


def read_checkpoint(path, *, strict: bool = True) -> tuple[ModelConfig, dict[KeyPath, np.ndarray]]:
    """Any supported whole-model checkpoint -> (config, Flax flat params)."""
    ck = _flax_side("reading a checkpoint into Flax")
    if kind_of(path) == "orbax":
        return ck.read_flax_checkpoint(path)
    tensors, meta = read_torch_file(path)
    refuse_imagenet(path, tensors)
    config = config_of(tensors, meta, str(path))
    flat, _, _ = torch_to_flax(ck.model_template(config), tensors, strict=strict, source=str(path))
    return config, flat


def write_checkpoint(path, config: ModelConfig, flat: dict[KeyPath, np.ndarray]) -> str:
    """Write Flax flat params in the format named by ``path``; returns the kind written."""
    if kind_of(path) == "orbax":
        _flax_side("writing Orbax checkpoints").write_orbax(path, config, flat)
        return "orbax"
    return write_torch_checkpoint(path, config, flax_to_torch(flat, torch_shapes=twin_shapes(config)))


def load_imagenet_backbone(config: ModelConfig, flat: dict[KeyPath, np.ndarray], path, *, strict: bool = True):
    """Replace the ``resnet`` params of ``flat`` with an ImageNet ResNet-18 ``state_dict``.

    torchvision and timm name ResNet-18 alike (``conv1``, ``bn1``, ``layerN``, ``fc``); timm's
    ``resnet18d`` deep stem matches ``stem: deep``, and the upstream CSFCN's
    ``resnet18-deep-inplane128`` (stem 3->64->64->128) ``stem: deep128``.  ``fc.*`` is ignored;
    anything else that does not map onto the backbone is an error, and so (with ``strict``) is a
    file whose stem, told by its conv shapes, is another than the model's.  Returns (new flat
    params, loaded key count).
    """
    ck = _flax_side("ImageNet initialisation of the Flax model")
    tensors, _ = read_torch_file(path)
    if not is_imagenet_resnet(tensors):
        raise ConversionError(f"{path}: not an ImageNet ResNet state_dict (no top-level layer1.0.conv1.weight)")
    if config.is_zoo:
        return _zoo_imagenet_backbone(ck, config, flat, tensors, path, strict)
    if strict:
        check_imagenet_stem(tensors, config.stem, f"{path} (ImageNet backbone)")
    template = {p[1:]: s for p, s in ck.model_template(config).items() if p[0] == "resnet"}
    params, _, _ = torch_to_flax(
        template, tensors, strict=strict, ignore=lambda k: k.startswith("fc."), source=f"{path} (ImageNet backbone)"
    )
    out = dict(flat)
    out.update({("resnet", *p): v for p, v in params.items()})
    return out, len(params)


def _zoo_imagenet_backbone(ck, config: ModelConfig, flat, tensors, path, strict: bool):
    """A zoo model's backbone from an ImageNet file: each key renamed by the model's own
    ``imagenet_key`` (jax_csfcn.zoo), then read by the rule table like any checkpoint."""
    from jax_csfcn.zoo import zoo_class

    cls = zoo_class(config.name)
    source = f"{path} (ImageNet {cls.IMAGENET} for {config.name})"
    renamed = {}
    for key, value in tensors.items():
        try:
            target = cls.imagenet_key(key)
        except ValueError as e:
            raise ConversionError(f"{source}: {e}") from None
        if target is not None:
            renamed[target] = value
    full = ck.model_template(config)
    template = {p: s for p, s in full.items() if torch_key(p) in renamed}
    params, _, _ = torch_to_flax(template, renamed, strict=strict, source=source)
    out = dict(flat)
    out.update(params)
    return out, len(params)


def imagenet_initialised(config: ModelConfig, path, *, seed: int = 0, strict: bool = True):
    """(Flax flat params of a fresh model (``seed``) with its backbone from ``path``, loaded count)."""
    ck = _flax_side("ImageNet initialisation of the Flax model")
    return load_imagenet_backbone(config, ck.model_flat(ck.build_model(config, seed=seed)), path, strict=strict)


def init_backbone(model, config: ModelConfig, path) -> int:
    """Load an ImageNet ResNet-18 file into the backbone of the nnx ``model``; returns the tensor count."""
    ck = _flax_side("ImageNet initialisation of the Flax model")
    flat, n = load_imagenet_backbone(config, ck.model_flat(model), path)
    ck.set_model_flat(model, flat)
    return n


CLASSIFIER = ("conv_out32", "conv_out")  # the 1x1 conv whose output channels are the classes


def finetune_params(
    config: ModelConfig, flat: dict[KeyPath, np.ndarray], path, *, class_map: str = ""
) -> tuple[dict[KeyPath, np.ndarray], dict]:
    """Fine-tuning start: ``flat`` (a fresh model of ``config``) with every tensor of the
    checkpoint ``path`` whose name and shape match.

    The classifier (``conv_out32.conv_out``) is kept fresh when the class count differs, and
    then (or whenever ``class_map`` is given) the rows of each new class listed in
    ``class_map`` (``"NEW:OLD,..."`` or ``"cityscapes"``, csfcn.classes.class_mapping) are
    copied from the old class's rows (its R*R sub-pixel channels under the pixel-shuffle head).
    Any other difference -- a tensor missing, extra or of another shape (another variant or
    stem) -- is a ConversionError naming the tensors.  Returns (params, report) with the
    report's "loaded", "reinitialised", "ignored" tensor names and the "mapped" classes.
    """
    from csfcn.classes import class_mapping  # optional: its tables read cityscapesscripts (training extra)

    src_config, src = read_checkpoint(path)
    k_new, k_old = config.num_classes, src_config.num_classes
    try:
        mapping = class_mapping(class_map, k_new, k_old)
    except ValueError as e:
        raise ConversionError(f"{path}: {e}") from None
    name = ".".join
    head = {p for p in flat if p[: len(CLASSIFIER)] == CLASSIFIER}
    bad = [
        f"{name(map(str, p))}: {src[p].shape} vs {flat[p].shape}"
        for p in flat
        if p not in head and p in src and src[p].shape != flat[p].shape
    ]
    missing = [name(map(str, p)) for p in flat if p not in src]
    unexpected = [name(map(str, p)) for p in src if p not in flat]
    if bad or missing or unexpected:
        raise ConversionError(
            f"{path} ({src_config.label}) cannot initialise {config.label}: "
            + "; ".join(
                f"{what}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
                for what, items in (("wrong shape", bad), ("missing", missing), ("unexpected", unexpected))
                if items
            )
            + ". Fine-tuning keeps the architecture; only the class count may change"
        )
    out = dict(flat)
    report: dict = {"loaded": [], "reinitialised": [], "ignored": [], "mapped": {}, "warnings": []}
    old_names, new_names = list(src_config.class_names), list(config.class_names)
    if k_new == k_old and not mapping and old_names and new_names and old_names != new_names:
        report["warnings"].append(
            f"the checkpoint's classes {old_names} are not the model's {new_names}: its classifier is kept as it is; "
            "give init_from_classes to map them, or to start them fresh"
        )
    for p in flat:
        if p in head and (k_new != k_old or mapping):
            continue
        out[p] = np.asarray(src[p], flat[p].dtype)
        report["loaded"].append(name(map(str, p)))
    if k_new != k_old or mapping:
        for p in sorted(head):
            new, old = np.array(flat[p]), np.asarray(src[p])
            rows_new, rows_old = new.shape[-1] // k_new, old.shape[-1] // k_old
            if rows_new != rows_old:
                raise ConversionError(
                    f"{path}: {name(map(str, p))} has {rows_old} channels per class, the model {rows_new}"
                )
            for i, j in mapping.items():
                new[..., i * rows_new : (i + 1) * rows_new] = old[..., j * rows_old : (j + 1) * rows_old]
            out[p] = new
            report["reinitialised" if len(mapping) < k_new else "loaded"].append(name(map(str, p)))
            report["ignored"].append(f"{name(map(str, p))} of the checkpoint ({k_old} classes)")
        report["mapped"] = dict(mapping)
    return out, report


def init_from_checkpoint(model, config: ModelConfig, path, class_map: str = "") -> dict:
    """Load a segmentation checkpoint into the nnx ``model`` for fine-tuning (:func:`finetune_params`)."""
    ck = _flax_side("fine-tuning the Flax model")
    flat, report = finetune_params(config, ck.model_flat(model), path, class_map=class_map)
    ck.set_model_flat(model, flat)
    return report


def save_flax_model(path, model) -> str:
    """Save an nnx CSFCN in the format named by ``path``."""
    return write_checkpoint(path, model.config, _flax_side("saving a Flax model").model_flat(model))


def load_flax_model(path, *, strict: bool = True, dtype=None):
    """The Flax model in eval mode from any supported checkpoint (``dtype``: the compute dtype,
    e.g. ``jnp.bfloat16``; parameters stay fp32)."""
    ck = _flax_side("loading a Flax model")
    config, flat = read_checkpoint(path, strict=strict)
    model = ck.build_model(config, dtype=dtype)
    ck.set_model_flat(model, flat)
    model.eval()
    return model


def load_torch_model(path, *, strict: bool = True, map_location="cpu"):
    """The PyTorch twin in eval mode from any supported checkpoint: a ``.safetensors`` export, an
    upstream ``.pth`` (config inferred from the tensor shapes), a training run or Orbax params
    (converted on the fly; needs the training extra)."""
    if kind_of(path) != "orbax":
        return load_model(path, strict=strict, map_location=map_location)
    config, flat = read_checkpoint(path, strict=strict)
    tensors = flax_to_torch(flat, torch_shapes=twin_shapes(config))
    return twin_from_tensors(config, tensors, source=str(path), strict=strict).to(map_location)
