"""Small actors, value networks and hand-built sub-trajectory batches for the loss tests."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor, TanhNormal
from torchrl.modules.distributions import OneHotCategorical


def discrete_actor(
    obs_dim: int, n_actions: int, *, one_hot: bool = False, seed: int = 0, dtype=torch.float64
):
    torch.manual_seed(seed)
    net = MLP(in_features=obs_dim, out_features=n_actions, num_cells=[16], activation_class=nn.Tanh)
    net = net.to(dtype)
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["logits"])
    dist = OneHotCategorical if one_hot else torch.distributions.Categorical
    return ProbabilisticActor(
        module, in_keys=["logits"], distribution_class=dist, return_log_prob=True
    )


def continuous_actor(obs_dim: int, act_dim: int, *, seed: int = 0, dtype=torch.float64):
    torch.manual_seed(seed)
    net = nn.Sequential(
        MLP(
            in_features=obs_dim, out_features=2 * act_dim, num_cells=[16], activation_class=nn.Tanh
        ),
        NormalParamExtractor(),
    ).to(dtype)
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        module, in_keys=["loc", "scale"], distribution_class=TanhNormal, return_log_prob=True
    )


def value_net(obs_dim: int, *, seed: int = 1, dtype=torch.float64):
    torch.manual_seed(seed)
    net = MLP(in_features=obs_dim, out_features=1, num_cells=[16], activation_class=nn.Tanh).to(
        dtype
    )
    return TensorDictModule(net, in_keys=["observation"], out_keys=["state_value"])


def trajectory_batch(
    B: int = 5,
    T: int = 6,
    obs_dim: int = 3,
    n_actions: int = 4,
    *,
    seed: int = 0,
    lengths=None,
    one_hot: bool = False,
    continuous: int = 0,
    dtype=torch.float64,
    terminal_only_reward: bool = True,
) -> TensorDict:
    """Whole random trajectories in rows of a [B, T] batch, padded after each one's end."""
    g = torch.Generator().manual_seed(seed)
    if lengths is None:
        lengths = torch.randint(2, T + 1, (B,), generator=g)
    lengths = torch.as_tensor(lengths)
    t = torch.arange(T)
    valid = t[None, :] < lengths[:, None]
    last = t[None, :] == (lengths[:, None] - 1)
    obs = torch.randn(B, T + 1, obs_dim, generator=g, dtype=dtype)
    if continuous:
        action = torch.rand(B, T, continuous, generator=g, dtype=dtype) * 1.8 - 0.9
    else:
        action = torch.randint(n_actions, (B, T), generator=g)
        if one_hot:
            action = nn.functional.one_hot(action, n_actions)
    reward = torch.randn(B, T, 1, generator=g, dtype=dtype)
    if terminal_only_reward:
        reward = torch.where(last[..., None], reward, torch.zeros_like(reward))
    is_init = torch.zeros(B, T, 1, dtype=torch.bool)
    is_init[:, 0] = True
    return TensorDict(
        {
            "observation": obs[:, :-1],
            "action": action,
            "is_init": is_init,
            "action_log_prob": -torch.rand(B, T, generator=g, dtype=dtype) * 2,
            "collector": {"mask": valid},
            "next": {
                "observation": obs[:, 1:],
                "reward": reward,
                "terminated": last[..., None],
                "truncated": torch.zeros(B, T, 1, dtype=torch.bool),
                "done": last[..., None],
            },
        },
        batch_size=[B, T],
    )
