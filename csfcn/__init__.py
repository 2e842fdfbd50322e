"""The framework-free layer of csfcn: what the JAX side and the PyTorch side share.

    csfcn.model_config   the model configuration and architecture constants, ImageNet statistics
    csfcn.classes        the one registry of datasets' class names and colours
    csfcn.palette        drawing labels: colours, overlays, legends, Cityscapes label ids
    csfcn.files          atomic file writing (complete or absent, normal permissions)

Nothing here imports JAX, Flax or torch. The packages above it depend one way (see
docs/architecture.md): ``jax_csfcn`` and ``torch_deploy`` on this layer, ``convert`` on all
three, the command lines on top.
"""
