"""``make_env``: Gymnasium environments as TorchRL environments with the usual transforms.

Any registered Gymnasium id works (CartPole-v1, Acrobot-v1, Pendulum-v1 out of the box; MuJoCo ids
such as HalfCheetah-v5 with the optional ``mujoco`` extra). ``num_envs > 1`` runs a Gymnasium vector
environment (auto-reset disabled: TorchRL resets finished sub-environments itself), batch ``[num_envs]``.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import gymnasium as gym
import torch
from torchrl.envs import (
    Compose,
    DoubleToFloat,
    GymEnv,
    GymWrapper,
    ObservationNorm,
    RewardSum,
    StepCounter,
    TransformedEnv,
)


def _check_name(name: str) -> None:
    if name not in gym.registry:
        close = sorted(
            k for k in gym.registry if k.split("-")[0].lower() == name.split("-")[0].lower()
        )
        hint = f"; registered versions: {close}" if close else ""
        raise ValueError(f"unknown Gymnasium environment id {name!r}{hint}")


def make_base_env(
    name: str,
    num_envs: int = 1,
    device: torch.device | str = "cpu",
    vectorization: Literal["sync", "async"] = "sync",
    **gym_kwargs,
):
    """The bare TorchRL env of a Gymnasium id (batch ``[]`` or ``[num_envs]``), no transforms."""
    _check_name(name)
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if num_envs == 1:
        return GymEnv(name, device=device, **gym_kwargs)
    if vectorization not in ("sync", "async"):
        raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
    vector_cls = gym.vector.SyncVectorEnv if vectorization == "sync" else gym.vector.AsyncVectorEnv
    vector_env = vector_cls(
        [partial(gym.make, name, **gym_kwargs)] * num_envs,
        autoreset_mode=gym.vector.AutoresetMode.DISABLED,
    )
    return GymWrapper(vector_env, device=device)


def make_env(
    name: str,
    num_envs: int = 1,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    normalize_obs: bool = False,
    *,
    obs_norm_steps: int = 1000,
    max_episode_steps: int | None = None,
    vectorization: Literal["sync", "async"] = "sync",
    **gym_kwargs,
) -> TransformedEnv:
    """A Gymnasium environment as a TorchRL ``TransformedEnv``.

    Transforms: ``StepCounter`` (``step_count``, and ``truncated`` at ``max_episode_steps`` when
    given), ``RewardSum`` (``episode_reward``), ``DoubleToFloat`` (float64 entries to float32), and with
    ``normalize_obs`` an ``ObservationNorm`` on ``observation`` whose statistics come from
    ``obs_norm_steps`` random-action steps of this env (after seeding, so reproducible).

    Args:
        name: a registered Gymnasium id, e.g. ``"CartPole-v1"``.
        num_envs: number of sub-environments of a Gymnasium vector env (batch ``[num_envs]``).
        seed: seeds the environment (sub-environment ``i`` gets ``seed + i``) and the random actions
            used for the normalization statistics; ``None`` leaves it unseeded.
        device: device of the produced tensors.
        normalize_obs: add an ``ObservationNorm`` initialized from random-action statistics.
        vectorization: ``"sync"`` (one process, default) or ``"async"`` (one subprocess per env).
        **gym_kwargs: passed to ``gymnasium.make``.
    """
    base = make_base_env(name, num_envs, device, vectorization, **gym_kwargs)
    env = TransformedEnv(
        base,
        Compose(StepCounter(max_steps=max_episode_steps), RewardSum(), DoubleToFloat()),
    )
    if seed is not None:
        env.set_seed(seed)
    if normalize_obs:
        if "observation" not in env.observation_spec:
            raise ValueError(
                f"normalize_obs needs an 'observation' entry; {name} has "
                f"{sorted(env.observation_spec.keys())}"
            )
        norm = ObservationNorm(in_keys=["observation"], standard_normal=True)
        env.append_transform(norm)
        rng_state = torch.get_rng_state()
        if seed is not None:
            torch.manual_seed(seed)
        batch_dims = len(env.batch_size)
        norm.init_stats(
            num_iter=obs_norm_steps,
            reduce_dim=tuple(range(batch_dims + 1)),
            cat_dim=batch_dims,
        )
        torch.set_rng_state(rng_state)
        norm.scale.clamp_(min=1e-6)
        if seed is not None:
            env.set_seed(seed)
    return env
