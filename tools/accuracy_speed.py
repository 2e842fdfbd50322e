"""Accuracy against speed for every model: the same training on the synthetic scenes, then one timing run.

    python -m tools.accuracy_speed --workdir runs/accuracy_speed            # all models, 900 steps
    python -m tools.accuracy_speed --models csfcn,swiftnet --steps 300

For each model (docs/zoo.md) this trains ``configs/synthetic.py:<name>`` -- the demo's recipe, the
same steps, batch, crops and seed for all -- into ``WORKDIR/<name>``, keeps its final val mIoU and
exports it to ``WORKDIR/<name>/model.safetensors``.  Then every exported model is timed on this
machine under the benchmark protocol (tools/compare.py: interleaved rounds, medians) at
the val image size, through ``torch_deploy.optimize`` (fp32, labels).  Written:

* ``WORKDIR/accuracy_speed.json``: per model val mIoU, latency (median, spread), parameters, GFLOPs;
* ``WORKDIR/accuracy_speed.md``: the same as a table;
* ``WORKDIR/accuracy_speed.png``: val mIoU against latency, one labelled point per model.

A model whose run already finished is not trained again; an interrupted run continues from its
last checkpoint (``--fresh`` starts over).  A model whose training stops on a non-finite step
is reported as diverged (with the step) and the others go on.  ``--tiny`` checks an installation in minutes (the
demo's tiny scenes: 8 train / 2 val images of 64x128, 4 steps; folders ``runs/accuracy_speed_tiny``
and ``data/synthetic_tiny``): its numbers mean nothing.  On the synthetic scenes the numbers rank the
architectures' fit to a small, easy dataset under a short schedule, not their Cityscapes accuracy.
"""

from __future__ import annotations

from csfcn.extras import require

require("train", "python -m tools.accuracy_speed", cli=__name__ == "__main__")

import argparse
import json
import shutil
from pathlib import Path

from csfcn.files import write_atomic
from csfcn.model_config import ModelConfig
from csfcn.tables import markdown_table
from jax_csfcn.cli import load_config_file
from tools.train import train

ROOT = Path(__file__).resolve().parents[1]


def synthetic_config(name: str, tiny: bool = False):
    """``configs/synthetic.py:name``, or with ``tiny`` the demo's tiny scenes (tools/demo.py)."""
    cfg = load_config_file(str(ROOT / "configs" / "synthetic.py") + f":{name}")
    if tiny:
        cfg.data.root = "data/synthetic_tiny"
        cfg.data.synthetic.train, cfg.data.synthetic.val, cfg.data.synthetic.size = 8, 2, (64, 128)
        cfg.data.image_size = cfg.data.crop_size = (64, 128)
        cfg.data.workers = 0
        cfg.train.batch_size = 2
        cfg.train.warmup_steps = 0
        cfg.loss.min_kept = 2000
    return cfg


def train_one(name: str, workdir: Path, steps: int, fresh: bool, tiny: bool = False) -> dict:
    """Train ``configs/synthetic.py:name`` for ``steps`` into ``workdir/name``; its final val scores."""
    run = workdir / name
    done, marker = run / "eval.json", run / "accuracy_speed_run.json"
    if fresh and run.exists():
        shutil.rmtree(run)
    if done.exists() and marker.exists() and json.loads(marker.read_text()).get("steps") == steps:
        return json.loads(done.read_text())  # finished earlier with these settings
    cfg = synthetic_config(name, tiny)
    cfg.workdir = str(run)
    cfg.train.steps = steps
    cfg.checkpoint.every = max(1, min(cfg.checkpoint.every, steps))
    cfg.eval.every = 0  # one evaluation, at the end
    try:
        # this tool owns its run folders: continue from the last checkpoint, or start (also after a
        # run that stopped before its first checkpoint; train refuses another run's files without --resume)
        summary = train(cfg, resume=True)
    except FloatingPointError as e:  # the run stopped on a non-finite step: a result, not a crash
        print(f"   {name} diverged under this recipe: {e}", flush=True)
        return {"miou": None, "diverged": str(e).split(";")[0]}
    write_atomic(run / "accuracy_speed_run.json", lambda t: Path(t).write_text(json.dumps({"steps": steps})))
    return summary["val"]


def export(name: str, workdir: Path) -> Path:
    from convert.formats import read_checkpoint, write_checkpoint

    out = workdir / name / "model.safetensors"
    config, flat = read_checkpoint(workdir / name)
    write_checkpoint(out, config, flat)
    return out


def time_models(paths: dict, size, repeats: int, warmup: int) -> dict:
    """{name: timing stats} of each exported model through optimize (fp32 labels), interleaved."""
    import torch

    from tools.benchmark import Timer, run_interleaved  # lazy: the PyTorch side, after training in JAX
    from torch_deploy.checkpoint import load_model
    from torch_deploy.optimize import optimize

    fns = {}
    x = torch.randn(1, 3, *size)
    for name, path in paths.items():
        fast = optimize(load_model(path), "fp32", "labels")
        fns[name] = lambda fast=fast: fast(x)
    with torch.inference_mode():
        return run_interleaved(fns, Timer(torch.device("cpu")), warmup, repeats)


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for r in (r for r in rows if r["miou"] is not None):
        ax.errorbar(
            r["median_ms"],
            100 * r["miou"],
            xerr=[[r["median_ms"] - r["p10_ms"]], [r["p90_ms"] - r["median_ms"]]],
            fmt="o",
            color="tab:red" if r["model"].startswith("csfcn") else "tab:blue",
            capsize=3,
        )
        ax.annotate(r["model"], (r["median_ms"], 100 * r["miou"]), textcoords="offset points", xytext=(5, 4))
    ax.set_xlabel("latency, ms per image (median, p10..p90)")
    ax.set_ylabel("val mIoU, %")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomic(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def main(argv=None) -> int:
    import torch

    from tools.benchmark import device_name  # lazy: as above
    from tools.compare import gflops, parse_models  # lazy: as above
    from torch_deploy.model import build_twin

    p = argparse.ArgumentParser(
        prog="python -m tools.accuracy_speed",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", default="all", help="'all' (default) or a comma list of model names")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default 900, the demo's)")
    p.add_argument("--workdir", default=None, help="where the runs and results go (default runs/accuracy_speed)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up calls per model (default 2)")
    p.add_argument("--fresh", action="store_true", help="retrain every model from scratch")
    p.add_argument("--tiny", action="store_true", help="a quick check on 10 images of 64x128, 4 steps")
    args = p.parse_args(argv)
    args.steps = args.steps or (4 if args.tiny else 900)
    args.workdir = args.workdir or ("runs/accuracy_speed_tiny" if args.tiny else "runs/accuracy_speed")
    try:
        names = parse_models(args.models)
    except ValueError as e:
        p.error(str(e).replace("--model ", "--models "))
    if args.steps < 1:
        p.error("--steps must be >= 1")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = synthetic_config("csfcn", args.tiny)
    size = tuple(int(s) for s in cfg.data.image_size)

    scores, paths = {}, {}
    for i, name in enumerate(names, 1):
        print(f"\n== [{i}/{len(names)}] {name}: {args.steps} steps on the synthetic scenes", flush=True)
        scores[name] = train_one(name, workdir, args.steps, args.fresh, args.tiny)
        if scores[name]["miou"] is not None:
            paths[name] = export(name, workdir)
    print(f"\n== timing {len(names)} models at {size[0]}x{size[1]} ({args.repeats} interleaved rounds)", flush=True)
    timing = time_models(paths, size, args.repeats, args.warmup)
    rows = []
    for name in names:
        config = ModelConfig(name=name, num_classes=cfg.model.num_classes)
        with torch.device("meta"):  # shapes only: counting needs no weights
            n_params = sum(q.numel() for q in build_twin(config).parameters())
        row = {"model": name, "miou": scores[name]["miou"], "params": n_params, "gflops": gflops(config, size)}
        if name in timing:
            row.update(timing[name])
        else:
            row["diverged"] = scores[name]["diverged"]
        rows.append(row)
    device = device_name(torch.device("cpu"))
    result = {"steps": args.steps, "size": list(size), "device": device, "rows": rows}
    write_atomic(workdir / "accuracy_speed.json", lambda t: Path(t).write_text(json.dumps(result, indent=2)))
    table = markdown_table(
        ["model", "val mIoU", "latency ms (median)", "p10..p90 ms", "params (M)", "GFLOPs"],
        [
            [
                r["model"],
                f"{100 * r['miou']:.1f}" if r["miou"] is not None else "diverged",
                f"{r['median_ms']:.1f}" if "median_ms" in r else "-",
                f"{r['p10_ms']:.1f}..{r['p90_ms']:.1f}" if "median_ms" in r else "-",
                f"{r['params'] / 1e6:.2f}",
                f"{r['gflops']:.1f}",
            ]
            for r in rows
        ],
    )
    header = (
        f"{args.steps} steps each on the synthetic scenes (configs/synthetic.py), val mIoU on its "
        f"{cfg.data.synthetic.val} val images; "
        f"latency of torch_deploy.optimize fp32 labels at {size[0]}x{size[1]}, batch 1, on {device}.\n\n"
    )
    write_atomic(workdir / "accuracy_speed.md", lambda t: Path(t).write_text(header + table + "\n"))
    plot(rows, workdir / "accuracy_speed.png", f"synthetic scenes, {args.steps} steps; {device}")
    print("\n" + header + table)
    print(f"\nwritten: {workdir / 'accuracy_speed.md'}, .json, .png")
    return 0


if __name__ == "__main__":
    from csfcn.cli import run_main

    run_main(main)  # Ctrl-C / SIGTERM: one line, nothing partial (csfcn/cli.py)
