"""Policy evaluation: run whole episodes in an environment and report their returns."""

from __future__ import annotations

import torch
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type

__all__ = ["evaluate_policy"]


@torch.no_grad()
def evaluate_policy(
    env: EnvBase,
    policy: TensorDictModuleBase,
    episodes: int,
    *,
    deterministic: bool = True,
    max_steps: int = 1_000,
) -> torch.Tensor:
    """Returns ``[episodes]`` (float64) undiscounted returns of complete episodes.

    A batched env (``[E]`` sub-envs) plays ``E`` episodes per rollout of ``max_steps`` steps;
    ``max_steps`` must cover the env's time limit (episodes still running after it are dropped
    and played again). ``deterministic`` takes the mode of the policy's distribution.
    """
    exploration = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
    returns: list[torch.Tensor] = []
    found, attempts = 0, 0
    with set_exploration_type(exploration):
        while found < episodes:
            rollout = env.rollout(
                max_steps, policy, break_when_any_done=False, auto_cast_to_device=True
            )
            if not env.batch_size:
                rollout = rollout.unsqueeze(0)
            rollout = rollout.reshape(-1, rollout.shape[-1])  # [E, T]
            reward = rollout["next", "reward"].reshape(*rollout.shape).to(torch.float64)
            done = rollout["next", "done"].reshape(*rollout.shape)
            # rewards up to (and including) each sub-env's first done step
            alive = (done.cumsum(-1) - done.to(torch.int64)) == 0
            finished = done.any(-1)
            ret = (reward * alive).sum(-1)[finished]
            returns.append(ret)
            found += ret.numel()
            attempts += 1
            if attempts > 10 and found == 0:
                raise RuntimeError(
                    f"no episode ended within {max_steps} steps; raise max_steps to the time limit"
                )
    return torch.cat(returns)[:episodes]
