"""End-of-run feedback: read the CSV scalars back, draw the learning curve, format a summary table."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["format_table", "plot_learning_curve", "read_scalar"]


def read_scalar(scalars_dir: str | Path, name: str) -> tuple[list[float], list[float]]:
    """Read ``<scalars_dir>/<name>.csv`` (``step,value`` rows) as sorted ``(steps, values)``.

    A resumed run re-logs the steps after its last checkpoint; the last value per step wins.
    """
    path = Path(scalars_dir) / f"{name}.csv"
    if not path.is_file():
        return [], []
    by_step: dict[float, float] = {}
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            if len(row) == 2:
                try:
                    by_step[float(row[0])] = float(row[1])
                except ValueError:
                    continue
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def plot_learning_curve(
    scalars_dir: str | Path,
    path: str | Path,
    title: str,
    target: float | None = None,
    xlabel: str = "environment steps",
) -> Path:
    """Plot evaluation and training episode returns against the logging step into a PNG."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    train_x, train_y = read_scalar(scalars_dir, "train/episode_return")
    eval_x, eval_y = read_scalar(scalars_dir, "eval/return_mean")
    if train_x:
        ax.plot(train_x, train_y, color="tab:blue", alpha=0.5, label="training episodes (mean)")
    if eval_x:
        ax.plot(eval_x, eval_y, "o-", color="tab:orange", label="evaluation (mean)")
    if target is not None:
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("episode return")
    ax.set_title(title)
    if train_x or eval_x:
        ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def format_table(rows: dict[str, Any], title: str = "summary") -> str:
    """A two-column text table of ``rows``."""
    width = max([len(k) for k in rows] + [len(title)])
    values = {k: _fmt(v) for k, v in rows.items()}
    vwidth = max([len(v) for v in values.values()] + [5])
    line = f"+-{'-' * width}-+-{'-' * vwidth}-+"
    out = [line, f"| {title.ljust(width)} | {''.ljust(vwidth)} |", line]
    out += [f"| {k.ljust(width)} | {v.rjust(vwidth)} |" for k, v in values.items()]
    out.append(line)
    return "\n".join(out)
