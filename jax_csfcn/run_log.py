"""What a training run writes as it goes: scalars to ``metrics.jsonl`` and TensorBoard, and
``curves.png`` (loss, learning rate, val mIoU against the step)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax

from csfcn.files import write_atomic


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl``. A process killed in the middle of a write can leave the
    last line cut off: that one line is dropped (it is past the last checkpoint anyway); a bad
    line anywhere else is an error naming the file and the line."""
    lines = path.read_text().splitlines()
    rows = []
    for i, ln in enumerate(lines):
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError("not a metrics row")
        except ValueError as e:
            if i == len(lines) - 1:
                break  # the cut-off tail of a killed run
            raise ValueError(f"{path}, line {i + 1}: not a metrics row ({e}); remove the line or the file") from None
        rows.append(row)
    return rows


class Logger:
    """Scalars to ``metrics.jsonl`` and TensorBoard (process 0 only)."""

    def __init__(self, workdir: Path, start_step: int):
        self.on = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        self.tb = None
        if not self.on:
            return
        if self.path.exists():  # a resumed run: drop what was logged after its checkpoint
            keep = [r for r in read_metrics(self.path) if r["step"] <= start_step]
            text = "".join(json.dumps(r) + "\n" for r in keep)
            write_atomic(self.path, lambda tmp: Path(tmp).write_text(text))
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

    rows = read_metrics(metrics_path)
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
