"""Collection on Ray (``collector.backend: ray``, ``--backend ray --workers N``): TorchRL's
``RayCollector`` workers write into a Ray-hosted replay buffer whose storage is a ``ZarrStorage``
built inside the buffer's actor (one owner of the store; ``docs/scale-out.md``).

- ``ray_replay_buffer``: ``TensorDictReplayBuffer(storage=partial(ZarrStorage, ...),
  service_backend="ray")``; the learner samples it like a local buffer.
- ``ray_collector``: ``RayCollector`` with ``num_workers`` remote ``Collector`` s writing into
  that buffer; trajectory ids are made unique across workers (worker ``k`` of ``N`` numbers its
  ``j``-th trajectory ``offset + j * N + k``); weights reach the workers through TorchRL's
  weight-sync route (``update_policy_weights_``, ``RayWeightSyncScheme``).
- ``collect_ray``: ``zarrl collect --backend ray``.
- ``RayBatchCollector``: the ``Trainer``'s collector with ``collector.backend: ray``: Ray workers
  write into the run's Ray-hosted buffer (``engine/ray_buffer.py``), which the learner samples.
- ``close_ray_buffer``: commits the store (``state_dict()`` of the remote buffer flushes its
  storage) before the actor is stopped, so every collected row is in the store.

Workers import zarrl: an installed zarrl (a wheel or ``pip install -e``) on every node, or a Ray
``runtime_env`` that ships it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from zarrl.engine.config import BufferConfig, ConfigError, EnvConfig, ModelConfig
from zarrl.engine.policies import TRAJ_KEY, next_trajectory_id, uniform_policy_like

__all__ = [
    "RayBatchCollector",
    "close_ray_buffer",
    "collect_ray",
    "ray_collector",
    "ray_replay_buffer",
]


def init_ray(num_cpus: int | None = None) -> Any:
    """``ray`` after ``ray.init`` (once per process): the cluster at ``RAY_ADDRESS`` when that is
    set, else a local Ray with ``num_cpus`` CPUs (default: all), without its dashboard."""
    try:
        import ray
    except ImportError as err:
        raise ConfigError(
            "collector.backend=ray needs Ray: pip install 'zarrl[scale]' (docs/scale-out.md)"
        ) from err
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"])
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray


def storage_factory(
    path: str, config: BufferConfig, *, create: bool, storage_options: dict | None = None
) -> Callable[[], Any]:
    """The constructor the buffer's actor calls: a new store at ``path`` (``create``; refuses an
    existing one) or the existing one reopened for writing."""
    from zarrl.buffers import ZarrStorage

    kwargs = {
        "cache": config.cache,
        "flush_every_rows": config.flush_every_rows,
        "flush_every_seconds": config.flush_every_seconds,
        "storage_options": storage_options or dict(config.storage_options) or None,
    }
    if create:
        if config.chunk_rows is not None:
            kwargs["chunk_rows"] = config.chunk_rows
        if not config.compress:
            kwargs["compressors"] = []
        return functools.partial(ZarrStorage, config.max_size, path=path, **kwargs)
    return functools.partial(ZarrStorage.open, path, "r+", **kwargs)


def ray_replay_buffer(
    storage: Callable[[], Any], *, batch_size: int | None = None, sampler: Any = None
) -> Any:
    """A Ray-hosted ``TensorDictReplayBuffer`` over ``storage()`` (built in its actor, which
    asks Ray for no CPU of its own); ``sample`` / ``len`` / ``extend`` go to the actor."""
    from torchrl.data import TensorDictReplayBuffer

    kwargs: dict[str, Any] = {"storage": storage, "batch_size": batch_size}
    if sampler is not None:
        kwargs["sampler"] = sampler
    return TensorDictReplayBuffer(
        **kwargs,
        service_backend="ray",
        service_backend_options={"remote_config": {"num_cpus": 0}},
    )


def offset_trajectories(
    batch: TensorDictBase, offset: int, num_workers: int, rank: int
) -> TensorDictBase:
    """``batch`` ([envs, time] or [time]) flattened, with trajectory ids ``j`` of worker
    ``rank`` renumbered ``offset + j * num_workers + rank`` (unique across workers)."""
    batch = batch.reshape(-1)
    batch[TRAJ_KEY] = offset + batch[TRAJ_KEY] * num_workers + rank
    return batch


def ray_collector(
    make_env: Callable[[], Any] | list[Callable[[], Any]],
    policy: torch.nn.Module,
    replay_buffer: Any,
    *,
    num_workers: int,
    frames_per_batch: int,
    total_frames: int,
    traj_offset: int = 0,
    init_random_frames: int = 0,
) -> Any:
    """``RayCollector`` of ``num_workers`` single-process collectors (1 CPU each) writing into
    the Ray-hosted ``replay_buffer``; the policy's weights are sent to the workers before the
    first batch (later: ``collector.update_policy_weights_(policy)``)."""
    from torchrl.collectors import Collector
    from torchrl.collectors.distributed import RayCollector

    if not isinstance(num_workers, int) or num_workers < 1:
        raise ConfigError(f"collector.num_workers: got {num_workers!r}, expected an int >= 1")
    collector_kwargs = [
        {
            "postproc": functools.partial(
                offset_trajectories, offset=traj_offset, num_workers=num_workers, rank=rank
            ),
            "auto_register_policy_transforms": False,
        }
        for rank in range(num_workers)
    ]
    envs = make_env if isinstance(make_env, list) else [make_env] * num_workers
    collector = RayCollector(
        envs,
        policy,
        collector_class=Collector,
        collector_kwargs=collector_kwargs,
        num_collectors=num_workers,
        frames_per_batch=frames_per_batch,
        total_frames=total_frames,
        init_random_frames=init_random_frames,
        remote_configs={"num_cpus": 1},
        replay_buffer=replay_buffer,
    )
    collector.update_policy_weights_(policy)
    return collector


def close_ray_buffer(replay_buffer: Any) -> dict[str, Any]:
    """Commits the remote storage (its ``state_dict`` flushes), then stops the buffer's actor;
    returns the storage's state (``commit``: the record every row is counted in)."""
    state = replay_buffer.state_dict()["_storage"]
    replay_buffer.close()
    return state


def collect_ray(
    env_name: str,
    buffer: str,
    frames: int,
    *,
    workers: int,
    policy: str = "random",
    seed: int = 0,
    append: bool = False,
    max_size: int | None = None,
    frames_per_batch: int = 1_000,
    commit_every_seconds: float | None = 2.0,
    storage_options: dict | None = None,
) -> dict[str, int | float]:
    """``zarrl collect --backend ray --workers N``: ``frames`` environment steps from ``workers``
    Ray workers acting with ``policy`` (``"random"`` or a run folder, as ``collect``) into the
    store at ``buffer`` (a path or a store URL); returns the rows added and the rows the store
    holds (asynchronous workers finish the batch they are on: a few batches more than
    ``frames`` may be added)."""
    from zarrl.buffers import ZarrStorage
    from zarrl.engine.models import build_actor
    from zarrl.engine.registry import BufferPathError, make_environment

    init_ray()
    env_cfg, obs_norm = EnvConfig(name=env_name), None
    if policy == "random":
        probe_env = make_environment(env_cfg, seed=seed)
        actor = uniform_policy_like(build_actor(probe_env, ModelConfig()))
        probe_env.close()
    else:
        from zarrl.engine.collect import gym_policy_for

        actor, obs_norm = gym_policy_for(policy, env_name, env_cfg)
    config = BufferConfig(max_size=max_size, cache=None, flush_every_seconds=commit_every_seconds)
    offset, before = 0, 0
    if append:
        with ZarrStorage.open(buffer, "r", storage_options=storage_options) as stored:
            offset, before = next_trajectory_id(stored), len(stored)
    elif not _is_url(buffer) and Path(buffer).exists():
        raise BufferPathError(
            f"buffer path {buffer!r} already exists; refusing to overwrite it (add to it with "
            "--append, or choose another --buffer)"
        )
    rb = ray_replay_buffer(
        storage_factory(buffer, config, create=not append, storage_options=storage_options)
    )
    per_worker = max(1, min(frames_per_batch, frames) // workers)
    collector = ray_collector(
        [_EnvMaker(env_cfg, seed + rank, obs_norm) for rank in range(workers)],
        actor,
        rb,
        num_workers=workers,
        frames_per_batch=per_worker,
        total_frames=frames,
        traj_offset=offset,
    )
    try:
        for _ in collector:
            pass
    finally:
        collector.shutdown()
        state = close_ray_buffer(rb)
    rows = int(state["commit"]["write_count"])
    return {"rows added": rows - before, "rows in buffer": int(state["_len"])}


class RayBatchCollector:
    """Collector of the ``Trainer`` with ``collector.backend: ray``: ``num_workers`` Ray workers
    (TorchRL ``RayCollector``, synchronous) act with copies of ``acting.policy`` and write into
    the Ray-hosted ``replay_buffer`` (``engine/ray_buffer.py``); each ``next()`` waits for one
    batch of every worker (``frames_per_batch`` steps in all), then hands the episodes they
    finished (``episodes()``: their last rows, or ``None``) to ``post_collect_hook``; it returns
    ``None`` (the rows stay in the buffer's actor). ``update_policy_weights_()`` sends the
    current weights of ``acting.policy`` to the workers (TorchRL's ``RayWeightSyncScheme``), or
    those of ``acting.random_policy`` (same modules, uniform output: the same row keys) while
    ``acting.random`` is set (warm-up, ``collector.init_random_frames``). Worker
    ``k``'s trajectory ids are renumbered ``traj_offset + j * num_workers + k``
    (``offset_trajectories``). ``make_env(rank)`` builds worker ``rank``'s environment."""

    def __init__(
        self,
        make_env: Callable[[int], Any],
        acting: Any,
        replay_buffer: Any,
        *,
        num_workers: int,
        frames_per_batch: int,
        episodes: Callable[[], TensorDictBase | None],
        post_collect_hook: Callable[[TensorDictBase], None],
        traj_offset: int = 0,
    ) -> None:
        from torchrl.collectors import Collector
        from torchrl.collectors.distributed import RayCollector

        if not isinstance(num_workers, int) or num_workers < 1:
            raise ConfigError(f"collector.num_workers: got {num_workers!r}, expected an int >= 1")
        if frames_per_batch < num_workers:
            raise ConfigError(
                f"collector.frames_per_batch: got {frames_per_batch}, expected at least "
                f"collector.num_workers ({num_workers}): each worker collects its share"
            )
        init_ray()
        self.acting, self.episodes = acting, episodes
        self.post_collect_hook = post_collect_hook
        self._collector = RayCollector(
            [functools.partial(make_env, rank) for rank in range(num_workers)],
            acting.policy,
            collector_class=Collector,
            collector_kwargs=[
                {
                    "postproc": functools.partial(
                        offset_trajectories,
                        offset=traj_offset,
                        num_workers=num_workers,
                        rank=rank,
                    ),
                    "auto_register_policy_transforms": False,
                }
                for rank in range(num_workers)
            ],
            num_collectors=num_workers,
            frames_per_batch=frames_per_batch // num_workers * num_workers,
            total_frames=2**62,  # until shutdown
            remote_configs={"num_cpus": 1},
            replay_buffer=replay_buffer,
            sync=True,  # between two next() calls no worker writes: counters match the store
        )
        self.update_policy_weights_()
        self._iterator = iter(self._collector)

    def __iter__(self) -> RayBatchCollector:
        return self

    def __next__(self) -> None:
        if self._sent_random != self.acting.random:  # warm-up began or ended
            self.update_policy_weights_()
        next(self._iterator)
        finished = self.episodes()
        if finished is not None:
            self.post_collect_hook(finished)
        return None

    def update_policy_weights_(self, *args: Any, **kwargs: Any) -> None:
        """Sends the acting policy's current weights to every worker."""
        self._sent_random = bool(self.acting.random)
        policy = self.acting.random_policy if self._sent_random else self.acting.policy
        self._collector.update_policy_weights_(policy)

    def shutdown(self) -> None:
        self._collector.shutdown()


def parse_storage_options(items: list[str]) -> dict[str, Any] | None:
    """``["KEY=VALUE", ...]`` (``--storage-option``) as a dict (``true``/``false`` as booleans);
    ``ConfigError`` for an item without ``=``."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--storage-option: got {item!r}, expected KEY=VALUE")
        out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out or None


class _EnvMaker:
    """Picklable environment constructor for a Ray worker (its own seed)."""

    def __init__(self, env_cfg: EnvConfig, seed: int, obs_norm: dict | None = None) -> None:
        self.env_cfg, self.seed, self.obs_norm = env_cfg, seed, obs_norm

    def __call__(self) -> Any:
        from zarrl.engine.registry import make_environment

        return make_environment(self.env_cfg, seed=self.seed, obs_norm=self.obs_norm)


def _is_url(path: str) -> bool:
    from zarrl.buffers.object_store import is_url

    return is_url(path)
