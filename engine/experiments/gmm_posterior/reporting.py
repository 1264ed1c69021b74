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
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from zarrl.engine.reporting import read_scalar
from zarrl.envs.gmm_posterior import GRID_MEANS, TARGET_MEANS

__all__ = [
    "METHOD_STYLES",
    "TABLE_COLUMNS",
    "aggregate_summaries",
    "format_results_markdown",
    "learning_curves_figure",
    "plot_learning_curves",
    "plot_sample_panels",
    "read_curve",
    "scalars_folder",
    "sample_panels_figure",
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


def scalars_folder(run: str | Path) -> Path | None:
    """The Trainer's scalar CSV folder of the run folder ``run`` (``logs/<run.name>/scalars``),
    or ``None`` when it has logged nothing yet."""
    found = sorted(Path(run).glob("logs/*/scalars"))
    return found[0] if found else None


def read_curve(run: str | Path) -> dict[str, list[float]]:
    """The learning curve of the run folder ``run`` from the Trainer's scalar CSVs:
    ``{"update": steps of the evaluations, <metric>: the task metrics logged there (eval/*),
    "loss": the mean training loss of the interval ending there (NaN where none)}``; empty when
    nothing was evaluated yet."""
    folder = scalars_folder(run)
    if folder is None:
        return {}
    updates, _ = read_scalar(folder, "eval/tv")
    if not updates:
        return {}
    curve: dict[str, list[float]] = {"update": updates}
    names = sorted(f"eval/{p.stem}" for p in (folder / "eval").glob("*.csv")) + ["train/loss"]
    for name in names:
        by_step = dict(zip(*read_scalar(folder, name), strict=True))
        curve[name.split("/", 1)[1]] = [by_step.get(u, math.nan) for u in updates]
    return curve


#: Colour, line style and drawing order of each method in every figure. RTB is a wide translucent
#: band-coloured line under the dashed, marked line of its equivalent Trust-PCL, so both stay visible
#: where they coincide. Methods not listed take the colours of ``_SPARE_COLOURS`` in turn.
METHOD_STYLES: dict[str, dict[str, Any]] = {
    "rtb": {"color": "tab:blue", "ls": "-", "lw": 3.2, "alpha": 0.7, "zorder": 4},
    "trust-pcl-equivalent": {
        "color": "tab:orange", "ls": (0, (4, 2.5)), "lw": 1.5, "marker": "o", "ms": 3.2,
        "mfc": "white", "mew": 1.0, "zorder": 6,
    },
    "trust-pcl": {"color": "tab:green", "ls": "-", "lw": 1.4, "zorder": 3},
    "kl-reinforce-off-policy": {"color": "tab:red", "ls": "-", "lw": 1.4, "zorder": 3},
    "kl-reinforce-on-policy": {"color": "tab:purple", "ls": "-", "lw": 1.4, "zorder": 3},
    "original-baseline": {"color": "tab:brown", "ls": "-", "lw": 1.4, "zorder": 3},
    "guidance": {"color": "tab:pink", "ls": "-", "lw": 1.4, "zorder": 3},
}  # fmt: skip
_SPARE_COLOURS = ("tab:gray", "tab:olive", "tab:cyan", "black", "gold", "navy")

#: (curve column, panel title, y label, y scale, cut a far first evaluation out of the y range).
_CURVE_PANELS = (
    ("loss", "training loss (mean over each evaluation interval)", "loss", "symlog", False),
    ("log_z", "learned log Z (true value 0)", "log Z (nats)", "linear", False),
    ("tv", "TV of mode weights (0 = exact)", "total variation", "linear", False),
    ("wrong_mode_mass", "wrong-mode mass (0 = exact)", "fraction of samples", "linear", False),
    ("elbo", "ELBO (≤ log Z = 0)", "ELBO (nats)", "linear", True),
    ("w2", "W₂ to samples of g₉", "W₂ (units of x)", "linear", False),
)

_EMPTY_PANEL = {
    "loss": "no training loss logged:\nthe curves hold only the evaluation before the first update\n"
    "(the run stopped before the end of its first evaluation interval)",
    "log_z": "no learned log Z:\nnone of these methods learns one",
}

_BANDS = {"minmax": "min–max over seeds", "std": "mean ± 1 std over seeds"}


def _method_style(method: str, index: int) -> dict[str, Any]:
    style = METHOD_STYLES.get(method)
    if style is not None:
        return dict(style)
    colour = _SPARE_COLOURS[index % len(_SPARE_COLOURS)]
    return {"color": colour, "ls": "-", "lw": 1.4, "zorder": 3}


def _stack(
    runs: Sequence[Mapping[str, Sequence[float]]], key: str
) -> tuple[np.ndarray, np.ndarray]:
    """``key`` of every run on the union of their update grids: ``(updates [U], values [S, U])``,
    NaN where a run has no finite value; updates where no run has one are dropped."""
    present = [c for c in runs if key in c and "update" in c and len(c["update"])]
    if not present:
        return np.empty(0), np.empty((0, 0))
    grid = np.unique(np.concatenate([np.asarray(c["update"], dtype=float) for c in present]))
    values = np.full((len(present), grid.size), np.nan)
    for row, curve in zip(values, present):
        row[np.searchsorted(grid, np.asarray(curve["update"], dtype=float))] = curve[key]
    keep = np.isfinite(values).any(axis=0)
    return grid[keep], values[:, keep]


def _seed_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``values [S, U]`` (NaN = missing) -> mean, sample std (0 for one seed), min, max, each [U]."""
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    mean = np.where(finite, values, 0.0).sum(axis=0) / count
    sq = np.where(finite, values - mean, 0.0) ** 2
    std = np.sqrt(sq.sum(axis=0) / np.maximum(count - 1, 1))
    low = np.where(finite, values, np.inf).min(axis=0)
    high = np.where(finite, values, -np.inf).max(axis=0)
    return mean, std, low, high


def _note(ax: plt.Axes, text: str, *, x: float = 0.98, y: float = 0.03, ha: str = "right") -> None:
    ax.text(
        x, y, text, transform=ax.transAxes, ha=ha, va="bottom", fontsize=6.5, color="0.25",
        bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "0.8", "alpha": 0.85}, zorder=10,
    )  # fmt: skip


def _empty(ax: plt.Axes, text: str) -> None:
    ax.text(
        0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=7.5,
        color="0.3", wrap=True,
    )  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])


def _cut_far_first_points(
    ax: plt.Axes, drawn: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]]
) -> None:
    """Cut the y range below a first evaluation that lies far under the rest (the prior's ELBO
    before the first update flattens every later curve), mark the points below with ▼ and say so
    in the panel. ``drawn`` holds ``(colour, updates [U], lowest [U], highest [U])`` per method:
    the extent of what was plotted."""
    later_low = [low[1:] for _, _, low, _ in drawn if low.size > 1]
    if not later_low:
        return
    rest_low = float(np.min(np.concatenate(later_low)))
    rest_high = float(np.max(np.concatenate([high[1:] for _, _, _, high in drawn])))
    lowest = min(float(np.min(low)) for _, _, low, _ in drawn)
    span = max(rest_high - rest_low, 1e-12)
    if lowest >= rest_low - 2.0 * span:
        return
    bottom = rest_low - 0.3 * span
    ax.set_ylim(bottom=bottom)
    below = [(u[low < bottom], colour) for colour, u, low, _ in drawn]
    at = sorted({float(x) for u, _ in below for x in u})
    where = f"update {at[0]:g}" if len(at) == 1 else f"updates {at[0]:g}–{at[-1]:g}"
    for u, colour in below:
        ax.plot(u, np.full(u.shape, bottom), "v", color=colour, ms=5, clip_on=False, zorder=7)
    _note(ax, f"y axis cut at {bottom:.3g} (▼ = below it):\nlowest value {lowest:.3g} at {where}")


def _curve_panel(
    ax: plt.Axes,
    curves: Mapping[str, Sequence[Mapping[str, Sequence[float]]]],
    key: str,
    title: str,
    ylabel: str,
    scale: str,
    cut_first: bool,
    band: str,
) -> None:
    drawn: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    missing = []
    for index, (method, runs) in enumerate(curves.items()):
        updates, values = _stack(runs, key)
        if updates.size == 0:
            missing.append(method)
            continue
        style = _method_style(method, index)
        mean, std, low, high = _seed_stats(values)
        if band == "std":
            low, high = mean - std, mean + std
        if values.shape[0] > 1:
            ax.fill_between(
                updates, low, high, color=style["color"], alpha=0.15, lw=0,
                zorder=style["zorder"] - 2,
            )  # fmt: skip
        if updates.size == 1:
            style.setdefault("marker", "o")
        ax.plot(updates, mean, label=method, **style)
        drawn.append((style["color"], updates, np.minimum(low, mean), np.maximum(high, mean)))
    ax.set_title(title, fontsize=8.5)
    if not drawn:
        _empty(ax, _EMPTY_PANEL.get(key, f"no {title.split(' (')[0]} logged in these curves"))
        return
    if scale == "symlog":
        ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_ylabel(ylabel, fontsize=7.5)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
    if cut_first:
        _cut_far_first_points(ax, drawn)
    if missing:
        _note(ax, "not logged by: " + ", ".join(missing))


def _difference_panel(
    ax: plt.Axes,
    runs_a: Sequence[Mapping[str, Sequence[float]]],
    runs_b: Sequence[Mapping[str, Sequence[float]]],
    key: str,
    pair: tuple[str, str],
) -> None:
    """``pair[0] − pair[1]`` of the seed means of ``key`` at their common evaluations, with the
    pooled seed std of the two methods as a grey band around 0 (the size of seed noise)."""
    ua, va = _stack(runs_a, key)
    ub, vb = _stack(runs_b, key)
    common, ia, ib = np.intersect1d(ua, ub, return_indices=True)
    ax.axhline(0.0, color="0.5", lw=0.8, zorder=1)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
    ax.set_ylabel("Δ", fontsize=8)
    if common.size == 0:
        _empty(ax, f"no evaluation where both\n{pair[0]} and {pair[1]} logged {key}")
        return
    mean_a, std_a, _, _ = _seed_stats(va[:, ia])
    mean_b, std_b, _, _ = _seed_stats(vb[:, ib])
    diff = mean_a - mean_b
    text = f"Δ = {pair[0]} − {pair[1]}: max |Δ| {np.max(np.abs(diff)):.2g}"
    if va.shape[0] > 1 and vb.shape[0] > 1:
        pooled = np.sqrt((std_a**2 + std_b**2) / 2.0)
        ax.fill_between(common, -pooled, pooled, color="0.6", alpha=0.35, lw=0, zorder=2)
        text += f", seed std (median) {np.median(pooled):.2g}"
    ax.plot(common, diff, color="black", lw=1.2, marker=".", ms=3, zorder=4)
    ax.set_title(text, fontsize=7, loc="left", color="0.2")


def learning_curves_figure(
    curves: Mapping[str, Sequence[Mapping[str, Sequence[float]]]],
    *,
    band: str = "minmax",
    pair: tuple[str, str] = ("rtb", "trust-pcl-equivalent"),
) -> Figure:
    """The figure of :func:`plot_learning_curves` (the caller closes it).

    Six metric panels against updates (line: mean over seeds; band: ``band`` over seeds, drawn for
    methods with two seeds or more); when both methods of ``pair`` have curves, a Δ panel under
    each metric shows ``pair[0] − pair[1]`` of the seed means with the pooled seed std as a grey
    band. A metric nobody logged gets a sentence instead of an empty axis; a y range cut to keep a
    far first evaluation from flattening the rest is marked and labelled in its panel.
    """
    if band not in _BANDS:
        raise ValueError(
            f"plot_learning_curves: band must be one of {sorted(_BANDS)}, got {band!r}"
        )
    with_pair = all(curves.get(m) for m in pair)
    # a spacer row between the two rows of metrics keeps each title clear of the ticks above it
    heights = [3.0, 1.25, 0.55, 3.0, 1.25] if with_pair else [3.0, 0.35, 3.0]
    fig = plt.figure(figsize=(14, 11.0 if with_pair else 7.5), dpi=100)
    grid = fig.add_gridspec(len(heights), 3, height_ratios=heights, hspace=0.12)
    step = 3 if with_pair else 2
    for i, (key, title, ylabel, scale, cut_first) in enumerate(_CURVE_PANELS):
        row, col = divmod(i, 3)
        ax = fig.add_subplot(grid[row * step, col])
        ax.set_gid(f"curve:{key}")
        _curve_panel(ax, curves, key, title, ylabel, scale, cut_first, band)
        bottom = ax
        if with_pair:
            bottom = fig.add_subplot(grid[row * step + 1, col], sharex=ax)
            bottom.set_gid(f"difference:{key}")
            _difference_panel(bottom, curves[pair[0]], curves[pair[1]], key, pair)
            ax.tick_params(labelbottom=False)
        bottom.set_xlabel("updates", fontsize=7.5)
    handles: list[Any] = []
    labels = []
    for index, (method, runs) in enumerate(curves.items()):
        style = _method_style(method, index)
        line = Line2D([], [], **{k: v for k, v in style.items() if k != "zorder"})
        seeds = len(runs)
        if seeds > 1:
            handles.append((Patch(color=style["color"], alpha=0.15, lw=0), line))
        else:
            handles.append(line)
        labels.append(f"{method} ({seeds} seed{'s' if seeds != 1 else ''})")
    if with_pair:
        handles.append(Line2D([], [], color="black", lw=1.2, marker=".", ms=3))
        labels.append(f"Δ: {pair[0]} − {pair[1]} (seed means)")
        handles.append(Patch(color="0.6", alpha=0.35, lw=0))
        labels.append("Δ panels: ± seed std, pooled over both")
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    subtitle = f"line: mean over seeds; band: {_BANDS[band]}"
    if with_pair:
        subtitle += f"; Δ rows: {pair[0]} − {pair[1]}, the equivalence made visible"
    fig.suptitle(f"GMM posterior, learning curves against updates\n{subtitle}", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.92, bottom=0.12 if with_pair else 0.15)
    return fig


def plot_learning_curves(
    curves: Mapping[str, Sequence[Mapping[str, Sequence[float]]]],
    path: str | Path,
    *,
    band: str = "minmax",
    pair: tuple[str, str] = ("rtb", "trust-pcl-equivalent"),
) -> Path:
    """Learning curves ``{method: [curve per seed]}`` (:func:`read_curve`) against updates
    into the PNG ``path``: loss, learned log Z, TV, wrong-mode mass, ELBO, W₂, one colour per
    method, mean over seeds with a ``band`` (``"minmax"`` or ``"std"``) over seeds, and the
    ``pair[0] − pair[1]`` difference under each metric (see :func:`learning_curves_figure`)."""
    fig = learning_curves_figure(curves, band=band, pair=pair)
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def sample_panels_figure(samples: Mapping[str, torch.Tensor], *, limit: float = 14.0) -> Figure:
    """The figure of :func:`plot_sample_panels` (the caller closes it): one scatter panel per
    entry of ``samples`` (``{title: x [N, 2]}``), the prior's 25 modes as grey crosses, the
    target's 9 as red circles, a legend for every marker and the samples outside the view
    counted in the panel's title."""
    if not samples:
        raise ValueError("plot_sample_panels: samples is empty, nothing to draw")
    for title, x in samples.items():
        if x.dim() != 2 or x.shape[-1] != 2:
            raise ValueError(
                f"plot_sample_panels: {title!r} has shape {tuple(x.shape)}, not [N, 2]"
            )
    n = len(samples)
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.8 * cols, 3.0 * rows + 0.9), dpi=110, squeeze=False
    )
    for ax in axes.flat[n:]:
        ax.axis("off")
    grid, target = GRID_MEANS.numpy(), TARGET_MEANS.numpy()
    for ax, (title, x) in zip(axes.flat, samples.items()):
        x = x.detach().float().cpu().numpy()
        outside = int((np.abs(x) > limit).any(axis=1).sum())
        ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.35, color="tab:blue", rasterized=True)
        ax.scatter(grid[:, 0], grid[:, 1], marker="x", s=12, color="0.35", lw=0.7)
        ax.scatter(
            target[:, 0], target[:, 1], marker="o", s=45, facecolors="none",
            edgecolors="tab:red", lw=0.9,
        )  # fmt: skip
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.set_xticks([-10, -5, 0, 5, 10])
        ax.set_yticks([-10, -5, 0, 5, 10])
        ax.tick_params(labelsize=6)
        ax.set_xlabel("x₁", fontsize=7, labelpad=1)
        ax.set_ylabel("x₂", fontsize=7, labelpad=1)
        count = f"{x.shape[0]:,} samples" + (f", {outside:,} outside the view" if outside else "")
        ax.set_title(f"{title}\n{count}", fontsize=8)
    handles = [
        Line2D([], [], ls="", marker="o", ms=3, color="tab:blue", alpha=0.6),
        Line2D([], [], ls="", marker="x", ms=5, color="0.35", mew=0.9),
        Line2D([], [], ls="", marker="o", ms=7, mfc="none", mec="tab:red", mew=1.0),
    ]
    labels = [
        "a sample (one dot each)",
        "a mode of the prior p₂₅ (25, grid spacing 5)",
        "a mode of the target g₉ (9)",
    ]
    fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 1.0 - 0.55 / fig.get_figheight()),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        "GMM posterior: samples of the prior, the target and each method "
        "(x = (x₁, x₂), dimensionless state coordinates)",
        fontsize=9.5,
    )
    fig.tight_layout(rect=(0, 0, 1, 1.0 - 0.8 / fig.get_figheight()))
    return fig


def plot_sample_panels(
    samples: Mapping[str, torch.Tensor], path: str | Path, *, limit: float = 14.0
) -> Path:
    """Write :func:`sample_panels_figure` of ``samples`` (``{title: x [N, 2]}``, e.g. the prior,
    the target and each method; view ``[-limit, limit]²``) to the PNG ``path``."""
    fig = sample_panels_figure(samples, limit=limit)
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
