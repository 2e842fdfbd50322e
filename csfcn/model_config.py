"""The model configuration and the architecture constants (no JAX or torch imports).

Shared by the Flax model, the PyTorch twin and the converter, so that deployment code can
read a checkpoint's config without importing JAX.
"""

from __future__ import annotations

import dataclasses
import json

from csfcn.registry import MODELS, names

VARIANTS = names(zoo=False)  # CSFCN itself (the Triton kernels, the fast path)
# The comparison models of docs/zoo.md: the same training, evaluation and deployment commands.
ZOO_NAMES = names(zoo=True)
MODEL_NAMES = tuple(MODELS)
STEMS = ("torchvision", "deep", "deep128")
# The deep stems: three 3x3 convs (the first of stride 2) of these output widths, named
# ``conv1.0``, ``conv1.3``, ``conv1.6`` (BN at ``conv1.1``, ``conv1.4``, then the trunk's ``bn1``).
# "deep" is timm's resnet18d (ResNet-v1c); "deep128" the upstream CSFCN's ResNet-18, whose stem
# ends at 128 channels (its "deep-inplane128" ImageNet weights), so layer1's first block takes
# 128 channels and has a 1x1 projection shortcut (``layer1.0.downsample``).
DEEP_STEM_WIDTHS = {"deep": (32, 32, 64), "deep128": (64, 64, 128)}
PYRAMID_GRIDS = (6, 3, 2, 1)  # CFC pooling grids (docs/architecture.md, CFC step 2)
SFC_GROUPS = 2  # SFC groups G
HEAD_UPSAMPLE = 8  # logits are 8x the 1/8 feature map
# Input normalisation of every CSFCN (the ImageNet-pretrained backbone's): RGB in 0..1 units,
# (x / 255 - mean) / std. The training pipeline, evaluation and the deploy predictor all read these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def stem_width(stem: str) -> int:
    """Channels out of the stem, i.e. into layer1: 64, or 128 for ``deep128``."""
    return DEEP_STEM_WIDTHS[stem][-1] if stem in DEEP_STEM_WIDTHS else 64


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; travels inside every checkpoint we write."""

    name: str = "csfcn"
    num_classes: int = 19
    # CSFCN's backbone stem (one of STEMS; "torchvision" when not given). None for a zoo model,
    # which has its upstream backbone (ICNet's deep stem, the others' 7x7 conv): no stem option.
    stem: str | None = None
    # The label space, when it is a user's own (csfcn.class_table): ((name, (r, g, b), mask
    # value: an int, an (r, g, b) colour or None), ...) per train id. Empty: the dataset's table known by the class count (19
    # Cityscapes, 11 CamVid). It changes no tensor; predict and evaluate read names and colours.
    classes: tuple = ()

    def __post_init__(self):
        if self.name not in MODEL_NAMES:
            raise ValueError(f"model.name={self.name!r}: choose one of {MODEL_NAMES}")
        if self.name in VARIANTS:
            stem = "torchvision" if self.stem is None else self.stem
            if stem not in STEMS:
                raise ValueError(f"model.stem={self.stem!r}: choose one of {STEMS}")
        elif self.stem in (None, "torchvision"):  # "torchvision": the config default, and older checkpoints'
            stem = None
        else:
            raise ValueError(
                f"model.stem={self.stem!r} is a CSFCN option; {self.name} has its upstream backbone (leave the stem out)"
            )
        object.__setattr__(self, "stem", stem)
        if int(self.num_classes) < 1:
            raise ValueError(f"model.num_classes={self.num_classes}: must be >= 1")
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "classes", _classes(self.classes, self.num_classes))

    @property
    def is_zoo(self) -> bool:
        """A comparison model of docs/zoo.md rather than CSFCN / CSFCN-Tiny."""
        return self.name in ZOO_NAMES

    @property
    def label(self) -> str:
        """The model's name, with the stem where it has one: ``csfcn, stem deep`` / ``icnet``."""
        return self.name if self.stem is None else f"{self.name}, stem {self.stem}"

    @property
    def class_names(self) -> tuple[str, ...]:
        """The names of ``classes`` (empty when the model carries no class table)."""
        return tuple(n for n, _, _ in self.classes)

    @property
    def class_colors(self) -> tuple[tuple[int, int, int], ...]:
        """The display colours of ``classes`` (empty when the model carries no class table)."""
        return tuple(c for _, c, _ in self.classes)

    def as_dict(self) -> dict:
        """The fields as plain JSON values; ``classes`` only when it is set (older readers)."""
        d = dataclasses.asdict(self)
        if self.stem is None:
            del d["stem"]  # a zoo model: its upstream backbone
        if not self.classes:
            del d["classes"]
        else:
            d["classes"] = [[n, list(c), list(r) if isinstance(r, tuple) else r] for n, c, r in self.classes]
        return d

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_mapping(cls, m) -> ModelConfig:
        m = dict(m)
        if "variant" in m:  # checkpoints written before the zoo named the model "variant"
            m.setdefault("name", m.pop("variant"))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(m) - known
        if unknown:
            raise KeyError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**m)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_mapping(json.loads(text))


def _classes(classes, k: int) -> tuple:
    """``classes`` as nested tuples ``((str, (r, g, b), int | (r, g, b) | None), ...)``, checked against K."""
    if not classes:
        return ()
    if not isinstance(classes, (list, tuple)):
        raise ValueError(f"model.classes={classes!r}: expected a list of (name, (r, g, b), mask value) per class")
    out = []
    for i, entry in enumerate(classes):
        try:
            name, colour, raw = entry
            colour = tuple(int(c) for c in colour)
            if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
                raise ValueError(colour)
            if isinstance(raw, (list, tuple)):
                raw = tuple(int(c) for c in raw)
                if len(raw) != 3:
                    raise ValueError(raw)
            elif raw is not None:
                raw = int(raw)
            out.append((str(name), colour, raw))
        except (TypeError, ValueError):
            raise ValueError(
                f"model.classes[{i}]={entry!r}: expected (name, (r, g, b), mask value: int, (r, g, b) or None)"
            ) from None
    if len(out) != k:
        raise ValueError(f"model.classes lists {len(out)} classes but model.num_classes={k}")
    return tuple(out)
