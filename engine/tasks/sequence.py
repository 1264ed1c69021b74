"""The ``sequence`` task: the exactly solvable token-appending tree MDP with a fixed prior.

A synthetic tree (:func:`zarrl.envs.make_synthetic_tree_env`: ``vocab_size`` tokens, sequences of
at most ``max_length``, an optional ``end_token``, random terminal rewards in nats) with a random
prior policy (:func:`zarrl.envs.random_log_policy`). Policy, value and prior are tables over the
tree's node ids. Every loss runs on it: RTB and KL-regularized REINFORCE toward
prior·exp(β·reward), Trust-PCL with the prior as its fixed reference (``loss.reference: prior``)
or a lagged one, PCL toward the entropy-regularized optimum. :meth:`SequenceTask.metrics` reports
``tv_to_optimum``: the total variation between the learned policy's distribution over finished
sequences and the exact optimum of the loss's objective (soft value iteration over the tree).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.envs import EnvBase, RewardSum, StepCounter, TransformedEnv
from zarrl.algorithms import KLReinforceLoss, PCLLoss, RTBLoss, TrustPCLLoss
from zarrl.engine.config import EnvConfig, ModelConfig
from zarrl.engine.models import build_tabular_actor, build_tabular_value
from zarrl.engine.tasks.base import register_task, task_options
from zarrl.envs import (
    SoftOptimalSolution,
    make_synthetic_tree_env,
    random_log_policy,
    solve_soft_optimal,
    terminal_log_prob,
)

__all__ = ["SequenceTask", "optimum_of"]

DEFAULTS: dict[str, Any] = {
    "vocab_size": 3,
    "max_length": 3,
    "end_token": None,
    "reward_seed": 7,
    "reward_scale": 1.0,
    "prior_seed": 3,
    "prior_temperature": 0.7,
}


def optimum_of(
    loss: nn.Module, reference: str, tree, reward: torch.Tensor, prior_log: torch.Tensor
) -> SoftOptimalSolution | None:
    """The exact optimum of ``loss``'s objective on the tree (``None`` where it has none that
    the tree solver states: a discount below 1 with a terminal-only reward still has one, a
    lagged reference without entropy does not).

    RTB and KL-REINFORCE: prior·exp(β·R) (λ = 1/β, no entropy). Trust-PCL: entropy τ_H and KL
    λ to the fixed prior (``reference == "prior"``); with a lagged reference the KL term vanishes
    at the fixed point, leaving the τ_H-regularized optimum. PCL: the τ_H-regularized optimum.
    """
    if isinstance(loss, (RTBLoss, KLReinforceLoss)):
        return solve_soft_optimal(tree, reward, prior_log, kl_coef=1.0 / float(loss.beta))
    if isinstance(loss, TrustPCLLoss):  # PCLLoss included
        tau = float(loss.entropy_coef)
        gamma = float(loss.gamma)
        if not isinstance(loss, PCLLoss) and reference == "prior":
            lam = float(loss.kl_coef)
            return solve_soft_optimal(
                tree, reward, prior_log, entropy_coef=tau, kl_coef=lam, gamma=gamma
            )
        if tau > 0:
            return solve_soft_optimal(tree, reward, entropy_coef=tau, kl_coef=0.0, gamma=gamma)
    return None


@register_task("sequence")
class SequenceTask:
    """``env.options``: ``vocab_size`` (3), ``max_length`` (3), ``end_token`` (null),
    ``reward_seed`` (7), ``reward_scale`` (1.0, nats), ``prior_seed`` (3), ``prior_temperature``
    (0.7: the prior's logits are Gaussian × temperature). ``env.name`` is a display name; the
    ``model`` section is unused (the networks are tables over the tree's nodes)."""

    provides: frozenset[str] = frozenset({"prior"})

    def __init__(self, env: EnvConfig, model: ModelConfig, *, seed: int = 0) -> None:
        opts = task_options("sequence", env.options, DEFAULTS)
        self.options = opts
        self.num_envs = env.num_envs
        probe, self.tree, self.reward = self._tree_env(())
        if not probe.with_node:
            raise ValueError(
                f"env.options: a tree of vocab_size {opts['vocab_size']} and max_length "
                f"{opts['max_length']} has {probe.num_nodes} nodes, too many to tabulate"
            )
        self.prior_log = random_log_policy(
            self.tree, seed=opts["prior_seed"], temperature=opts["prior_temperature"]
        )
        self.description = (
            f"{env.name} (sequence tree: V={opts['vocab_size']}, L={opts['max_length']}, "
            f"{int(self.tree.terminal.sum())} finished sequences)"
        )
        self.max_episode_steps = int(opts["max_length"])

    def _tree_env(self, batch_size: tuple[int, ...]):
        """``(env, tree, terminal reward)`` of the configured tree (``make_synthetic_tree_env``)."""
        opts = self.options
        return make_synthetic_tree_env(
            opts["vocab_size"],
            opts["max_length"],
            end_token=opts["end_token"],
            seed=opts["reward_seed"],
            reward_scale=opts["reward_scale"],
            batch_size=batch_size,
        )

    def make_env(self, *, seed: int, num_envs: int | None = None) -> EnvBase:
        n = self.num_envs if num_envs is None else num_envs
        env, _, _ = self._tree_env((n,) if n > 1 else ())
        env = TransformedEnv(env, StepCounter())
        env.append_transform(RewardSum())
        env.set_seed(seed)
        return env

    def build_actor(self) -> TensorDictModuleBase:
        return build_tabular_actor(self.tree.num_nodes, self.tree.vocab_size)

    def build_value(self) -> TensorDictModuleBase:
        return build_tabular_value(self.tree.num_nodes)

    def build_prior(self) -> TensorDictModuleBase:
        prior = build_tabular_actor(self.tree.num_nodes, self.tree.vocab_size, init=self.prior_log)
        prior.requires_grad_(False)
        return prior

    @torch.no_grad()
    def learned_log_policy(self, actor: nn.Module) -> torch.Tensor:
        """``[N, V]`` float64 log π(a|s) of ``actor`` at every node of the tree."""
        nodes = torch.arange(self.tree.num_nodes)
        device = next(actor.parameters()).device
        td = actor(TensorDict({"node": nodes.to(device)}, batch_size=[nodes.numel()]))
        return td["logits"].to("cpu", torch.float64).log_softmax(-1)

    def metrics(self, actor: nn.Module, loss: nn.Module, *, reference: str) -> dict[str, float]:
        """``tv_to_optimum`` (see the module docstring), when the loss's objective has an exact
        optimum on the tree."""
        exact = optimum_of(loss, reference, self.tree, self.reward, self.prior_log)
        if exact is None:
            return {}
        learned = terminal_log_prob(self.tree, self.learned_log_policy(actor)).exp()
        terminal = self.tree.terminal
        tv = 0.5 * float((learned - exact.terminal_prob)[terminal].abs().sum())
        return {"tv_to_optimum": tv}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None
