"""Exact soft-optimal (KL-regularized) policies on an enumerable token tree.

A :class:`SequenceTree` lists every prefix of a sequence MDP with vocabulary ``V`` and maximum length
``L`` (optionally stopped early by an end token): node ids follow level order, the node of prefix
``(a_0, …, a_{ℓ-1})`` being ``offset[ℓ] + Σ_j a_j·V^{ℓ-1-j}``, the same ids that
:class:`~zarrl.envs.sequence.SequenceEnv` writes under ``"node"``.

:func:`solve_soft_optimal` runs soft value iteration backwards over the levels for the objective
E[Σ γ^t (r_t − τ_H·log π − λ·(log π − log π̃))]:

    Q(s,a) = r(s,a) + γ·V(s')·[s' not terminal],
    V(s)   = τ·log Σ_a π̃(a|s)^{λ/τ}·exp(Q(s,a)/τ),     τ = τ_H + λ,
    log π*(a|s) = (λ/τ)·log π̃(a|s) + (Q(s,a) − V(s))/τ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "SequenceTree",
    "SoftOptimalSolution",
    "check_tree_shape",
    "level_offsets",
    "solve_soft_optimal",
    "synthetic_tree_rewards",
    "random_log_policy",
    "uniform_log_policy",
    "TabularReward",
    "edge_rewards",
    "terminal_log_prob",
]

MAX_NODES = 5_000_000


def check_tree_shape(vocab_size: int, max_length: int, end_token: int | None) -> None:
    """Raises ``ValueError`` naming the bad argument of a token tree."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if end_token is not None and not 0 <= end_token < vocab_size:
        raise ValueError(f"end_token must be in [0, {vocab_size}), got {end_token}")


def level_offsets(vocab_size: int, max_length: int) -> Tensor:
    """First node id of each prefix length: int64 ``[L + 2]`` (the last entry is the node count).

    Node ids number prefixes level by level; the child of node ``n`` at level ``l`` by token
    ``a`` is ``offsets[l + 1] + (n - offsets[l])·V + a``.
    """
    sizes = torch.tensor([vocab_size**level for level in range(max_length + 1)], dtype=torch.long)
    return torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])


class SequenceTree:
    """Every prefix of a token sequence MDP, in level order.

    Args:
        vocab_size: number of tokens V (≥ 2).
        max_length: maximum sequence length L (≥ 1).
        end_token: optional token id that ends a sequence early.

    Attributes (all on CPU):
        num_nodes: (V^{L+1} − 1)/(V − 1), including unreachable prefixes (those continuing after an
            end token), which are marked in ``reachable``.
        offsets: int64 ``[L + 2]`` first node id of each level.
        length: int64 ``[N]`` prefix length of each node.
        tokens: int64 ``[N, L]`` prefix tokens, padded with ``V``.
        reachable, terminal, internal: bool ``[N]``; terminal nodes end an episode; internal ones
            are reachable and not terminal.
        child: int64 ``[N, V]`` id of the child reached by each action (−1 at the last level).
    """

    def __init__(self, vocab_size: int, max_length: int, end_token: int | None = None):
        check_tree_shape(vocab_size, max_length, end_token)
        V, L = vocab_size, max_length
        offsets = level_offsets(V, L)
        sizes = offsets.diff().tolist()
        num_nodes = int(offsets[-1])
        if num_nodes > MAX_NODES:
            raise ValueError(
                f"a tree with vocab_size={V}, max_length={L} has {num_nodes} nodes, "
                f"more than the {MAX_NODES} that can be enumerated"
            )
        self.vocab_size, self.max_length, self.end_token = V, L, end_token
        self.num_nodes = num_nodes
        self.offsets = offsets
        length = torch.cat([torch.full((s,), lvl, dtype=torch.long) for lvl, s in enumerate(sizes)])
        tokens = torch.full((num_nodes, L), V, dtype=torch.long)
        for level in range(1, L + 1):
            local = torch.arange(sizes[level])
            digits = torch.stack(
                [(local // V ** (level - 1 - j)) % V for j in range(level)], dim=-1
            )
            tokens[self.offsets[level] : self.offsets[level + 1], :level] = digits
        self.length, self.tokens = length, tokens
        if end_token is None:
            reachable = torch.ones(num_nodes, dtype=torch.bool)
            ends_early = torch.zeros(num_nodes, dtype=torch.bool)
        else:
            is_end = tokens == end_token
            # an end token anywhere but the last position makes the prefix unreachable
            last_pos = (length - 1).clamp(min=0)
            ends_early = (length > 0) & is_end.gather(1, last_pos[:, None]).squeeze(1)
            before_last = torch.arange(L)[None, :] < (length[:, None] - 1)
            reachable = ~(is_end & before_last).any(1)
        self.reachable = reachable
        self.terminal = reachable & ((length == L) | ends_early)
        self.internal = reachable & ~self.terminal
        child = torch.full((num_nodes, V), -1, dtype=torch.long)
        for level in range(L):
            ids = torch.arange(self.offsets[level], self.offsets[level + 1])
            local = ids - self.offsets[level]
            child[ids] = self.offsets[level + 1] + local[:, None] * V + torch.arange(V)[None, :]
        self.child = child

    def node_index(self, tokens: Tensor, length: Tensor) -> Tensor:
        """Node ids ``[*B]`` of prefixes given as tokens ``[*B, L]`` (padded) and lengths ``[*B]``."""
        L, V = self.max_length, self.vocab_size
        pos = torch.arange(L, device=tokens.device)
        exponent = (length[..., None] - 1 - pos).clamp(min=0)
        place = torch.where(
            pos < length[..., None],
            torch.full_like(exponent, V).pow(exponent),
            torch.zeros_like(exponent),
        )
        digits = torch.where(pos < length[..., None], tokens, torch.zeros_like(tokens))
        return self.offsets.to(tokens.device)[length] + (digits * place).sum(-1)

    def terminal_paths(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All root-to-terminal paths.

        Returns:
            ``(nodes, actions, lengths, leaves)``: ``nodes`` and ``actions`` int64 ``[M, L]`` (the
            state visited and the token appended at each step, −1 as padding), ``lengths`` ``[M]``,
            ``leaves`` ``[M]`` the terminal node ids.
        """
        leaves = torch.nonzero(self.terminal).squeeze(1)
        lengths = self.length[leaves]
        actions = self.tokens[leaves].clone()
        pos = torch.arange(self.max_length)
        inside = pos[None, :] < lengths[:, None]
        nodes = torch.stack(
            [self.node_index(self.tokens[leaves], torch.full_like(lengths, t)) for t in pos], dim=1
        )
        nodes = torch.where(inside, nodes, torch.full_like(nodes, -1))
        actions = torch.where(inside, actions, torch.full_like(actions, -1))
        return nodes, actions, lengths, leaves


def uniform_log_policy(tree: SequenceTree, dtype=torch.float64) -> Tensor:
    """log π(a|s) = −log V at every node, ``[N, V]``."""
    V = tree.vocab_size
    return torch.full((tree.num_nodes, V), -torch.log(torch.tensor(float(V))).item(), dtype=dtype)


def random_log_policy(
    tree: SequenceTree, seed: int = 0, temperature: float = 1.0, dtype=torch.float64
) -> Tensor:
    """A random full-support policy ``[N, V]``: log-softmax of Gaussian logits × ``temperature``."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(tree.num_nodes, tree.vocab_size, generator=g, dtype=dtype) * temperature
    return logits.log_softmax(-1)


def synthetic_tree_rewards(
    tree: SequenceTree, seed: int = 0, scale: float = 1.0, dtype=torch.float64
) -> Tensor:
    """Random terminal rewards (nats) ``[N]``: N(0, scale²) at terminal nodes, 0 elsewhere."""
    g = torch.Generator().manual_seed(seed)
    reward = torch.randn(tree.num_nodes, generator=g, dtype=dtype) * scale
    return torch.where(tree.terminal, reward, torch.zeros_like(reward))


class TabularReward:
    """A reward function for :class:`~zarrl.envs.sequence.SequenceEnv` that looks up a table.

    Args:
        tree: the enumerated tree.
        table: ``[N]`` reward (nats) of each terminal node.
    """

    def __init__(self, tree: SequenceTree, table: Tensor):
        if table.shape != (tree.num_nodes,):
            raise ValueError(f"table has shape {tuple(table.shape)}, expected ({tree.num_nodes},)")
        self.tree, self.table = tree, table

    def __call__(self, tokens: Tensor, length: Tensor) -> Tensor:
        nodes = self.tree.node_index(tokens.cpu(), length.cpu())
        return self.table[nodes].to(tokens.device)


@dataclass
class SoftOptimalSolution:
    """The exact KL-regularized optimum on a tree (float64, CPU).

    Attributes:
        value: ``[N]`` V*(s) (0 at terminal and unreachable nodes).
        q_value: ``[N, V]`` Q*(s, a).
        log_policy: ``[N, V]`` log π*(a|s) (rows of non-internal nodes are uniform).
        terminal_log_prob: ``[N]`` log-probability that π* ends at each node (−inf elsewhere).
    """

    value: Tensor
    q_value: Tensor
    log_policy: Tensor
    terminal_log_prob: Tensor

    @property
    def terminal_prob(self) -> Tensor:
        return self.terminal_log_prob.exp()


def edge_rewards(tree: SequenceTree, terminal_reward: Tensor) -> Tensor:
    """Reward ``[N, V]`` of each (node, action): the child's terminal reward if it ends there."""
    child = tree.child.clamp(min=0)
    ends = (tree.child >= 0) & tree.terminal[child]
    return torch.where(ends, terminal_reward[child], torch.zeros_like(terminal_reward[child]))


def terminal_log_prob(tree: SequenceTree, log_policy: Tensor) -> Tensor:
    """Log-probability ``[N]`` that a policy ``[N, V]`` ends at each terminal node (−inf elsewhere)."""
    log_policy = log_policy.detach().to(torch.float64).cpu()
    reach = torch.full((tree.num_nodes,), float("-inf"), dtype=torch.float64)
    reach[0] = 0.0
    for level in range(tree.max_length):
        ids = torch.arange(tree.offsets[level], tree.offsets[level + 1])
        ids = ids[tree.internal[ids]]
        reach[tree.child[ids]] = reach[ids, None] + log_policy[ids]
    return torch.where(tree.terminal, reach, torch.full_like(reach, float("-inf")))


def solve_soft_optimal(
    tree: SequenceTree,
    terminal_reward: Tensor,
    ref_log_policy: Tensor | None = None,
    *,
    entropy_coef: float = 0.0,
    kl_coef: float = 1.0,
    gamma: float = 1.0,
) -> SoftOptimalSolution:
    """Soft value iteration over the whole tree.

    Args:
        tree: the enumerated tree.
        terminal_reward: ``[N]`` reward (nats) received on reaching each terminal node.
        ref_log_policy: ``[N, V]`` log π̃(a|s) of the reference policy (default uniform).
        entropy_coef: τ_H ≥ 0.
        kl_coef: λ ≥ 0; τ_H + λ must be > 0.
        gamma: discount γ ∈ (0, 1].
    """
    tau = entropy_coef + kl_coef
    if entropy_coef < 0 or kl_coef < 0 or tau <= 0:
        raise ValueError(
            f"need entropy_coef >= 0, kl_coef >= 0 and a positive sum, got {entropy_coef}, {kl_coef}"
        )
    N, V = tree.num_nodes, tree.vocab_size
    if terminal_reward.shape != (N,):
        raise ValueError(
            f"terminal_reward has shape {tuple(terminal_reward.shape)}, expected ({N},)"
        )
    if ref_log_policy is None:
        ref_log_policy = uniform_log_policy(tree)
    if ref_log_policy.shape != (N, V):
        raise ValueError(
            f"ref_log_policy has shape {tuple(ref_log_policy.shape)}, expected ({N}, {V})"
        )
    reward = edge_rewards(tree, terminal_reward.detach().to(torch.float64).cpu())
    ref = ref_log_policy.detach().to(torch.float64).cpu()
    value = torch.zeros(N, dtype=torch.float64)
    q_value = torch.zeros(N, V, dtype=torch.float64)
    log_policy = uniform_log_policy(tree)
    for level in reversed(range(tree.max_length)):
        ids = torch.arange(tree.offsets[level], tree.offsets[level + 1])
        ids = ids[tree.internal[ids]]
        child = tree.child[ids]
        cont = torch.where(tree.terminal[child], torch.zeros_like(value[child]), value[child])
        q = reward[ids] + gamma * cont
        logits = (kl_coef / tau) * ref[ids] + q / tau
        v = tau * torch.logsumexp(logits, dim=-1)
        q_value[ids] = q
        value[ids] = v
        log_policy[ids] = logits - v[:, None] / tau
    return SoftOptimalSolution(
        value=value,
        q_value=q_value,
        log_policy=log_policy,
        terminal_log_prob=terminal_log_prob(tree, log_policy),
    )
