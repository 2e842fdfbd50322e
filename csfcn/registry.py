"""Every model csfcn knows, declared once: its name and everything the other layers look up by it.

The bottom layer holds the table because the bottom layer needs the names: a checkpoint is
recognised, and a config checked, without importing JAX or PyTorch. So the classes are named
here as ``"module:Class"`` strings, imported by the side that builds them
(``jax_csfcn.zoo.zoo_class``, ``torch_deploy.zoo.zoo_class``); every other table of model names -- the config's choices, the upstream
checkpoint signatures, the ONNX export's GridSample check, the compile gate's models -- is a
view of this one (docs/architecture.md, "One registry"). A new model is one entry here plus its
two modules.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the code needs to know about one model."""

    name: str
    # "module:Class" of the Flax model and of its PyTorch twin. CSFCN's variants share one class
    # each, built from the whole ModelConfig; a zoo class is built as Cls(num_classes).
    flax: str
    torch: str
    # A comparison model of docs/zoo.md, rather than CSFCN itself.
    zoo: bool
    # Upstream state_dict signature of a zoo model: a key only this model has, and the tensor
    # whose first dimension is the class count times ``upstream_rows_per_class`` (CSFCN's own
    # checkpoints are read by their shapes: csfcn.checkpoints.infer_config).
    upstream_key: str | None = None
    upstream_classifier: str | None = None
    upstream_rows_per_class: int = 1
    # Tensors with one row per class here that the upstream builds for 19 classes whatever its
    # class count: an upstream file whose class count is not 19 is refused by name (docs/zoo.md).
    upstream_fixed_19: tuple[str, ...] = ()
    # Samples features at learned offsets (grid_sample): the ONNX graph must hold a GridSample.
    samples_at_offsets: bool = False
    # The fast path launches the Triton kernels, so the compile gate (kernels.aot) traces it.
    triton_kernels: bool = False


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            "csfcn",
            "jax_csfcn.model:CSFCN",
            "torch_deploy.model:CSFCN",
            zoo=False,
            samples_at_offsets=True,
            triton_kernels=True,
        ),
        ModelSpec(
            "csfcn_tiny",
            "jax_csfcn.model:CSFCN",
            "torch_deploy.model:CSFCN",
            zoo=False,
            samples_at_offsets=True,
            triton_kernels=True,
        ),
        ModelSpec(
            "sfanet",
            "jax_csfcn.zoo.sfanet:SFANet",
            "torch_deploy.zoo.sfanet:SFANet",
            zoo=True,
            upstream_key="sfa4.faa.offset.weight",
            upstream_classifier="conv_out.block.1.weight",
            samples_at_offsets=True,
            triton_kernels=True,  # its feature alignment runs through sfc_fuse with one group
        ),
        ModelSpec(
            "mgseg",
            "jax_csfcn.zoo.mgseg:MGSeg",
            "torch_deploy.zoo.mgseg:MGSeg",
            zoo=True,
            upstream_key="fgr.gwl.GC_conv.weight",
            # The 1/16 head (PixelShuffle(16)) is the one tensor the upstream sizes by its class count.
            upstream_classifier="conv_out16.conv_out.weight",
            upstream_rows_per_class=16 * 16,
            upstream_fixed_19=("hafa.predictor.weight",),
        ),
        ModelSpec(
            "icnet",
            "jax_csfcn.zoo.icnet:ICNet",
            "torch_deploy.zoo.icnet:ICNet",
            zoo=True,
            upstream_key="head.cff_24.conv_low_cls.weight",
            upstream_classifier="head.conv_cls.weight",
        ),
        ModelSpec(
            "bisenetv1",
            "jax_csfcn.zoo.bisenetv1:BiSeNetV1",
            "torch_deploy.zoo.bisenetv1:BiSeNetV1",
            zoo=True,
            upstream_key="cp.arm32.conv_atten.weight",
            upstream_classifier="conv_out.conv_out.weight",
        ),
        ModelSpec(
            "swiftnet",
            "jax_csfcn.zoo.swiftnet:SwiftNet",
            "torch_deploy.zoo.swiftnet:SwiftNet",
            zoo=True,
            upstream_key="backbone.spp.spp.spp_bn.conv.weight",
            upstream_classifier="logits.conv.weight",
        ),
    )
}


def names(**where) -> tuple[str, ...]:
    """The model names, in registry order, whose fields equal ``where`` (e.g. ``zoo=True``)."""
    for field in where:
        if field not in ModelSpec.__dataclass_fields__:
            raise TypeError(f"registry.names: ModelSpec has no field {field!r}")
    return tuple(n for n, s in MODELS.items() if all(getattr(s, f) == v for f, v in where.items()))


def spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {tuple(MODELS)}")
    return MODELS[name]
