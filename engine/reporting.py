"""End-of-run feedback: read the CSV scalars back, draw the learning curve, format a summary table."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "format_table",
    "learning_curve_figure",
    "plot_learning_curve",
    "read_scalar",
    "rolling_mean_std",
]


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


def rolling_mean_std(values: list[float], window: int) -> tuple[np.ndarray, np.ndarray]:
    """Trailing mean and std over the last ``window`` values (fewer at the start), each ``[N]``."""
    if window < 1:
        raise ValueError(f"rolling_mean_std: window must be >= 1, got {window}")
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return x, x
    c1 = np.concatenate([[0.0], np.cumsum(x)])
    c2 = np.concatenate([[0.0], np.cumsum(x * x)])
    hi = np.arange(1, x.size + 1)
    lo = np.maximum(hi - window, 0)
    n = hi - lo
    mean = (c1[hi] - c1[lo]) / n
    var = np.maximum((c2[hi] - c2[lo]) / n - mean * mean, 0.0)
    return mean, np.sqrt(var)


def learning_curve_figure(
    scalars_dir: str | Path,
    title: str,
    target: float | None = None,
    xlabel: str = "environment steps",
    *,
    run_name: str | None = None,
    window: int = 10,
) -> Figure:
    """The figure of :func:`plot_learning_curve` (the caller closes it): episode returns against
    the logging step.

    Training: each logged point is the mean return of the episodes that finished in one collected
    batch (faint), smoothed by a trailing mean over ``window`` logged points with a ±1 std band
    over the same window. Evaluation: mean return with a ±1 std band over the evaluation
    episodes (``eval/return_std``, when logged). ``run_name`` is shown in the title.
    """
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    train_x, train_y = read_scalar(scalars_dir, "train/episode_return")
    eval_x, eval_y = read_scalar(scalars_dir, "eval/return_mean")
    std_x, std_y = read_scalar(scalars_dir, "eval/return_std")
    if train_x:
        ax.plot(train_x, train_y, color="tab:blue", alpha=0.25, lw=0.8,
                label="training: mean return of the episodes ending in each batch")  # fmt: skip
        mean, std = rolling_mean_std(train_y, window)
        ax.plot(train_x, mean, color="tab:blue", lw=1.8,
                label=f"training: trailing mean over {window} batches (band ±1 std)")  # fmt: skip
        ax.fill_between(train_x, mean - std, mean + std, color="tab:blue", alpha=0.15, lw=0)
    if eval_x:
        ax.plot(eval_x, eval_y, "o-", color="tab:orange", ms=4,
                label="evaluation: mean return (band ±1 std over its episodes)")  # fmt: skip
        by_step = dict(zip(std_x, std_y))
        if all(x in by_step for x in eval_x):
            ey = np.asarray(eval_y)
            es = np.asarray([by_step[x] for x in eval_x])
            ax.fill_between(eval_x, ey - es, ey + es, color="tab:orange", alpha=0.2, lw=0)
    if target is not None:
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("episode return (sum of rewards)")
    ax.set_title(f"{run_name}: {title}" if run_name else title, fontsize=10)
    if train_x or eval_x:
        ax.legend(loc="best", fontsize=7.5)
    else:
        ax.text(0.5, 0.5, "no episode finished and no evaluation logged yet",
                transform=ax.transAxes, ha="center", va="center", color="0.3")  # fmt: skip
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_learning_curve(
    scalars_dir: str | Path,
    path: str | Path,
    title: str,
    target: float | None = None,
    xlabel: str = "environment steps",
    *,
    run_name: str | None = None,
    window: int = 10,
) -> Path:
    """Write :func:`learning_curve_figure` of the run's scalars to the PNG ``path``."""
    fig = learning_curve_figure(
        scalars_dir, title, target, xlabel, run_name=run_name, window=window
    )
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
