"""The ``zarrl experiment`` subcommand: its arguments and handler.

Kept apart from :mod:`zarrl.engine.experiments.gmm_posterior.experiment` so that building the command line (and
``zarrl --help``) loads no torch; the handler imports the experiment when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zarrl.engine.config import ConfigError
from zarrl.engine.experiments.gmm_posterior.config import METHODS

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
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated method names")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--updates", type=int, help="updates per run (default: the configs', 5000)")
    p.add_argument("--batch-size", type=int, help="trajectories per update (default 500)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--run-dir", default="runs/gmm-posterior", help="experiment folder")
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
    from zarrl.engine.experiments.gmm_posterior.runner import resolve_device
    from zarrl.envs.gmm_posterior import load_prior

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.report_only:
        config = next(
            iter(method_configs(methods[:1], args.overrides, run_dir=args.run_dir).values())
        )
        root = Path(args.run_dir)
        if not root.is_dir():
            raise ConfigError(f"--run-dir: got {str(root)!r}, which does not exist")
        prior_net = load_prior(config.prior, device=resolve_device(args.device or "cpu"))
        result = write_report(root, config, prior_net)
    else:
        result = run_experiment(
            methods,
            _int_list(args.seeds),
            args.overrides,
            run_dir=args.run_dir,
            updates=args.updates,
            batch_size=args.batch_size,
            device=args.device,
            progress=False if args.quiet else None,
        )
    print(format_results_markdown(result["rows"]))
    for key, path in result["paths"].items():
        print(f"{key + ':':<9}{path}")
    return 0
