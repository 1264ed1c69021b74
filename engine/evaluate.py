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
    max_steps: int = 100_000,
) -> torch.Tensor:
    """Returns ``[episodes]`` (float64) of undiscounted episode returns.

    Episodes run one after another in ``env`` (a batched env contributes one episode per
    sub-env per rollout). ``deterministic`` takes the mode of the policy's distribution.
    """
    exploration = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
    returns: list[torch.Tensor] = []
    n_parallel = max(int(torch.Size(env.batch_size).numel()), 1)
    with set_exploration_type(exploration):
        while sum(r.numel() for r in returns) < episodes:
            rollout = env.rollout(
                max_steps,
                policy,
                break_when_any_done=False,
                break_when_all_done=True,
                auto_cast_to_device=True,
            )
            reward = rollout["next", "reward"].to(torch.float64)  # [*E, T, 1]
            done = rollout["next", "done"]
            # keep the reward up to (and including) each sub-env's first done step
            first_done = done.cumsum(-2) - done.to(torch.int64)
            alive = first_done == 0
            ret = (reward * alive).sum(dim=(-2, -1))
            returns.append(ret.reshape(n_parallel))
    return torch.cat(returns)[:episodes]
