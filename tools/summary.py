"""Parameters and forward GFLOPs of a model per top-level module.

    python -m tools.summary --config configs/cityscapes.py:csfcn,100
    python -m tools.summary --config configs/camvid.py:csfcn --config.data.image_size='(720, 960)'
    python -m tools.summary --config configs/cityscapes.py:icnet

How it works: :mod:`jax_csfcn.summary` (jax_csfcn/summary.py).
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
