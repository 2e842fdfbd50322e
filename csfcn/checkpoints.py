"""What every checkpoint format shares, framework-free: names, kinds, the config inferred from
upstream tensor shapes, and the one error a mismatching checkpoint raises.

The formats (docs/architecture.md, "Checkpoint names"); each side reads its own:

* ``*.safetensors`` -- our PyTorch export: upstream key names and layouts, the model config
  as JSON in the file metadata (:data:`CONFIG_KEY`) so that loading needs nothing else;
* ``*.pth`` / ``*.pt`` / ``*.pth.tar`` -- a PyTorch ``state_dict`` with upstream names (an
  official CSFCN checkpoint, or one we wrote); the config is inferred from tensor shapes;
  both read and written by :mod:`torch_deploy.checkpoint`;
* a directory -- Flax params saved with Orbax (``params/`` next to :data:`CONFIG_FILE`) or a
  training run, read and written by :mod:`jax_csfcn.checkpointing`.

:mod:`convert` bridges the two sides (any format into either framework).
"""

from __future__ import annotations

import os

from csfcn.model_config import DEEP_STEM_WIDTHS, HEAD_UPSAMPLE, STEMS, ModelConfig
from csfcn.registry import MODELS, names

CONFIG_KEY = "csfcn_config"  # safetensors metadata key
CONFIG_FILE = "csfcn_config.json"  # next to Orbax params
PARAMS_DIR = "params"
TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".bin", ".ckpt")


class ConversionError(ValueError):
    """A checkpoint does not match the model: names every offending tensor."""


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


def raise_mismatch(source: str, bad_shape: list[str], missing: list[str], unexpected: list[str], strict: bool) -> None:
    """One :class:`ConversionError` naming every wrongly shaped, missing (strict) and unexpected
    (strict) tensor of ``source``; nothing when all match."""
    problems = []
    if bad_shape:
        problems.append("wrong shape: " + "; ".join(bad_shape))
    if strict and missing:
        problems.append(f"missing {len(missing)}: " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if strict and unexpected:
        problems.append(
            f"unexpected {len(unexpected)}: " + ", ".join(unexpected[:20]) + (" ..." if len(unexpected) > 20 else "")
        )
    if problems:
        raise ConversionError(
            f"{source} does not match the model ({'; '.join(problems)}). Check the variant, "
            "class count and stem, or pass strict=False / --no-strict to load the rest."
        )


def stem_signature(stem: str) -> dict[str, tuple[int, ...]]:
    """The stem's conv weights ({PyTorch name under the backbone: OIHW shape}); they tell the
    stems apart: a 7x7 ``conv1`` (torchvision), or three 3x3 convs 3->32->32->64 (``deep``)
    or 3->64->64->128 (``deep128``)."""
    if stem == "torchvision":
        return {"conv1.weight": (64, 3, 7, 7)}
    a, b, c = DEEP_STEM_WIDTHS[stem]
    return {"conv1.0.weight": (a, 3, 3, 3), "conv1.3.weight": (b, a, 3, 3), "conv1.6.weight": (c, b, 3, 3)}


def infer_stem(tensors, prefix: str = "") -> str | None:
    """The stem whose conv shapes ``tensors`` has under ``prefix`` (``"resnet."`` in a CSFCN,
    ``""`` in an ImageNet ResNet), or None when no stem matches."""
    for stem in STEMS:
        sig = stem_signature(stem)
        if all(prefix + k in tensors and tuple(tensors[prefix + k].shape) == s for k, s in sig.items()):
            return stem
    return None


def stem_shapes(tensors, prefix: str = "") -> str:
    """The stem conv shapes ``tensors`` has, for error messages."""
    convs = sorted({k for stem in STEMS for k in stem_signature(stem)})
    found = [f"{prefix}{k} {list(tensors[prefix + k].shape)}" for k in convs if prefix + k in tensors]
    return ", ".join(found) or f"no {prefix}conv1 weights"


def _known_stems() -> str:
    return "; ".join(
        f"{stem}: " + ", ".join(f"{k} {list(s)}" for k, s in stem_signature(stem).items()) for stem in STEMS
    )


# The zoo models' upstream state_dicts (docs/zoo.md): a key only that model has, and the tensor
# whose first dimension gives the class count (csfcn.registry).
ZOO_SIGNATURES = {n: (MODELS[n].upstream_key, MODELS[n].upstream_classifier) for n in names(zoo=True)}


def _zoo_classes(name: str, tensors, source: str) -> int:
    """The class count of an upstream-named zoo ``name`` state_dict, checked where it is written twice."""
    spec = MODELS[name]
    rows = int(tensors[spec.upstream_classifier].shape[0])
    if rows % spec.upstream_rows_per_class:
        raise ConversionError(
            f"{source}: {spec.upstream_classifier} has {rows} outputs, not a multiple of "
            f"{spec.upstream_rows_per_class} ({name} writes that many per class)"
        )
    k = rows // spec.upstream_rows_per_class
    for fixed in spec.upstream_fixed_19:
        if fixed in tensors and int(tensors[fixed].shape[0]) != k:
            raise ConversionError(
                f"{source}: a {name} for {k} classes ({spec.upstream_classifier}) whose {fixed} has "
                f"{int(tensors[fixed].shape[0])}: the upstream code builds that tensor for 19 classes "
                f"whatever the class count, a network it cannot run at {k} (docs/zoo.md); this port "
                "sizes it by the class count, so only an upstream file for 19 classes loads"
            )
    return k


def infer_config(tensors, source: str = "checkpoint") -> ModelConfig:
    """Model, class count and stem from upstream-named tensor shapes ({name: array})."""
    for name, (signature, classifier) in ZOO_SIGNATURES.items():
        if signature in tensors and classifier in tensors:
            return ModelConfig(name=name, num_classes=_zoo_classes(name, tensors, source))
    try:
        head_bias = tensors["conv_out32.conv_out.bias"]
        offset_in = tensors["sfc.conv_offset.0.conv.weight"].shape[1]
    except KeyError as e:
        raise ConversionError(
            f"{source}: not a CSFCN state_dict (no {e.args[0]!r}) nor one of the zoo models' "
            f"({', '.join(ZOO_SIGNATURES)})"
        ) from None
    stem = infer_stem(tensors, "resnet.")
    if stem is None:
        raise ConversionError(
            f"{source}: unknown backbone stem ({stem_shapes(tensors, 'resnet.')}); the stems are {_known_stems()}"
        )
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
    return ModelConfig(name=variant, num_classes=k, stem=stem)


def config_of(tensors, meta: dict, source: str) -> ModelConfig:
    """The config stored in our metadata, else the one inferred from upstream tensor shapes."""
    if CONFIG_KEY not in meta:
        return infer_config(tensors, source)
    try:
        return ModelConfig.from_json(meta[CONFIG_KEY])
    except (ValueError, TypeError, KeyError) as e:  # JSONDecodeError is a ValueError
        raise ConversionError(
            f"{source}: the model config in its metadata ({CONFIG_KEY!r}) is not valid: {e}; re-export it with "
            "python -m convert"
        ) from None


def check_imagenet_stem(tensors, stem: str, source: str) -> None:
    """An ImageNet ResNet whose stem is another known one than the model's ``stem``: one error
    naming both and the setting that fixes it (an unknown stem is left to the name-by-name check)."""
    found = infer_stem(tensors)
    if found is not None and found != stem:
        raise ConversionError(
            f"{source}: its stem is {found!r} ({stem_shapes(tensors)}), the model's is {stem!r}; set the "
            f"model's stem to {found!r} (--config.model.stem={found} in training, --stem {found} for "
            "python -m convert) to initialise it from this file"
        )


def is_imagenet_resnet(tensors) -> bool:
    """torchvision/timm ResNet naming (top-level ``layer1``), not a CSFCN ``resnet.`` tree."""
    return "layer1.0.conv1.weight" in tensors and not any(k.startswith("resnet.") for k in tensors)


def refuse_imagenet(path, tensors) -> None:
    """An ImageNet backbone given where a whole CSFCN checkpoint is expected: say what to do."""
    if is_imagenet_resnet(tensors):
        raise ConversionError(
            f"{path}: this is an ImageNet ResNet-18 (torchvision/timm names), not a CSFCN checkpoint; "
            "use it to initialise the backbone (convert.load_imagenet_backbone or `python -m convert "
            f"{path} OUT --model ... --num-classes ...`)"
        )
