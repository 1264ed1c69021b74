"""The ``gym`` task: any Gymnasium id as a TorchRL environment, with MLP policy and value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.envs import EnvBase
from zarrl.engine.config import ConfigError, EnvConfig, ModelConfig
from zarrl.engine.models import build_actor, build_value
from zarrl.engine.registry import episode_step_limit, make_environment, observation_norm_state
from zarrl.engine.tasks.base import register_task

__all__ = ["GymTask"]


@register_task("gym")
class GymTask:
    """``env.name`` a Gymnasium id (``env.options`` unused). Observation statistics, when
    ``env.normalize_obs`` is set, are computed once by the first environment and shared by every
    later one (collector, evaluation, a resumed run: they are part of :meth:`state_dict`)."""

    provides: frozenset[str] = frozenset()

    def __init__(self, env: EnvConfig, model: ModelConfig, *, seed: int = 0) -> None:
        if env.options:
            raise ConfigError(
                f"env.options: got {dict(env.options)!r}, expected none for the 'gym' task "
                "(its settings are env.name, env.num_envs, env.normalize_obs, "
                "env.max_episode_steps)"
            )
        self.env_config, self.model_config = env, model
        self.description = env.name
        self.max_episode_steps = episode_step_limit(env)
        self._obs_norm: dict[str, torch.Tensor] | None = None
        self._spec_env: EnvBase | None = None

    def make_env(self, *, seed: int, num_envs: int | None = None) -> EnvBase:
        env = make_environment(
            self.env_config, seed=seed, num_envs=num_envs, obs_norm=self._obs_norm
        )
        if self._obs_norm is None:
            self._obs_norm = observation_norm_state(env)
        if self._spec_env is None:
            self._spec_env = env
        return env

    def _specs(self) -> EnvBase:
        return self._spec_env if self._spec_env is not None else self.make_env(seed=0)

    def _initialized(self, module: nn.Module) -> nn.Module:
        """``module`` with its lazy shapes set by one call on a fake step of the env."""
        with torch.no_grad():
            module(self._specs().fake_tensordict().reshape(-1)[:1])
        return module

    def build_actor(self) -> TensorDictModuleBase:
        return self._initialized(build_actor(self._specs(), self.model_config))

    def build_value(self) -> TensorDictModuleBase:
        return self._initialized(build_value(self._specs(), self.model_config))

    def build_prior(self) -> TensorDictModuleBase:
        raise ConfigError(f"the 'gym' task ({self.description}) has no prior policy")

    def metrics(self, actor: nn.Module, loss: nn.Module, *, reference: str) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"obs_norm": self._obs_norm}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._obs_norm = state.get("obs_norm")
