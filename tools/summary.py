"""Parameters and forward FLOPs of any model (CSFCN or a zoo model) per top-level module.

    python -m tools.summary --config configs/cityscapes.py:csfcn,100
    python -m tools.summary --config configs/camvid.py:csfcn --config.data.image_size='(720, 960)'
    python -m tools.summary --config configs/cityscapes.py:icnet

Zoo models (docs/zoo.md) list each top-level module's parameters (auxiliary heads included, as
their upstream constructors count them) and the FLOPs of the inference forward as a whole: the
main output only, no auxiliary head.

FLOPs are counted exactly from the traced program (no arrays are allocated): every
convolution and matrix product is 2 x its multiply-adds.  Resampling (bilinear resize,
adaptive pooling, grid sampling), normalisation and activations are not counted, which is
the convention of docs/architecture.md, Cost (189.2 GFLOPs for CSFCN at 1024x2048).
"""

from __future__ import annotations

import argparse

from flax import nnx

from jax_csfcn.model import build_model
from jax_csfcn.step import model_config
from jax_csfcn.summary import format_table, module_table


def build_parser() -> argparse.ArgumentParser:
    from jax_csfcn.cli import config_parser  # lazy: ml_collections, which forward_flops must not need

    return config_parser(
        "python -m tools.summary", (__doc__ or "").split("\n\n")[0], config_default="configs/cityscapes.py"
    )


def main(argv=None) -> None:
    from jax_csfcn.cli import parse_config_args  # lazy: as build_parser

    parser = build_parser()
    _, config = parse_config_args(parser, argv)
    size = tuple(int(s) for s in config.data.image_size)
    if len(size) != 2 or min(size) < 32:
        parser.error(f"data.image_size={size}: give (H, W), both >= 32 (the network's 1/32 map)")
    model = nnx.eval_shape(lambda: build_model(model_config(config)))
    print(format_table(module_table(model, size), size, model.config))


if __name__ == "__main__":
    main()
