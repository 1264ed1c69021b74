"""``DiffusionSamplerEnv``: the GMM task's diffusion sampler as a batched TorchRL environment.

State ``(x_t, t)``: ``observation`` f32 ``[N, 2]`` (x_t, starting at 0) and ``time`` f32 ``[N, 1]``
(t = i/T in [0, 1]). Action ``action`` f32 ``[N, 2]``: the next point. Transitions are deterministic
given the action; reward ``log r(x_T)`` (nats) at the last step, 0 before; done at step T = 100.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from .mixtures import log_reward as gmm_log_reward
from .policy import NUM_STEPS


class DiffusionSamplerEnv(EnvBase):
    """N diffusion-sampling trajectories advanced in one call.

    Args:
        num_envs: batch size N.
        num_steps: T (episode length; time advances by 1/T per step).
        log_reward: terminal log-reward ``[N, 2] -> [N]`` (default: the GMM task's log g₉ − log p₂₅).
        device: torch device of every tensor.
    """

    batch_locked = True

    def __init__(
        self,
        num_envs: int = 1,
        *,
        num_steps: int = NUM_STEPS,
        log_reward: Callable[[torch.Tensor], torch.Tensor] = gmm_log_reward,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.num_steps = int(num_steps)
        self.log_reward = log_reward
        n = num_envs
        self.observation_spec = Composite(
            observation=Unbounded(shape=(n, 2), dtype=torch.float32, device=self.device),
            time=Bounded(0.0, 1.0, shape=(n, 1), dtype=torch.float32, device=self.device),
            shape=(n,),
            device=self.device,
        )
        self.action_spec = Unbounded(shape=(n, 2), dtype=torch.float32, device=self.device)
        self.reward_spec = Unbounded(shape=(n, 1), dtype=torch.float32, device=self.device)
        self.done_spec = Composite(
            done=Categorical(2, shape=(n, 1), dtype=torch.bool, device=self.device),
            terminated=Categorical(2, shape=(n, 1), dtype=torch.bool, device=self.device),
            shape=(n,),
            device=self.device,
        )

    def _reset(self, tensordict: TensorDictBase | None, **kwargs) -> TensorDictBase:
        n = self.batch_size
        x = torch.zeros(*n, 2, device=self.device)
        t = torch.zeros(*n, 1, device=self.device)
        if tensordict is not None and "_reset" in tensordict:
            keep = ~tensordict.get("_reset").reshape(*n, 1)
            if "observation" in tensordict and "time" in tensordict:
                x = torch.where(keep, tensordict.get("observation"), x)
                t = torch.where(keep, tensordict.get("time"), t)
        done = torch.zeros(*n, 1, dtype=torch.bool, device=self.device)
        return TensorDict(
            {"observation": x, "time": t, "done": done, "terminated": done.clone()},
            batch_size=n,
            device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action")
        if action.shape != (*self.batch_size, 2):
            raise ValueError(
                f"action must have shape {(*self.batch_size, 2)}, got {tuple(action.shape)}"
            )
        step = torch.round(tensordict.get("time") * self.num_steps) + 1  # [N, 1]
        done = step >= self.num_steps
        reward = torch.where(done, self.log_reward(action).unsqueeze(-1), torch.zeros_like(step))
        return TensorDict(
            {
                "observation": action.clone(),
                "time": (step / self.num_steps).clamp_max(1.0),
                "reward": reward,
                "done": done,
                "terminated": done.clone(),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _set_seed(self, seed: int | None) -> None:
        # transitions are deterministic given the action; randomness lives in the policy
        self._seed = seed
