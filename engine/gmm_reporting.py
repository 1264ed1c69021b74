"""Results of the GMM posterior experiment: the table (markdown + CSV, mean ± std over seeds), the
sample-panel figure and the learning-curve plots."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from zarrl.envs import GRID_MEANS, TARGET_MEANS  # noqa: E402

__all__ = [
    "TABLE_COLUMNS",
    "aggregate_summaries",
    "format_results_markdown",
    "plot_learning_curves",
    "plot_sample_panels",
    "read_curve",
    "write_results",
]

#: (summary key, column title) of the results table, in order.
TABLE_COLUMNS = (
    ("modes_hit", "target modes hit"),
    ("wrong_mode_mass", "wrong-mode mass"),
    ("tv", "TV of mode weights"),
    ("elbo", "ELBO"),
    ("is_log_z", "IS log Ẑ"),
    ("w2", "W₂"),
    ("log_z", "learned log Z"),
    ("train_s", "wall time (s)"),
    ("updates_per_s", "updates/s"),
)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def aggregate_summaries(summaries: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict]:
    """Per method (``{method: [summary per seed]}``) -> rows ``{"method", "seeds", "updates",
    <key>_mean, <key>_std for every table column}``."""
    rows = []
    for method, runs in summaries.items():
        if not runs:
            continue
        row: dict[str, Any] = {
            "method": method,
            "seeds": len(runs),
            "updates": min(int(r.get("updates", 0)) for r in runs),
            "partial": any(r.get("partial", False) for r in runs),
        }
        for key, _ in TABLE_COLUMNS:
            mean, std = _mean_std([float(r.get(key, math.nan)) for r in runs])
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
        rows.append(row)
    return rows


def _cell(mean: float, std: float, seeds: int, key: str) -> str:
    if not math.isfinite(mean):
        return "–"
    digits = {"wrong_mode_mass": 4, "tv": 3, "modes_hit": 1, "train_s": 0, "updates_per_s": 2}
    d = digits.get(key, 2)
    text = f"{mean:.{d}f}"
    return f"{text} ± {std:.{d}f}" if seeds > 1 else text


def format_results_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results table as GitHub markdown (mean ± std over seeds when several)."""
    head = ["method", "seeds", "updates", *[title for _, title in TABLE_COLUMNS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        updates = f"{row['updates']} (running)" if row.get("partial") else str(row["updates"])
        cells = [str(row["method"]), str(row["seeds"]), updates]
        cells += [
            _cell(row[f"{k}_mean"], row[f"{k}_std"], row["seeds"], k) for k, _ in TABLE_COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(rows: Sequence[Mapping[str, Any]], folder: str | Path) -> tuple[Path, Path]:
    """Write ``results.md`` and ``results.csv`` into ``folder``; returns both paths."""
    folder = Path(folder)
    md, csv_path = folder / "results.md", folder / "results.csv"
    md.write_text(format_results_markdown(rows))
    fields = ["method", "seeds", "updates", "partial"]
    fields += [f"{k}_{s}" for k, _ in TABLE_COLUMNS for s in ("mean", "std")]
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return md, csv_path


def read_curve(path: str | Path) -> dict[str, list[float]]:
    """``curve.csv`` -> ``{column: values}`` (floats; empty when the file is missing)."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    return {k: [float(r[k]) if r[k] not in ("", None) else math.nan for r in rows] for k in rows[0]}


def plot_sample_panels(
    samples: Mapping[str, torch.Tensor], path: str | Path, *, limit: float = 14.0
) -> Path:
    """One scatter panel per entry of ``samples`` (``{title: x [N, 2]}``, e.g. prior, target and
    each method), grid means as crosses, target means as circles."""
    n = len(samples)
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.7 * rows), dpi=110, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (title, x) in zip(axes.flat, samples.items()):
        x = x.detach().cpu()
        ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.35, color="tab:blue", rasterized=True)
        ax.scatter(GRID_MEANS[:, 0], GRID_MEANS[:, 1], marker="x", s=10, color="gray", lw=0.6)
        ax.scatter(
            TARGET_MEANS[:, 0], TARGET_MEANS[:, 1], marker="o", s=40, facecolors="none",
            edgecolors="tab:red", lw=0.8,
        )  # fmt: skip
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.set_xticks([-10, 0, 10])
        ax.set_yticks([-10, 0, 10])
        ax.tick_params(labelsize=6)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


_CURVE_PANELS = (
    ("loss", "training loss", True),
    ("log_z", "learned log Z", False),
    ("tv", "TV of mode weights", False),
    ("wrong_mode_mass", "wrong-mode mass", False),
    ("elbo", "ELBO", False),
    ("w2", "W₂ to g₉", False),
)


def plot_learning_curves(
    curves: Mapping[str, Sequence[Mapping[str, Sequence[float]]]], path: str | Path
) -> Path:
    """Learning curves ``{method: [curve per seed]}`` (columns of ``curve.csv``) against updates:
    loss, log Z, TV, wrong-mode mass, ELBO, W₂; one colour per method, one line per seed."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title, log_scale) in zip(axes.flat, _CURVE_PANELS):
        for i, (method, runs) in enumerate(curves.items()):
            for j, curve in enumerate(runs):
                if key not in curve or "update" not in curve:
                    continue
                pairs = [(u, v) for u, v in zip(curve["update"], curve[key]) if math.isfinite(v)]
                if not pairs:
                    continue
                if log_scale:
                    pairs = [(u, abs(v)) for u, v in pairs if v != 0]
                u, v = zip(*pairs) if pairs else ((), ())
                label = method if j == 0 else None
                ax.plot(u, v, color=colours[i % len(colours)], lw=1, alpha=0.8, label=label)
        if log_scale:
            ax.set_yscale("log")
        if key == "elbo":
            ax.set_ylim(bottom=-10)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("updates", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if not handles:
        for ax in axes.flat:
            handles, labels = ax.get_legend_handles_labels()
            if handles:
                break
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
