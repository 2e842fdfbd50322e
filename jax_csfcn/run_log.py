"""What a training run writes as it goes: scalars to ``metrics.jsonl`` and TensorBoard, and
``curves.png`` (loss, learning rate, val mIoU against the step)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax

from csfcn.files import write_atomic


class Logger:
    """Scalars to ``metrics.jsonl`` and TensorBoard (process 0 only)."""

    def __init__(self, workdir: Path, start_step: int):
        self.on = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        self.tb = None
        if not self.on:
            return
        if self.path.exists():  # a resumed run: drop what was logged after its checkpoint
            keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(workdir / "tb"), purge_step=start_step + 1 if start_step else None)

    def write(self, step: int, scalars: dict) -> None:
        if not self.on:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        for k, v in scalars.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curves(metrics_path: Path, out: Path) -> None:
    """training loss, learning rate and val mIoU against the step, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    series = {k: [(r["step"], r[k]) for r in rows if r.get(k) is not None] for k in ("loss", "lr", "val/miou")}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, title) in zip(
        axes, (("loss", "train loss (OHEM CE)"), ("lr", "learning rate"), ("val/miou", "val mIoU"))
    ):
        pts = series[key]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if key == "val/miou" else None, ms=4)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        write_atomic(out, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)
