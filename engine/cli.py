"""The ``zarrl`` command: collect, train, inspect, verify, eval, demo, import.

Dotted overrides (``loss.gamma=0.97``) may come anywhere after the subcommand. Config arguments
are a path, or the name of a shipped config (``cartpole_trust_pcl``; ``configs/<name>.yaml`` also
resolves to the shipped copy outside the repository).

Exit codes: 0 success; 2 bad command line or config (the message names the key and value);
1 a path or checkpoint that cannot be used (missing, foreign, or would be overwritten), a missing
optional package (the message names the extra), or a store ``verify`` found problems in; 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 with usage: keep that, be concise
        self.print_usage(sys.stderr)
        print(f"zarrl: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


class _VersionAction(argparse.Action):
    """``--version``: one unwrapped line, computed only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(_version())
        parser.exit()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from zarrl.engine import __version__

    parts = []
    for dist in ("torch", "torchrl", "tensordict", "zarr"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} missing")
    python = ".".join(map(str, sys.version_info[:3]))
    return f"zarrl {__version__} ({', '.join(parts)}, Python {python})"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zarrl", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--version", action=_VersionAction, help="print the versions of zarrl, torch, ... and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("collect", help="collect environment steps into a Zarr buffer")
    p.add_argument("--env", required=True, help="Gymnasium id, e.g. CartPole-v1")
    p.add_argument("--policy", default="random", help="'random' or a run folder")
    p.add_argument("--frames", type=int, required=True, help="environment steps to collect")
    p.add_argument("--buffer", required=True, help="path of the Zarr store to write")
    p.add_argument("--append", action="store_true", help="append to an existing store")
    p.add_argument("--max-size", type=int, default=None, help="ring capacity (default unbounded)")
    p.add_argument(
        "--commit-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="commit the store at least this often: a kill loses at most this much (default 2)",
    )
    p.add_argument("--num-envs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--backend", choices=("local", "ray"), default="local", help="ray: Ray collector workers"
    )
    p.add_argument("--workers", type=int, default=1, help="Ray collector workers (--backend ray)")
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of a store URL's store, e.g. endpoint_url=http://... (docs/scale-out.md)",
    )

    p = sub.add_parser("train", help="train from a config (online, offline or mixed)")
    p.add_argument(
        "config", nargs="?", help="YAML config or a shipped config's name (optional with --resume)"
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.gamma=0.99")
    p.add_argument("--offline", action="store_true", help="train from --buffer only")
    p.add_argument("--mixed", action="store_true", help="start from --buffer, keep collecting")
    p.add_argument("--buffer", help="Zarr buffer path (sets buffer.path)")
    p.add_argument("--resume", help="run folder to continue from its last checkpoint")
    p.add_argument("--device", help="learner device: auto, cpu, cuda (sets run.device)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    p.add_argument("--backend", choices=("local", "ray"), help="sets collector.backend")
    p.add_argument("--workers", type=int, help="Ray collector workers (collector.num_workers)")
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of a store URL's store (sets buffer.storage_options.KEY)",
    )

    p = sub.add_parser("inspect", help="describe a Zarr buffer")
    p.add_argument("buffer")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--check", action="store_true", help="verify every committed chunk first (zarrl verify)"
    )

    p = sub.add_parser(
        "verify", help="check every committed chunk and the metadata of a Zarr buffer"
    )
    p.add_argument("buffer")

    p = sub.add_parser("eval", help="evaluate the policy of a run folder")
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--checkpoint", default="last", help="last, final, or a .pt path")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode")
    p.add_argument("--seed", type=int, default=12345)

    p = sub.add_parser(
        "demo",
        help="the main job: Trust-PCL on CartPole into a local Zarr store "
        "(`zarrl demo generations`: offline RTB on a character model's own logs)",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides of configs/demo.yaml")
    p.add_argument("--runs", default="runs", help="parent folder of the run")

    from zarrl.engine.experiments.gmm_posterior.cli import add_experiment_parser, main_experiment

    add_experiment_parser(sub).set_defaults(handler=main_experiment)

    from zarrl.engine.importing import add_import_parser

    add_import_parser(sub)
    from zarrl.engine.generations_commands import add_sample_score_parsers

    add_sample_score_parsers(sub)
    return parser


def _cmd_collect(args: argparse.Namespace) -> int:
    from zarrl.engine.collect import COMMIT_EVERY_SECONDS, collect
    from zarrl.engine.reporting import format_table

    if args.frames <= 0:
        raise _UsageError(f"--frames: got {args.frames}, expected a positive number of steps")
    if args.policy != "random" and not Path(args.policy).is_dir():
        raise _UsageError(f"--policy: got {args.policy!r}, expected 'random' or a run folder")
    if args.backend == "ray":
        return _collect_ray(args)
    from zarrl.engine.ray_collect import parse_storage_options

    result = collect(
        args.env,
        args.buffer,
        args.frames,
        policy=args.policy,
        seed=args.seed,
        append=args.append,
        max_size=args.max_size,
        num_envs=args.num_envs,
        commit_every_seconds=COMMIT_EVERY_SECONDS
        if args.commit_every is None
        else args.commit_every,
        progress=not args.quiet,
        storage_options=parse_storage_options(args.storage_option),
    )
    print(format_table({"buffer": args.buffer, **result}, title="zarrl collect"))
    return EXIT_OK


def _collect_ray(args: argparse.Namespace) -> int:
    from zarrl.engine.ray_collect import collect_ray, parse_storage_options
    from zarrl.engine.reporting import format_table

    if args.workers < 1:
        raise _UsageError(f"--workers: got {args.workers}, expected at least 1")
    result = collect_ray(
        args.env,
        args.buffer,
        args.frames,
        workers=args.workers,
        policy=args.policy,
        seed=args.seed,
        append=args.append,
        max_size=args.max_size,
        commit_every_seconds=2.0 if args.commit_every is None else args.commit_every,
        storage_options=parse_storage_options(args.storage_option),
    )
    print(format_table({"buffer": args.buffer, **result}, title="zarrl collect (ray)"))
    return EXIT_OK


def _train_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.offline and args.mixed:
        raise _UsageError("--offline and --mixed are exclusive")
    if args.offline:
        overrides.append("train.mode=offline")
    if args.mixed:
        overrides.append("train.mode=mixed")
    if args.buffer:
        overrides.append(f"buffer.path={args.buffer}")
    if args.device:
        overrides.append(f"run.device={args.device}")
    if args.quiet:
        overrides.append("log.progress=false")
    if args.backend:
        overrides.append(f"collector.backend={args.backend}")
    if args.workers is not None:
        overrides.append(f"collector.num_workers={args.workers}")
    for item in args.storage_option:
        key, eq, value = item.partition("=")
        if not eq or not key or "." in key:
            raise _UsageError(f"--storage-option: got {item!r}, expected KEY=VALUE")
        overrides.append(f"buffer.storage_options.{key}={value}")
    return overrides


def _cmd_train(args: argparse.Namespace) -> int:
    from zarrl.engine.config import load_config
    from zarrl.engine.trainer import Trainer

    if args.config and "=" in args.config:  # `zarrl train --resume run/ key=value`
        args.overrides.insert(0, args.config)
        args.config = None
    overrides = _train_overrides(args)
    if args.resume:
        trainer = Trainer.resume(args.resume, overrides)
    else:
        if not args.config:
            raise _UsageError("train: give a config file, or --resume RUN_FOLDER")
        trainer = Trainer(load_config(args.config, overrides))
    return _run(trainer)


def _run(trainer) -> int:
    """Runs ``trainer`` to the end (closing it even on error) and prints where its outputs went."""
    try:
        trainer.run()
    finally:
        trainer.close()
    _print_locations(trainer)
    return EXIT_OK


def _print_locations(trainer) -> None:
    layout = trainer.layout
    print(f"buffer:      {trainer.buffer_path}")
    print(f"checkpoints: {layout.checkpoints}")
    print(f"logs:        {layout.scalars(trainer.config.run.name)}")
    if layout.plot.is_file():  # a run with returns to plot
        print(f"plot:        {layout.plot}")
    print(f"config:      {layout.config}")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from zarrl.engine.inspect_buffer import describe_buffer, format_description

    if args.check and _cmd_verify(args, quiet=True) != EXIT_OK:
        return EXIT_RUNTIME
    info = describe_buffer(args.buffer)
    print(json.dumps(info, indent=2, default=str) if args.json else format_description(info))
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace, quiet: bool = False) -> int:
    """One line per problem on stdout and exit 1; else one OK line (none when ``quiet``)."""
    from zarrl.engine.inspect_buffer import verify_buffer

    ok, lines = verify_buffer(args.buffer)
    if ok and quiet:
        return EXIT_OK
    for line in lines:
        print(line)
    if not ok:
        print(f"zarrl verify: {len(lines)} problem(s) in {args.buffer}", file=sys.stderr)
    return EXIT_OK if ok else EXIT_RUNTIME


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch
    from zarrl.engine.collect import load_policy
    from zarrl.engine.evaluate import evaluate_policy
    from zarrl.engine.reporting import format_table

    if args.episodes <= 0:
        raise _UsageError(f"--episodes: got {args.episodes}, expected > 0")
    if not Path(args.run_dir).is_dir():
        raise _RuntimeFailure(f"run folder {args.run_dir!r} does not exist")
    actor, config, task = load_policy(args.run_dir, checkpoint=args.checkpoint)
    torch.manual_seed(args.seed)
    env = task.make_env(seed=args.seed, num_envs=min(args.episodes, 20))
    returns = evaluate_policy(
        env,
        actor,
        args.episodes,
        deterministic=not args.stochastic,
        max_steps=task.max_episode_steps,
    )
    rows = {
        "run folder": args.run_dir,
        "env": task.description,
        "episodes": args.episodes,
        "mean return": float(returns.mean()),
        "std return": float(returns.std()) if args.episodes > 1 else 0.0,
        "min return": float(returns.min()),
        "max return": float(returns.max()),
    }
    print(format_table(rows, title="zarrl eval"))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from zarrl.engine.config import load_config
    from zarrl.engine.trainer import Trainer

    if args.overrides[:1] == ["generations"]:  # `zarrl demo generations`
        from zarrl.engine.generations_demo import main_demo

        return main_demo(args.runs, args.overrides[1:])

    config = load_config("demo", [f"run.dir={args.runs}", *args.overrides])
    base, n = config.run.name, 1
    while config.run_dir.exists():  # never overwrite an earlier demo
        n += 1
        config.run.name = f"{base}-{n}"
    print(
        f"zarrl demo: {config.loss['name']} on {config.env.name}, "
        f"{config.train.total_frames} env steps, run folder {config.run_dir}"
    )
    trainer = Trainer(config)
    return _run(trainer)


class _UsageError(Exception):
    pass


class _RuntimeFailure(Exception):
    pass


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; dotted overrides (``key=value``) are accepted anywhere after the
    subcommand, also after options (``train CFG --buffer B train.total_updates=300``)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in overrides]
    if overrides and not hasattr(args, "overrides"):
        unknown = extra
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``zarrl`` command; returns the exit code."""
    args = _parse(argv)
    from zarrl.engine.checkpoint import CheckpointError
    from zarrl.engine.config import ConfigError
    from zarrl.engine.registry import BufferPathError, MissingDependencyError
    from zarrl.engine.trainer import RunFolderError

    handlers = {
        "collect": _cmd_collect,
        "train": _cmd_train,
        "inspect": _cmd_inspect,
        "verify": _cmd_verify,
        "eval": _cmd_eval,
        "demo": _cmd_demo,
    }
    try:
        return handlers.get(args.command, getattr(args, "handler", None))(args)
    except (ConfigError, _UsageError) as err:
        print(f"zarrl {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (
        BufferPathError,
        CheckpointError,
        MissingDependencyError,
        RunFolderError,
        _RuntimeFailure,
    ) as err:
        print(f"zarrl {args.command}: error: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print(f"zarrl {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
