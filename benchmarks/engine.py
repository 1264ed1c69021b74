"""Pipeline overhead of the engine: collector frames/s and learner updates/s inside a Trainer run
versus each part alone, measured side by side in one process.

Rows:
- collector alone: a TorchRL ``Collector`` with the policy on CartPole-v1, no buffer;
- collector -> ZarrStorage alone: the same collector writing into the Zarr replay buffer;
- learner alone: Trust-PCL updates sampling slices from a filled Zarr buffer, no collection;
- pipeline: ``Trainer.run()`` online (collect, write, sample, update, sync weights), with the
  frames/s of its collection phases and the updates/s of its learning phases.

- with ``--ray``: 1 and 2 Ray collector workers (``engine/ray_collect.py``, a local Ray) writing
  into a Ray-hosted ZarrStorage, beside the single-process collector into ZarrStorage.

Run: ``.venv/bin/python benchmarks/engine.py [--frames 20000] [--updates 300] [--ray]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torchrl.collectors import Collector
from zarrl.engine.config import load_config
from zarrl.engine.reporting import format_table
from zarrl.engine.trainer import Trainer


def _config(root: Path, frames: int, name: str):
    return load_config(
        Path(__file__).resolve().parents[1] / "configs" / "cartpole_trust_pcl.yaml",
        [
            f"run.dir={root}",
            f"run.name={name}",
            f"train.total_frames={frames}",
            "train.warmup_frames=1000",
            "collector.init_random_frames=0",
            "eval.episodes=0",
            "log.progress=false",
            "train.checkpoint_every_updates=1000000",
            "run.device=cpu",
        ],
    )


def collector_alone(trainer: Trainer, frames: int) -> float:
    """Frames/s of a plain collector (same env and policy, nothing stored)."""
    from zarrl.engine.registry import make_environment

    env_cfg = trainer.config.env
    collector = Collector(
        lambda: make_environment(env_cfg, seed=1),
        trainer.collector_policy,
        frames_per_batch=trainer.config.collector.frames_per_batch,
        total_frames=frames,
        auto_register_policy_transforms=False,
    )
    it = iter(collector)
    next(it)  # warm-up batch
    start, n = time.perf_counter(), 0
    for batch in it:
        n += batch.numel()
    elapsed = time.perf_counter() - start
    collector.shutdown()
    return n / elapsed


def collector_into_zarr(trainer: Trainer, frames: int) -> float:
    """Frames/s of the trainer's collector writing into its Zarr buffer (no learning)."""
    it = iter(trainer.collector)
    next(it)
    before = trainer.buffer.write_count
    start = time.perf_counter()
    while trainer.buffer.write_count - before < frames:
        next(it)
    elapsed = time.perf_counter() - start
    return (trainer.buffer.write_count - before) / elapsed


def learner_alone(trainer: Trainer, updates: int) -> float:
    """Updates/s of sample + Trust-PCL loss + backward + Adam + reference update."""
    for _ in range(5):
        trainer.update()
    start = time.perf_counter()
    for _ in range(updates):
        trainer.update()
    return updates / (time.perf_counter() - start)


def ray_collectors(trainer: Trainer, frames: int, workers: int, root: Path) -> float:
    """Frames/s of ``workers`` Ray collector workers (same env and policy) writing into a
    Ray-hosted ZarrStorage (``engine/ray_collect.py``), after one warm-up batch per worker."""
    from zarrl.engine.config import BufferConfig
    from zarrl.engine.ray_collect import (
        close_ray_buffer,
        init_ray,
        ray_collector,
        ray_replay_buffer,
        storage_factory,
    )
    from zarrl.engine.registry import make_environment

    init_ray()
    env_cfg = trainer.config.env
    path = str(root / f"ray{workers}.zarr")
    rb = ray_replay_buffer(
        storage_factory(path, BufferConfig(max_size=None, cache=None), create=True)
    )
    collector = ray_collector(
        lambda: make_environment(env_cfg, seed=1),
        trainer.collector_policy,
        rb,
        num_workers=workers,
        frames_per_batch=trainer.config.collector.frames_per_batch,
        total_frames=10 * frames + 10**6,
    )
    it = iter(collector)
    for _ in range(workers):
        next(it)
    before, start = rb.write_count, time.perf_counter()
    while rb.write_count - before < frames:
        next(it)
    elapsed = time.perf_counter() - start
    n = rb.write_count - before
    collector.shutdown()
    close_ray_buffer(rb)
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000, help="frames per collector figure")
    parser.add_argument("--updates", type=int, default=300, help="updates for the learner alone")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--ray", action="store_true", help="add 1 and 2 Ray collector workers (zarrl[scale])"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        parts = Trainer(_config(root, args.frames, "parts"))
        alone_frames = collector_alone(parts, args.frames)
        zarr_frames = collector_into_zarr(parts, args.frames)
        alone_updates = learner_alone(parts, args.updates)
        ray_frames = {}
        if args.ray:
            for workers in (1, 2):
                ray_frames[workers] = ray_collectors(parts, args.frames, workers, root)
        parts.close()

        pipeline = Trainer(_config(root, args.frames, "pipeline"))
        wall = time.perf_counter()
        summary = pipeline.run()
        wall = time.perf_counter() - wall
        pipeline.close()
        pipe_frames = summary["frames/s (collecting)"]
        pipe_updates = summary["updates/s (learning)"]

    rows = {
        "collector alone (frames/s)": round(alone_frames, 1),
        "collector -> ZarrStorage alone (frames/s)": round(zarr_frames, 1),
        "collector in pipeline (frames/s)": pipe_frames,
        "  collector ratio, pipeline / alone": round(pipe_frames / alone_frames, 3),
        "  collector ratio, pipeline / into Zarr alone": round(pipe_frames / zarr_frames, 3),
        "learner alone (updates/s)": round(alone_updates, 1),
        "learner in pipeline (updates/s)": pipe_updates,
        "  learner ratio, pipeline / alone": round(pipe_updates / alone_updates, 3),
        "pipeline env steps": summary["env steps"],
        "pipeline updates": summary["updates"],
        "pipeline wall time (s)": round(wall, 1),
        "pipeline overall env steps/s": round(summary["env steps"] / wall, 1),
    }
    for workers, fps in ray_frames.items():
        rows[f"{workers} Ray worker(s) -> Ray-hosted ZarrStorage (frames/s)"] = round(fps, 1)
        rows[f"  ratio to the single-process collector -> Zarr ({workers})"] = round(
            fps / zarr_frames, 3
        )
    print(format_table(rows, title=f"engine pipeline overhead ({args.threads} thread(s), CPU)"))


if __name__ == "__main__":
    main()
