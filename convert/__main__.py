"""``python -m convert SRC DST``: convert a CSFCN checkpoint; the direction comes from the paths.

Examples::

    python -m convert runs/demo DST.safetensors             # a training run (best checkpoint) -> PyTorch
    python -m convert CSFCN_best_model.pth flax_params/     # upstream .pth -> Flax
    python -m convert model.safetensors upstream.pth        # ours -> upstream naming
    python -m convert resnet18.pth init.safetensors --model csfcn --num-classes 19
                                                            # ImageNet backbone -> new model
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

from convert.formats import (
    imagenet_initialised,
    read_checkpoint,
    read_torch_checkpoint,
    read_torch_file,
    write_checkpoint,
    write_torch_checkpoint,
)
from csfcn.checkpoints import ConversionError, infer_stem, is_imagenet_resnet, kind_of
from csfcn.cli import DEBUG_HELP, report_errors
from csfcn.extras import MissingExtra
from csfcn.model_config import MODEL_NAMES, STEMS, ModelConfig

TORCH_KINDS = ("pth", "safetensors")
USER_ERRORS = (ConversionError, FileNotFoundError, FileExistsError, KeyError, ValueError)
STAT_LEAVES = {"running_mean": "mean", "running_var": "var", "num_batches_tracked": "num_batches_tracked"}
KIND_NAMES = {
    "orbax": "Flax params (Orbax directory)",
    "safetensors": "PyTorch (.safetensors, config in metadata)",
    "pth": "PyTorch state_dict (.pth, upstream naming)",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m convert",
        description=__doc__.split("\n\n")[0],
        epilog="Formats: *.safetensors (ours), *.pth/*.pt (upstream state_dict), a directory (Flax, Orbax).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="checkpoint to read")
    p.add_argument("dst", help="checkpoint to write (its suffix picks the format)")
    p.add_argument("--no-strict", dest="strict", action="store_false", help="load what matches instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists (otherwise an error)")
    g = p.add_argument_group("only when SRC is an ImageNet ResNet-18 (torchvision/timm/the upstream's)")
    g.add_argument("--model", "--variant", dest="model", choices=MODEL_NAMES, default="csfcn", help="model.name")
    g.add_argument("--num-classes", type=int, default=19)
    g.add_argument(
        "--stem", choices=STEMS, default=None, help="backbone stem (default: the file's, told by its conv shapes)"
    )
    g.add_argument("--seed", type=int, default=0, help="init seed of the non-backbone layers")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return p


def _imagenet_tensors(path: str) -> dict | None:
    """The tensors of an ImageNet ResNet-18 file; None for any other checkpoint."""
    if kind_of(path) == "orbax":
        return None
    tensors = read_torch_file(path)[0]
    return tensors if is_imagenet_resnet(tensors) else None


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if os.path.isfile(args.dst) and not args.overwrite:
        print(f"error: {args.dst} exists; pass --overwrite to replace it, or choose another DST", file=sys.stderr)
        return 1
    try:
        return report_errors(lambda: _convert(args), USER_ERRORS, debug=args.debug, code=1)  # csfcn/cli.py
    except MissingExtra as e:  # e.g. the Flax formats on a deploy-only install: exit 2, as for any missing extra
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def _convert(args) -> None:
    src_kind, dst_kind = kind_of(args.src), kind_of(args.dst)
    flat, note = None, None  # Flax params, unless PyTorch goes straight to PyTorch
    imagenet = _imagenet_tensors(args.src)
    if imagenet is not None:
        stem = args.stem or infer_stem(imagenet) or "torchvision"  # an unknown stem: the strict check names it
        config = ModelConfig(name=args.model, num_classes=args.num_classes, stem=stem)
        flat, n = imagenet_initialised(config, args.src, seed=args.seed, strict=args.strict)
        note = f"ImageNet backbone: {n} tensors into resnet.*, other layers initialised (seed {args.seed})"
    elif src_kind in TORCH_KINDS and dst_kind in TORCH_KINDS:
        # PyTorch to PyTorch needs no Flax: checked against the twin, then written (deploy install)
        config, sd = read_torch_checkpoint(args.src, strict=args.strict)
        write_torch_checkpoint(args.dst, config, sd)
        leaves = [(k.split(".")[0], STAT_LEAVES.get(k.rsplit(".", 1)[-1], "param"), a.size) for k, a in sd.items()]
    else:
        config, flat = read_checkpoint(args.src, strict=args.strict)
    if flat is not None:
        write_checkpoint(args.dst, config, flat)
        leaves = [(str(p[0]), str(p[-1]), a.size) for p, a in flat.items()]
    stats = {"mean", "var", "num_batches_tracked"}
    tensors, params, buffers = collections.Counter(), collections.Counter(), collections.Counter()
    for module, leaf, size in leaves:
        tensors[module] += 1
        (buffers if leaf in stats else params)[module] += size
    print(f"{args.src}  [{KIND_NAMES[src_kind]}]")
    print(f"  -> {args.dst}  [{KIND_NAMES[dst_kind]}]")
    print(f"config: {config.to_json()}")
    if note:
        print(note)
    if config.classes and dst_kind == "pth":
        print(
            f"note: {args.dst} (an upstream-style .pth) has no place for the model's own class table "
            f"({', '.join(config.class_names)}); predict will name and colour its classes by count. "
            "Keep a .safetensors or Orbax copy to carry them",
            file=sys.stderr,
        )
    print(f"  {'module':<12} {'tensors':>7} {'parameters':>12} {'BN stats':>9}")
    for mod in sorted(tensors):
        print(f"  {mod:<12} {tensors[mod]:>7} {params[mod]:>12,} {buffers[mod]:>9,}")
    total = (sum(tensors.values()), sum(params.values()), sum(buffers.values()))
    print(f"  {'total':<12} {total[0]:>7} {total[1]:>12,} {total[2]:>9,}")


if __name__ == "__main__":
    sys.exit(main())
