"""The ``zarrl experiment`` subcommand: its arguments and handler.

Kept apart from :mod:`zarrl.engine.experiments.gmm_posterior.experiment` so that building the command line (and
``zarrl --help``) loads no torch; the handler imports the experiment when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zarrl.engine.config import ConfigError
from zarrl.engine.experiments.gmm_posterior.config import (
    GUIDANCE,
    METHODS,
    canonical_method,
    load_sweep,
)

__all__ = ["add_experiment_parser", "main_experiment"]


def _int_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: got {text!r}, expected comma-separated integers") from None


def add_experiment_parser(sub) -> argparse.ArgumentParser:
    """Register ``experiment gmm-posterior`` on the ``zarrl`` command's subparsers."""
    p = sub.add_parser("experiment", help="run a reproducible experiment (gmm-posterior)")
    p.add_argument("name", choices=["gmm-posterior"], help="which experiment")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every method's config")
    p.add_argument(
        "--methods",
        help=f"comma-separated method names (default: sweep.yaml's, {','.join(METHODS)})",
    )
    p.add_argument("--seeds", help="comma-separated seeds (default: sweep.yaml's, 0,1,2)")
    p.add_argument("--updates", type=int, help="updates per run (default: the configs', 5000)")
    p.add_argument("--batch-size", type=int, help="trajectories per update (default 500)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--run-dir", help="experiment folder (default: sweep.yaml's, runs/gmm-posterior)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="only (re)write the table and figures from the runs found in --run-dir",
    )
    return p


def main_experiment(args: argparse.Namespace) -> int:
    """Handler of ``zarrl experiment``; prints the results table and where everything is."""
    from zarrl.engine.experiments.gmm_posterior.experiment import (
        method_configs,
        run_experiment,
        write_report,
    )
    from zarrl.engine.experiments.gmm_posterior.reporting import format_results_markdown

    sweep = load_sweep()
    methods = sweep.methods
    if args.methods is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = sweep.seeds if args.seeds is None else _int_list(args.seeds)
    run_dir = Path(sweep.dir if args.run_dir is None else args.run_dir)
    if args.report_only:
        trained = [m for m in methods if canonical_method(m) != GUIDANCE] or [sweep.guidance.config]
        config = next(iter(method_configs(trained[:1], args.overrides, root=run_dir).values()))
        if not run_dir.is_dir():
            raise ConfigError(f"--run-dir: got {str(run_dir)!r}, which does not exist")
        result = write_report(run_dir, config)
    else:
        result = run_experiment(
            methods,
            seeds,
            args.overrides,
            run_dir=run_dir,
            updates=args.updates,
            batch_size=args.batch_size,
            device=args.device,
            progress=False if args.quiet else None,
        )
    print(format_results_markdown(result["rows"]))
    for key, path in result["paths"].items():
        print(f"{key + ':':<9}{path}")
    return 0
