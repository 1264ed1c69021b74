"""Stand-alone collection into a Zarr replay buffer (``zarrl collect``) and loading a trained policy
back from a run folder (for collection and evaluation)."""

from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector
from torchrl.data import TensorDictReplayBuffer
from torchrl.modules import ProbabilisticActor
from tqdm.auto import tqdm
from zarrl.engine.checkpoint import latest_checkpoint, load_checkpoint
from zarrl.engine.config import BufferConfig, Config, EnvConfig, ModelConfig
from zarrl.engine.models import build_actor
from zarrl.engine.policies import TRAJ_KEY, next_trajectory_id, uniform_policy_like
from zarrl.engine.registry import create_storage, make_environment, open_storage

__all__ = ["collect", "load_policy"]


def load_policy(
    run_dir: str | Path, env=None, checkpoint: str = "last"
) -> tuple[ProbabilisticActor, Config, dict | None]:
    """The trained policy of a run folder (CPU), the run's config and its observation
    normalization statistics (``None`` without ``env.normalize_obs``).

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
    if env is None:
        env = make_environment(
            config.env, seed=config.run.seed, num_envs=1, obs_norm=state["extra"].get("obs_norm")
        )
    actor = build_actor(env, config.model)
    with torch.no_grad():
        actor(env.fake_tensordict().reshape(-1)[:1])
    actor.load_state_dict(state["modules"]["actor"])
    return actor, config, state["extra"].get("obs_norm")


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
    progress: bool = True,
) -> dict[str, int | float]:
    """Collect ``frames`` environment steps into the Zarr buffer at ``buffer``.

    ``policy`` is ``"random"`` (uniform actions) or a run folder whose last checkpoint supplies the
    policy (sampled, not greedy). A new buffer is created unless ``append`` (then the store must
    exist and new trajectory ids continue after the stored ones). Returns the number of rows written,
    of episodes completed and their mean return.
    """
    env_cfg, obs_norm = EnvConfig(name=env_name, num_envs=num_envs), None
    if policy == "random":
        env = make_environment(env_cfg, seed=seed)
        actor = uniform_policy_like(build_actor(env, ModelConfig()))
        with torch.no_grad():
            actor(env.fake_tensordict().reshape(-1)[:1])
    else:
        actor, run_config, obs_norm = load_policy(policy)
        env_cfg.normalize_obs = run_config.env.normalize_obs
    buf_cfg = BufferConfig(max_size=max_size, cache=None)
    if append:
        storage = open_storage(buffer, mode="r+", config=buf_cfg)
    else:
        storage = create_storage(buffer, config=buf_cfg)
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
    return {"rows": written, "episodes": len(episode_returns), "mean_return": mean}
