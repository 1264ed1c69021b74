"""Policy and value networks built from an environment's specs.

Discrete actions (one-hot or categorical specs) get a categorical policy over logits; continuous
(box) actions get a tanh-squashed Gaussian with a state-independent learned log-std, as in the
Trust-PCL MuJoCo recipe. Both policies write ``action`` and ``action_log_prob`` (nats), the
behaviour log-probability that the collector stores with every step.
"""

from __future__ import annotations

import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torch.distributions import Categorical, OneHotCategorical
from torchrl.data import Categorical as CategoricalSpec
from torchrl.data import OneHot
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from zarrl.engine.config import ModelConfig

__all__ = [
    "StateIndependentScale",
    "TabularLogits",
    "build_actor",
    "build_tabular_actor",
    "build_tabular_value",
    "build_value",
    "observation_dim",
]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


class StateIndependentScale(nn.Module):
    """Split a network output ``[*B, A]`` into ``(loc, scale)`` with a learned, state-independent
    scale ``exp(log_std)`` of shape ``[A]``."""

    def __init__(self, action_dim: int, init_log_std: float = -0.5) -> None:
        super().__init__()
        self.log_std = nn.Parameter(torch.full((action_dim,), init_log_std))

    def forward(self, loc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return loc, self.log_std.clamp(-5.0, 2.0).exp().expand_as(loc)


def observation_dim(env) -> int:
    """Size of the flat ``observation`` vector of ``env``."""
    spec = env.observation_spec["observation"]
    return int(torch.Size(spec.shape[len(env.batch_size) :]).numel())


def _mlp(in_features: int, out_features: int, config: ModelConfig) -> MLP:
    return MLP(
        in_features=in_features,
        out_features=out_features,
        num_cells=list(config.hidden),
        activation_class=_ACTIVATIONS[config.activation],
    )


def build_actor(env, config: ModelConfig) -> ProbabilisticActor:
    """A stochastic policy reading ``observation`` and writing ``action`` and ``action_log_prob``."""
    spec = env.full_action_spec["action"]
    obs_dim = observation_dim(env)
    if isinstance(spec, (OneHot, CategoricalSpec)):
        n = int(spec.space.n)
        net = TensorDictModule(
            _mlp(obs_dim, n, config), in_keys=["observation"], out_keys=["logits"]
        )
        dist = OneHotCategorical if isinstance(spec, OneHot) else Categorical
        return ProbabilisticActor(
            net,
            in_keys=["logits"],
            out_keys=["action"],
            distribution_class=dist,
            return_log_prob=True,
            spec=spec,
        )
    action_dim = int(spec.shape[-1])
    body = nn.Sequential(_mlp(obs_dim, action_dim, config), StateIndependentScale(action_dim))
    net = TensorDictModule(body, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        net,
        in_keys=["loc", "scale"],
        out_keys=["action"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
        return_log_prob=True,
        spec=spec,
    )


def build_value(env, config: ModelConfig) -> ValueOperator:
    """A state-value network ``V(s)`` reading ``observation``, writing ``state_value`` ``[*B, 1]``."""
    return ValueOperator(
        _mlp(observation_dim(env), 1, config), in_keys=["observation"], out_keys=["state_value"]
    )


class TabularLogits(nn.Module):
    """One learnable row per state id: ``forward(node [*B]) -> weight[node]`` ``[*B, width]``.

    The policy table of an enumerable task (``width`` = number of actions: logits) or its value
    table (``width`` = 1).
    """

    def __init__(self, num_states: int, width: int, init: torch.Tensor | None = None) -> None:
        super().__init__()
        if init is not None and tuple(init.shape) != (num_states, width):
            raise ValueError(
                f"TabularLogits: init has shape {tuple(init.shape)}, expected "
                f"({num_states}, {width})"
            )
        weight = torch.zeros(num_states, width) if init is None else init.detach().clone().float()
        self.weight = nn.Parameter(weight)

    def forward(self, node: torch.Tensor) -> torch.Tensor:
        return self.weight[node]


def build_tabular_actor(
    num_states: int, num_actions: int, *, init: torch.Tensor | None = None, key: str = "node"
) -> ProbabilisticActor:
    """A categorical policy with one row of logits per state id read from ``key`` (``init``:
    ``[num_states, num_actions]`` starting logits, e.g. a prior's log-probabilities)."""
    net = TensorDictModule(
        TabularLogits(num_states, num_actions, init), in_keys=[key], out_keys=["logits"]
    )
    return ProbabilisticActor(
        net,
        in_keys=["logits"],
        out_keys=["action"],
        distribution_class=Categorical,
        return_log_prob=True,
    )


def build_tabular_value(num_states: int, *, key: str = "node") -> ValueOperator:
    """A value table ``V(s)`` ``[*B, 1]`` indexed by the state id read from ``key``."""
    return ValueOperator(TabularLogits(num_states, 1), in_keys=[key], out_keys=["state_value"])
