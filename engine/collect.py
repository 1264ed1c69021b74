"""Stand-alone collection into a Zarr replay buffer (``zarrl collect``) and loading a trained policy
back from a run folder (for collection and evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector
from torchrl.data import TensorDictReplayBuffer
from torchrl.modules import ProbabilisticActor
from tqdm.auto import tqdm
from zarrl.engine.checkpoint import latest_checkpoint, load_checkpoint
from zarrl.engine.config import BufferConfig, Config, ConfigError, EnvConfig, ModelConfig
from zarrl.engine.models import build_actor
from zarrl.engine.policies import TRAJ_KEY, next_trajectory_id, uniform_policy_like
from zarrl.engine.registry import BufferPathError, create_storage, make_environment, open_storage
from zarrl.engine.tasks import Task, build_task

__all__ = ["COMMIT_EVERY_SECONDS", "collect", "load_policy"]

#: Default commit interval of ``zarrl collect``: a kill loses at most this many seconds of steps.
COMMIT_EVERY_SECONDS = 2.0
_CHECKED_KEYS = ("observation", "action")


def load_policy(
    run_dir: str | Path, checkpoint: str = "last"
) -> tuple[ProbabilisticActor, Config, Task]:
    """The trained policy of a run folder (CPU), the run's config and its task (whose
    environments normalize observations as the run's did).

    ``checkpoint`` is ``"last"`` (``checkpoints/last.pt``), ``"final"``, or a path to a ``.pt`` file.
    """
    run_dir = Path(run_dir)
    if checkpoint == "last":
        path = latest_checkpoint(run_dir)
    elif checkpoint == "final":
        path = run_dir / "checkpoints" / "final.pt"
    else:
        path = Path(checkpoint)
    state = load_checkpoint(path)
    config = Config.from_dict(state["config"])
    task = build_task(config.env, config.model)
    extra = state["extra"]
    task.load_state_dict(extra.get("task", {"obs_norm": extra.get("obs_norm")}))
    actor = task.build_actor()
    actor.load_state_dict(state["modules"]["actor"])
    return actor, config, task


def gym_policy_for(
    policy: str | Path, env_name: str, env_cfg: EnvConfig
) -> tuple[ProbabilisticActor, Any]:
    """``(actor, obs_norm)`` of the run folder ``policy`` for collecting on ``env_name``: refuses
    a run trained on another task or environment (``ConfigError``) and makes ``env_cfg``
    normalize observations as the run did."""
    actor, run_config, task = load_policy(policy)
    if run_config.env.task != "gym" or run_config.env.name != env_name:
        raise ConfigError(
            f"--policy: the run {str(policy)!r} was trained on {run_config.env.name}, not on "
            f"--env {env_name}"
        )
    env_cfg.normalize_obs = run_config.env.normalize_obs
    return actor, task.state_dict().get("obs_norm")


def collect(
    env_name: str,
    buffer: str | Path,
    frames: int,
    *,
    policy: str = "random",
    seed: int = 0,
    append: bool = False,
    max_size: int | None = None,
    frames_per_batch: int = 1_000,
    num_envs: int = 1,
    commit_every_seconds: float | None = COMMIT_EVERY_SECONDS,
    progress: bool = True,
    storage_options: dict | None = None,
) -> dict[str, int | float]:
    """Collect ``frames`` environment steps into the Zarr buffer at ``buffer``.

    ``policy`` is ``"random"`` (uniform actions) or a run folder whose last checkpoint supplies the
    policy (sampled, not greedy; it must have been trained on ``env_name``). A new buffer is created
    unless ``append`` (then the store must exist, hold steps of the same observation and action
    shapes, and new trajectory ids continue after the stored ones). The store commits at least
    every ``commit_every_seconds`` (``None``: only at chunk boundaries and the end), which bounds
    what a kill loses. ``storage_options``: options of a store URL's store (``--storage-option``).
    Returns the rows added, the rows the buffer holds, the episodes completed
    and their mean return.
    """
    if max_size is not None and max_size <= 0:
        raise ConfigError(f"--max-size: got {max_size}, expected a positive number of rows")
    if commit_every_seconds is not None and commit_every_seconds <= 0:
        raise ConfigError(
            f"--commit-every: got {commit_every_seconds}, expected a positive number of seconds"
        )
    env_cfg, obs_norm = EnvConfig(name=env_name, num_envs=num_envs), None
    env = make_environment(env_cfg, seed=seed)
    if policy == "random":
        actor = uniform_policy_like(build_actor(env, ModelConfig()))
    else:
        actor, obs_norm = gym_policy_for(policy, env_name, env_cfg)
    with torch.no_grad():
        probe = actor(env.fake_tensordict().reshape(-1)[:1])
    buf_cfg = BufferConfig(
        max_size=max_size,
        cache=None,
        flush_every_seconds=commit_every_seconds,
        storage_options=dict(storage_options or {}),
    )
    if append:
        storage = open_storage(buffer, mode="r+", config=buf_cfg)
        try:
            _check_same_steps(storage, probe, buffer, env_name)
        except BaseException:
            storage.close()
            raise
    else:
        storage = create_storage(
            buffer, config=buf_cfg, hint="add to it with --append, or choose another --buffer"
        )
    rb = TensorDictReplayBuffer(storage=storage)
    offset = next_trajectory_id(storage)
    episode_returns: list[float] = []

    def postproc(batch: TensorDictBase) -> TensorDictBase:
        batch = batch.reshape(-1)
        batch[TRAJ_KEY] = batch[TRAJ_KEY] + offset
        return batch

    def record(batch: TensorDictBase) -> None:
        done = batch["next", "done"].reshape(-1)
        episode_returns.extend(batch["next", "episode_reward"].reshape(-1)[done].tolist())

    collector = Collector(
        lambda: make_environment(env_cfg, seed=seed, obs_norm=obs_norm),
        actor,
        frames_per_batch=min(frames_per_batch, frames),
        total_frames=frames,
        replay_buffer=rb,
        postproc=postproc,
        post_collect_hook=record,
        auto_register_policy_transforms=False,
    )
    start = rb.write_count
    with tqdm(total=frames, disable=not progress, unit="frames") as bar:
        for _ in collector:
            bar.update(rb.write_count - start - bar.n)
    written = rb.write_count - start
    collector.shutdown()
    storage.flush()
    storage.close()
    mean = sum(episode_returns) / len(episode_returns) if episode_returns else float("nan")
    return {
        "rows added": written,
        "rows in buffer": len(storage),
        "episodes": len(episode_returns),
        "mean return": mean,
    }


def _check_same_steps(storage, probe: TensorDictBase, buffer: str | Path, env_name: str) -> None:
    """Refuse to append steps whose observation or action differ in dtype or shape from the
    stored ones (a store holds one environment's steps)."""
    if len(storage) == 0:
        return
    stored = storage[0:1]
    for key in _CHECKED_KEYS:
        if key not in stored or key not in probe:
            continue
        have, new = stored[key], probe[key]
        if have.dtype != new.dtype or have.shape[1:] != new.shape[1:]:
            raise BufferPathError(
                f"buffer {str(buffer)!r} holds {key} {_spec(have)} steps; --env {env_name} gives "
                f"{key} {_spec(new)}: collect it into another --buffer"
            )


def _spec(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape[1:])}"
