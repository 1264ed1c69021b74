"""``zarrl experiment gmm-posterior``: fine-tune the 25-mode diffusion prior toward the 9-mode
posterior with every method and seed, then write the results table, the sample panels and the
learning curves.

Every trained method is an ordinary learner config run by the one :class:`~zarrl.engine.trainer.
Trainer` (``train.mode: sampler``: each update the task's fast sampler draws whole trajectories
into the run's Zarr buffer). From Python::

    from zarrl.engine.experiments.gmm_posterior.experiment import run_experiment
    run_experiment(methods=["rtb", "trust-pcl-equivalent"], seeds=[0], updates=500, device="cpu")

The experiment folder (default ``runs/gmm-posterior``)::

    configs/<method>.yaml          resolved learner config of each method (seed 0's)
    <method>/seed<k>/              one Trainer run folder per method and seed (config.yaml,
                                   buffer.zarr, checkpoints/, logs/seed<k>/scalars/, summary.json)
                                   plus samples.pt, the last evaluation's samples
    prior_metrics.json             the prior's figures
    results.md, results.csv        the results table (mean ± std over seeds)
    samples.png                    one panel of samples per method beside the prior and the target
    learning_curves.png            loss, log Z, TV, wrong-mode mass, ELBO, W₂ against updates

Running the same command again resumes unfinished method/seed runs from their checkpoints and
skips finished ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from zarrl.engine.config import Config, ConfigError, save_config
from zarrl.engine.experiments.gmm_posterior.config import (
    GUIDANCE,
    METHODS,
    canonical_method,
    load_method_config,
    load_sweep,
)
from zarrl.engine.experiments.gmm_posterior.reporting import (
    aggregate_summaries,
    plot_learning_curves,
    plot_sample_panels,
    read_curve,
    scalars_folder,
    write_results,
)
from zarrl.engine.layout import RunLayout
from zarrl.engine.reporting import read_scalar
from zarrl.engine.tasks import build_task
from zarrl.engine.tasks.gmm_posterior import EVAL_SEED, GMMPosteriorTask
from zarrl.engine.trainer import Trainer
from zarrl.envs.gmm_posterior import sample_target

__all__ = [
    "collect_summaries",
    "evaluate_guidance",
    "method_configs",
    "run_experiment",
    "train_method",
    "write_report",
]

SAMPLES = "samples.pt"


def _explicit(
    updates: int | None, batch_size: int | None, device: str | None, progress: bool | None
) -> list[str]:
    """The explicit arguments of :func:`run_experiment` as learner-config overrides."""
    extra = []
    if updates is not None:
        extra.append(f"train.total_updates={updates}")
    if batch_size is not None:
        extra.append(f"train.batch_size={batch_size}")
    if device is not None:
        extra.append(f"run.device={device}")
    if progress is not None:
        extra.append(f"log.progress={'true' if progress else 'false'}")
    return extra


def method_configs(
    methods: Sequence[str], overrides: Sequence[str] = (), *, root: str | Path, seed: int = 0
) -> dict[str, Config]:
    """Each trained method's learner config for ``seed`` under the experiment folder ``root``."""
    names = [canonical_method(m) for m in methods]
    return {
        m: load_method_config(m, list(overrides), seed=seed, root=root)
        for m in names
        if m != GUIDANCE
    }


def run_summary(folder: str | Path, method: str, seed: int) -> dict[str, Any] | None:
    """The figures of the run folder ``folder`` for the report: a finished run's ``summary.json``
    (the Trainer's), else the last evaluation logged by an unfinished one (``partial`` = True);
    ``None`` when it has evaluated nothing yet."""
    folder = Path(folder)
    base = {"method": method, "seed": seed}
    if (folder / "summary.json").is_file():
        found = json.loads((folder / "summary.json").read_text())
        summary = {**base, **{k: v for k, v in found.items() if isinstance(v, (int, float))}}
        learn_s = found.get("learn time (s)")  # a Trainer's (guidance trains nothing)
        if learn_s is not None:
            summary["train_s"] = learn_s
            summary["updates_per_s"] = found["updates"] / learn_s if learn_s > 0 else math.nan
        return summary
    curve = read_curve(folder)
    if not curve.get("update"):
        return None
    last = {k: v[-1] for k, v in curve.items()}
    _, rates = read_scalar(scalars_folder(folder), "perf/updates_per_s")
    return {
        **last,
        **base,
        "updates": int(last["update"]),
        "updates_per_s": rates[-1] if rates else math.nan,
        "partial": True,
    }


def train_method(config: Config, method: str) -> dict[str, Any]:
    """Train ``config`` with the Trainer in its run folder, resuming from its last checkpoint;
    a run already finished with ``train.total_updates`` updates is not run again. Writes the last
    evaluation's samples to ``samples.pt``; returns :func:`run_summary`."""
    layout = RunLayout(config.run_dir)
    if layout.summary.is_file():
        done = json.loads(layout.summary.read_text()).get("updates")
        if done == config.train.total_updates:
            return run_summary(layout.root, method, config.run.seed)
    trainer = Trainer(config, resume=layout.root if layout.has_checkpoint() else None)
    try:
        trainer.run()
        if trainer.task.last_samples is not None:
            torch.save(trainer.task.last_samples, layout.root / SAMPLES)
    finally:
        trainer.close()
    return run_summary(layout.root, method, config.run.seed)


def evaluate_guidance(config: Config, scale: float, folder: str | Path) -> dict[str, Any]:
    """Evaluate the untrained classifier-guidance sampler with ``config``'s task settings and
    seed; writes ``summary.json`` and ``samples.pt`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    task = build_task(config.env, config.model, seed=config.run.seed)
    metrics, x = task.evaluate(None, seed=EVAL_SEED + config.run.seed, guidance_scale=scale)
    (folder / "summary.json").write_text(json.dumps({"updates": 0, **metrics}, indent=2))
    torch.save(x, folder / SAMPLES)
    return run_summary(folder, GUIDANCE, config.run.seed)


def run_experiment(
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
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
    ``methods``, ``seeds`` and ``run_dir`` default to ``configs/gmm/sweep.yaml``'s.

    Returns ``{"root", "summaries": {method: [summary per seed]}, "rows", "paths"}``.
    """
    sweep = load_sweep()
    methods = list(sweep.methods if methods is None else methods)
    seeds = list(sweep.seeds if seeds is None else seeds)
    if not methods:
        raise ConfigError("--methods: got an empty list, expected method names")
    if not seeds:
        raise ConfigError("--seeds: got an empty list, expected integers")
    root = Path(sweep.dir if run_dir is None else run_dir)
    names = [canonical_method(m) for m in methods]
    overrides = [*overrides, *_explicit(updates, batch_size, device, progress)]
    trained = [m for m in names if m != GUIDANCE]
    guidance_base = trained[0] if trained else canonical_method(sweep.guidance.config)
    first = method_configs([guidance_base], overrides, root=root)[guidance_base]
    (root / "configs").mkdir(parents=True, exist_ok=True)
    for method, config in method_configs(trained, overrides, root=root).items():
        save_config(config, root / "configs" / f"{method}.yaml")
    summaries: dict[str, list[dict]] = {}
    for method in names:
        for seed in seeds:
            if method == GUIDANCE:
                config = load_method_config(guidance_base, overrides, seed=int(seed), root=root)
                folder = root / GUIDANCE / f"seed{seed}"
                summary = evaluate_guidance(config, sweep.guidance.scale, folder)
            else:
                config = load_method_config(method, overrides, seed=int(seed), root=root)
                summary = train_method(config, method)
            summaries.setdefault(method, []).append(summary)
    result: dict[str, Any] = {"root": root, "summaries": summaries}
    if report:
        result.update(write_report(root, first))
    return result


def collect_summaries(root: str | Path) -> dict[str, list[dict]]:
    """``{method: [summary per seed]}`` of every run under ``root``, in report order
    (:func:`run_summary`: finished runs, and the last evaluation of unfinished ones)."""
    root = Path(root)
    found: dict[str, list[dict]] = {}
    for method in METHODS:
        for folder in sorted((root / method).glob("seed*"), key=lambda p: int(p.name[4:] or 0)):
            summary = run_summary(folder, method, int(folder.name[4:]))
            if summary is not None:
                found.setdefault(method, []).append(summary)
    return found


def write_report(root: str | Path, config: Config) -> dict[str, Any]:
    """Results table, sample panels and learning curves of every run found in ``root``
    (finished or not, see :func:`collect_summaries`); ``config``: a method's learner config,
    whose task settings (prior, evaluation samples) evaluate the prior."""
    root = Path(root)
    summaries = collect_summaries(root)
    rows = aggregate_summaries(summaries)
    md, csv_path = write_results(rows, root)
    task: GMMPosteriorTask = build_task(config.env, config.model, seed=config.run.seed)
    prior_metrics, prior_x = task.evaluate(None, seed=1)
    (root / "prior_metrics.json").write_text(json.dumps(prior_metrics, indent=2))
    num = task.options["eval_samples"]
    panels: dict[str, torch.Tensor] = {
        "prior (25 modes)": prior_x,
        "target g₉": sample_target(num, generator=torch.Generator().manual_seed(2)),
    }
    curves: dict[str, list[dict]] = {}
    for method, runs in summaries.items():
        seed = runs[0]["seed"]
        folder = root / method / f"seed{seed}"
        if (folder / SAMPLES).is_file():
            panels[f"{method} (seed {seed})"] = torch.load(folder / SAMPLES, weights_only=True)
        curves[method] = [read_curve(root / method / f"seed{r['seed']}") for r in runs]
    figure = plot_sample_panels(panels, root / "samples.png")
    curve_plot = plot_learning_curves(
        {m: c for m, c in curves.items() if m != GUIDANCE}, root / "learning_curves.png"
    )
    return {
        "rows": rows,
        "prior_metrics": prior_metrics,
        "paths": {"md": md, "csv": csv_path, "samples": figure, "curves": curve_plot},
    }
