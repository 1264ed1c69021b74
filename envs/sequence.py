"""A batched token-appending sequence environment (TorchRL ``EnvBase``).

A state is a prefix of tokens; an action appends one token; the episode ends at ``max_length`` tokens
or right after ``end_token``. The reward is 0 until the last step, where it is
``reward_fn(tokens, length)`` (nats, e.g. log r(x) for a generative task).

Observations (all int64): ``"tokens"`` ``[*B, L]`` (the prefix, padded with ``vocab_size``),
``"length"`` ``[*B]`` and, when the tree is small enough to enumerate, ``"node"`` ``[*B]`` — the
prefix's id in :class:`~zarrl.envs.tree_solver.SequenceTree` (for tabular policies and exact
solutions). The action is a token id ``[*B]`` (``Categorical(n=vocab_size)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase
from zarrl.envs.tree_solver import (
    MAX_NODES,
    SequenceTree,
    TabularReward,
    check_tree_shape,
    level_offsets,
    synthetic_tree_rewards,
)

__all__ = ["SequenceEnv", "make_synthetic_tree_env"]

RewardFn = Callable[[Tensor, Tensor], Tensor]


class SequenceEnv(EnvBase):
    """Token-appending sequence MDP with a terminal reward.

    Args:
        vocab_size: number of tokens V.
        max_length: maximum number of tokens L.
        reward_fn: ``reward_fn(tokens [M, L] int64 padded with V, length [M] int64) -> [M]`` reward in
            nats of finished sequences; called once per step on the sequences that end there.
        end_token: optional token that ends the sequence (it is kept in ``tokens``).
        batch_size: number of sequences advanced in one call (``()`` or ``(N,)``).
        device: where the tensors live.
        with_node: write the ``"node"`` id (default: when the tree has ≤ 5e6 nodes).
    """

    batch_locked = True

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        reward_fn: RewardFn,
        *,
        end_token: int | None = None,
        batch_size: Sequence[int] | torch.Size = (),
        device: torch.device | str | None = None,
        with_node: bool | None = None,
    ):
        check_tree_shape(vocab_size, max_length, end_token)
        if not callable(reward_fn):
            raise TypeError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
        batch_size = torch.Size(batch_size)
        if len(batch_size) > 1:
            raise ValueError(f"batch_size must be () or (N,), got {tuple(batch_size)}")
        super().__init__(device=device, batch_size=batch_size)
        self.vocab_size, self.max_length, self.end_token = vocab_size, max_length, end_token
        self.reward_fn = reward_fn
        offsets = level_offsets(vocab_size, max_length)
        num_nodes = int(offsets[-1])
        if with_node is None:
            with_node = num_nodes <= MAX_NODES
        elif with_node and num_nodes > MAX_NODES:
            raise ValueError(f"with_node=True but the tree has {num_nodes} > {MAX_NODES} nodes")
        self.with_node = with_node
        self.num_nodes = num_nodes
        self._offsets = offsets.to(self.device)
        self._make_specs()

    def _make_specs(self) -> None:
        B, L, V = self.batch_size, self.max_length, self.vocab_size
        obs = {
            "tokens": Categorical(n=V + 1, shape=(*B, L), dtype=torch.long, device=self.device),
            "length": Categorical(n=L + 1, shape=B, dtype=torch.long, device=self.device),
        }
        if self.with_node:
            obs["node"] = Categorical(
                n=self.num_nodes, shape=B, dtype=torch.long, device=self.device
            )
        self.observation_spec = Composite(obs, shape=B, device=self.device)
        self.state_spec = self.observation_spec.clone()
        self.action_spec = Categorical(n=V, shape=B, dtype=torch.long, device=self.device)
        self.reward_spec = Unbounded(shape=(*B, 1), dtype=torch.float32, device=self.device)

    def _initial(self, shape: torch.Size) -> dict[str, Tensor]:
        out = {
            "tokens": torch.full(
                (*shape, self.max_length), self.vocab_size, dtype=torch.long, device=self.device
            ),
            "length": torch.zeros(shape, dtype=torch.long, device=self.device),
        }
        if self.with_node:
            out["node"] = torch.zeros(shape, dtype=torch.long, device=self.device)
        return out

    def _reset(self, tensordict: TensorDictBase | None, **kwargs) -> TensorDictBase:
        fresh = self._initial(self.batch_size)
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if reset is not None and "tokens" in tensordict:
            mask = reset.reshape(self.batch_size)
            for key, new in fresh.items():
                old = tensordict.get(key)
                m = mask.reshape(*mask.shape, *([1] * (new.ndim - mask.ndim)))
                fresh[key] = torch.where(m, new, old)
        return TensorDict(fresh, batch_size=self.batch_size, device=self.device)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        tokens = tensordict.get("tokens")
        length = tensordict.get("length")
        action = tensordict.get("action").to(torch.long)
        if action.shape != length.shape:
            raise ValueError(
                f"action has shape {tuple(action.shape)}, expected {tuple(length.shape)} (token ids)"
            )
        if ((action < 0) | (action >= self.vocab_size)).any():
            raise ValueError(f"action must hold token ids in [0, {self.vocab_size})")
        if (length >= self.max_length).any():
            raise ValueError("step called on a finished sequence; reset it first")
        pos = torch.arange(self.max_length, device=self.device)
        put = pos == length[..., None]
        new_tokens = torch.where(put, action[..., None], tokens)
        new_length = length + 1
        terminated = new_length == self.max_length
        if self.end_token is not None:
            terminated = terminated | (action == self.end_token)
        reward = torch.zeros(length.shape, dtype=torch.float32, device=self.device)
        if terminated.any():
            finished = terminated.reshape(-1).nonzero().squeeze(1)
            value = self.reward_fn(
                new_tokens.reshape(-1, self.max_length)[finished], new_length.reshape(-1)[finished]
            )
            value = torch.as_tensor(value, device=self.device).to(torch.float32)
            if value.shape != finished.shape:
                raise ValueError(
                    f"reward_fn returned shape {tuple(value.shape)}, expected {tuple(finished.shape)}"
                )
            reward = reward.reshape(-1).index_put((finished,), value).reshape(length.shape)
        out = {
            "tokens": new_tokens,
            "length": new_length,
            "reward": reward[..., None],
            "done": terminated[..., None],
            "terminated": terminated[..., None].clone(),
        }
        if self.with_node:
            node = tensordict.get("node")
            local = node - self._offsets[length]
            out["node"] = self._offsets[new_length] + local * self.vocab_size + action
        return TensorDict(out, batch_size=tensordict.batch_size, device=self.device)

    def _set_seed(self, seed: int | None) -> None:
        # the dynamics are deterministic; the generator only serves random actions
        self.rng = torch.Generator(device=self.device)
        if seed is not None:
            self.rng.manual_seed(seed)


def make_synthetic_tree_env(
    vocab_size: int = 4,
    max_length: int = 6,
    *,
    end_token: int | None = None,
    seed: int = 0,
    reward_scale: float = 1.0,
    batch_size: Sequence[int] = (),
    device: torch.device | str | None = None,
) -> tuple[SequenceEnv, SequenceTree, Tensor]:
    """A synthetic tree MDP with random terminal rewards (the PCL authors' test bed).

    Returns:
        ``(env, tree, terminal_reward)``: the environment, its enumerated tree, and the ``[N]`` float64
        table of terminal rewards (nats) the environment pays, ready for
        :func:`~zarrl.envs.tree_solver.solve_soft_optimal`.
    """
    tree = SequenceTree(vocab_size, max_length, end_token)
    table = synthetic_tree_rewards(tree, seed=seed, scale=reward_scale)
    env = SequenceEnv(
        vocab_size,
        max_length,
        TabularReward(tree, table),
        end_token=end_token,
        batch_size=batch_size,
        device=device,
    )
    return env, tree, table
