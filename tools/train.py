"""Train CSFCN in JAX: one jitted step, data parallel over every device of every host.

    python -m jax_csfcn.train --config configs/synthetic.py
    python -m jax_csfcn.train --config configs/cityscapes.py:csfcn,100 \\
        --config.data.root=/data/cityscapes --config.workdir=runs/csfcn100
    python -m jax_csfcn.train --config configs/cityscapes.py:csfcn,100 --config.workdir=runs/csfcn100 --resume

Config fields are overridden with ``--config.<key>=<value>`` (jax_csfcn/defaults.py lists them
all).  Everything of a run lives in ``config.workdir`` (jax_csfcn/training.py, the loop this
command runs).  ``--resume`` continues the run in the workdir exactly where its last complete
checkpoint left it; without ``--resume`` a run refuses a workdir that holds an earlier run's
files. A damaged checkpoint is refused on resume, naming the command that resumes from the last
intact step. A full disk at a save ends the run with one line and no partial step folder.

Several hosts (one process per host, each feeding its own shard of the data)::

    python -m jax_csfcn.train --config ... --coordinator-address=HOST0:1234 \\
        --num-processes=N --process-id=I          # on host I = 0..N-1

(or no flags where ``jax.distributed.initialize()`` detects the cluster: SLURM, Open MPI,
Kubernetes/TPU pods).  The global batch ``train.batch_size`` is split evenly over processes
and devices; BatchNorm statistics are over the global batch.
"""

from __future__ import annotations

from csfcn.extras import require

require("train", "python -m jax_csfcn.train", cli=__name__ == "__main__")  # before the imports that need the extra

import argparse
import shlex
import sys

from csfcn.interrupt import Preempted
from jax_csfcn import checkpointing as ckpt
from jax_csfcn import training
from jax_csfcn.cli import config_parser, one_line_errors, parse_config_args
from jax_csfcn.step import maybe_initialize_distributed

__all__ = ["train", "main"]


def _init_backbone(*args):
    from convert.formats import init_backbone  # lazy: reading a PyTorch file imports torch

    return init_backbone(*args)


def _init_from(*args, **kwargs):
    from convert.formats import init_from_checkpoint  # lazy: as above

    return init_from_checkpoint(*args, **kwargs)


def train(cfg, *, resume: bool = False, stop_after: int | None = None, progress: bool = True) -> dict:
    """:func:`jax_csfcn.training.train` with the converter's readers of initial weights (any
    checkpoint format the converter reads: a run directory, .safetensors, .pth, an ImageNet file)."""
    return training.train(
        cfg, resume=resume, stop_after=stop_after, progress=progress, init_backbone=_init_backbone, init_from=_init_from
    )


def build_parser() -> argparse.ArgumentParser:
    p = config_parser("python -m jax_csfcn.train", (__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--resume", action="store_true", help="continue the run in config.workdir from its last complete checkpoint"
    )
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="STEPS",
        help="stop (with a checkpoint) after this many steps of this invocation",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--coordinator-address", metavar="HOST:PORT", help="address of process 0, for several processes/hosts"
    )
    p.add_argument("--num-processes", type=int, help="number of processes (hosts)")
    p.add_argument("--process-id", type=int, help="index of this process, 0..num_processes-1")
    return p


def main(argv=None) -> None:
    args, cfg = parse_config_args(build_parser(), argv)
    maybe_initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)

    def resume_command() -> str:
        given = list(sys.argv[1:] if argv is None else argv)
        return shlex.join(["python", "-m", "jax_csfcn.train", *given, *([] if args.resume else ["--resume"])])

    def run():
        try:
            return train(cfg, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress)
        except Preempted as e:  # exits PREEMPTED (75) with the command that continues (csfcn/interrupt.py)
            e.resume = resume_command()
            raise
        except ckpt.DamagedCheckpoint as e:  # its message says how to resume from an intact earlier step
            e.command = resume_command()
            raise

    one_line_errors(
        run, debug=args.debug, disk_hint="; the last complete checkpoint is intact: --resume continues from it"
    )


if __name__ == "__main__":
    main()
