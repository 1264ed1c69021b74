"""``zarrl experiment gmm-posterior``: fine-tune the 25-mode diffusion prior toward the 9-mode
posterior with every method and seed, then write the results table, the sample panels and the
learning curves.

From Python::

    from zarrl.engine.experiments.gmm_posterior.experiment import run_experiment
    run_experiment(methods=["rtb", "trust-pcl-equivalent"], seeds=[0], updates=500, device="cpu")

The experiment folder (default ``runs/gmm-posterior``)::

    configs/<method>.yaml          resolved config of each method
    <method>/seed<k>/              one RunLayout per method and seed (see zarrl.engine.experiments.gmm_posterior.runner)
    results.md, results.csv        the results table (mean ± std over seeds)
    samples.png                    one panel of samples per method beside the prior and the target
    learning_curves.png            loss, log Z, TV, wrong-mode mass, ELBO, W₂ against updates

Running the same command again resumes unfinished method/seed runs from their checkpoints and
skips finished ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from zarrl.engine.config import ConfigError
from zarrl.engine.experiments.gmm_posterior.config import (
    METHODS,
    GMMConfig,
    canonical_method,
    load_gmm_config,
    method_config_path,
)
from zarrl.engine.experiments.gmm_posterior.methods import GMMLearner
from zarrl.engine.experiments.gmm_posterior.reporting import (
    aggregate_summaries,
    plot_learning_curves,
    plot_sample_panels,
    read_curve,
    write_results,
)
from zarrl.engine.experiments.gmm_posterior.runner import (
    evaluate_learner,
    resolve_device,
    run_method,
)
from zarrl.envs.gmm_posterior import DiffusionActor, load_prior, sample_target

__all__ = [
    "collect_summaries",
    "method_configs",
    "run_experiment",
    "write_report",
]

DEFAULT_SEEDS = (0, 1, 2)


def method_configs(
    methods: Sequence[str],
    overrides: Sequence[str] = (),
    *,
    run_dir: str | Path | None = None,
    updates: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    progress: bool | None = None,
) -> dict[str, GMMConfig]:
    """Each method's config from ``configs/gmm/`` with the dotted ``overrides`` and the explicit
    arguments applied (the arguments win)."""
    extra = list(overrides)
    if run_dir is not None:
        run_dir = Path(run_dir)
        extra += [f"run.dir={run_dir.parent}", f"run.name={run_dir.name}"]
    if updates is not None:
        extra.append(f"train.updates={updates}")
    if batch_size is not None:
        extra.append(f"train.batch_size={batch_size}")
    if device is not None:
        extra.append(f"run.device={device}")
    if progress is not None:
        extra.append(f"progress={'true' if progress else 'false'}")
    names = [canonical_method(m) for m in methods]
    return {m: load_gmm_config(method_config_path(m), extra) for m in names}


def _folder(root: Path, method: str, seed: int) -> Path:
    return root / method / f"seed{seed}"


def run_experiment(
    methods: Sequence[str] = METHODS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    overrides: Sequence[str] = (),
    *,
    run_dir: str | Path | None = None,
    updates: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    progress: bool | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run every method with every seed (resuming unfinished runs), then write the report.

    Returns ``{"root", "summaries": {method: [summary per seed]}, "rows", "paths"}``.
    """
    methods = list(methods)
    if not methods:
        raise ConfigError("--methods: got an empty list, expected method names")
    if not seeds:
        raise ConfigError("--seeds: got an empty list, expected integers")
    configs = method_configs(
        methods,
        overrides,
        run_dir=run_dir,
        updates=updates,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    first = next(iter(configs.values()))
    root = Path(first.run.dir) / first.run.name
    (root / "configs").mkdir(parents=True, exist_ok=True)
    dev = resolve_device(first.run.device)
    prior_net = load_prior(first.prior, device=dev)
    summaries: dict[str, list[dict]] = {}
    for method, config in configs.items():
        config.save(root / "configs" / f"{method}.yaml")
        for seed in seeds:
            config.run.seed = int(seed)
            summary = run_method(config, _folder(root, method, seed), prior_net=prior_net)
            summaries.setdefault(method, []).append(summary)
    result: dict[str, Any] = {"root": root, "summaries": summaries}
    if report:
        result.update(write_report(root, first, prior_net))
    return result


def collect_summaries(root: str | Path) -> dict[str, list[dict]]:
    """``{method: [summary per seed]}`` of every run under ``root``, in report order.

    A finished run contributes its ``summary.json``; an unfinished one (still running, or
    interrupted) its latest ``curve.csv`` row, with ``updates`` = the updates it reached and
    ``partial`` = True."""
    root = Path(root)
    found: dict[str, list[dict]] = {}
    for method in METHODS:
        for folder in sorted((root / method).glob("seed*"), key=lambda p: int(p.name[4:] or 0)):
            if (folder / "summary.json").is_file():
                found.setdefault(method, []).append(
                    json.loads((folder / "summary.json").read_text())
                )
                continue
            curve = read_curve(folder / "curve.csv")
            if not curve.get("update"):
                continue
            last = {k: v[-1] for k, v in curve.items()}
            update, train_s = int(last["update"]), last["train_s"]
            summary = {
                **last,
                "method": method,
                "seed": int(folder.name[4:]),
                "updates": update,
                "updates_per_s": update / train_s if train_s > 0 else float("nan"),
                "partial": True,
            }
            found.setdefault(method, []).append(summary)
    return found


def write_report(root: str | Path, config: GMMConfig, prior_net) -> dict[str, Any]:
    """Results table, sample panels and learning curves of every run found in ``root``
    (finished or not, see :func:`collect_summaries`)."""
    root = Path(root)
    summaries = collect_summaries(root)
    rows = aggregate_summaries(summaries)
    md, csv_path = write_results(rows, root)
    num = config.eval.num_samples
    prior_learner = GMMLearner("prior", DiffusionActor(prior_net))
    prior_metrics, prior_x = evaluate_learner(prior_learner, num, 1, w2=config.eval.w2)
    (root / "prior_metrics.json").write_text(json.dumps(prior_metrics, indent=2))
    panels: dict[str, torch.Tensor] = {
        "prior (25 modes)": prior_x,
        "target g₉": sample_target(num, generator=torch.Generator().manual_seed(2)),
    }
    curves: dict[str, list[dict]] = {}
    for method, runs in summaries.items():
        seed = runs[0]["seed"]
        folder = _folder(root, method, seed)
        if (folder / "samples.pt").is_file():
            panels[f"{method} (seed {seed})"] = torch.load(folder / "samples.pt", weights_only=True)
        curves[method] = [read_curve(_folder(root, method, r["seed"]) / "curve.csv") for r in runs]
    figure = plot_sample_panels(panels, root / "samples.png")
    curve_plot = plot_learning_curves(
        {m: c for m, c in curves.items() if m != "guidance"}, root / "learning_curves.png"
    )
    return {
        "rows": rows,
        "prior_metrics": prior_metrics,
        "paths": {"md": md, "csv": csv_path, "samples": figure, "curves": curve_plot},
    }
