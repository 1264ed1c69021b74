"""Relative trajectory balance (Venkatraman et al. 2024) for sequential generative models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from tensordict import NestedKey, TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictParams
from torch import Tensor, nn
from torchrl.objectives import LossModule
from zarrl.algorithms._common import (
    check_finite,
    check_finite_tensor,
    coefficient,
    fixed_reference_log_prob,
    floating_dtype,
    frozen_params,
    masked_mean,
    read_steps,
    read_weights,
    reduce_windows,
    score_batch,
    segment_sum,
    write_priority,
)
from zarrl.algorithms.path_consistency import path_consistency, segment_marks

__all__ = ["RTBLoss", "check_complete_trajectories", "score_batch"]


def check_complete_trajectories(steps, loss_name: str) -> tuple[Tensor, Tensor]:
    """``(start, end_index)`` of :func:`~zarrl.algorithms.segment_marks` for a batch of whole
    trajectories; raise if one does not end in a terminal or starts mid-episode."""
    start, end, end_index = segment_marks(
        steps.terminated, steps.truncated, steps.valid, steps.is_init
    )
    incomplete = end & ~steps.terminated
    if incomplete.any():
        where = tuple(int(i) for i in incomplete.nonzero()[0])
        raise ValueError(
            f"{loss_name} needs complete trajectories, but the segment ending at batch index "
            f"{where} stops without a terminal state (truncated, slice end or padding); sample "
            "whole episodes (slice_len = episode length) or use TrustPCLLoss"
        )
    if steps.is_init is not None:
        mid = start & ~steps.is_init
        if mid.any() and steps.is_init.any():
            where = tuple(int(i) for i in mid.nonzero()[0])
            raise ValueError(
                f"{loss_name} needs complete trajectories, but the segment starting at batch "
                f"index {where} is not marked is_init (it starts mid-episode)"
            )
    return start, end_index


def spread_over_segments(x: Tensor, start: Tensor, valid: Tensor | None) -> Tensor:
    """``x`` ``[*B, T]`` read at the start step of each segment, repeated on every step of that
    segment (0 on padding): a per-trajectory quantity laid out per step."""
    t = torch.arange(start.shape[-1], device=start.device).expand(start.shape)
    first = torch.where(start, t, torch.zeros_like(t)).cummax(-1).values
    spread = x.gather(-1, first)
    if valid is not None:
        spread = torch.where(valid, spread, torch.zeros((), dtype=x.dtype, device=x.device))
    return spread


def one_trajectory_per_row(steps, start: Tensor) -> bool:
    """Whether every row of the ``[*B, T]`` batch is exactly one whole trajectory (no padding, a
    single segment starting at step 0), so per-trajectory sums are plain row sums."""
    if steps.valid is not None and not bool(steps.valid.all()):
        return False
    return bool(start[..., 0].all()) and not bool(start[..., 1:].any())


class RTBLoss(LossModule):
    """Relative trajectory balance: ½·mean δ(τ)² over whole trajectories, with

        δ(τ) = log Z + Σ_t log q(a_t|s_t) − Σ_t log p(a_t|s_t) − β·Σ_t r_t

    (the rewards sum to log r(x), nats). At the optimum q(x) ∝ p(x)·r(x)^β and
    log Z = log Σ_x p(x)·r(x)^β. Trajectories may come from any behaviour policy.

    Args:
        actor_network: the trained policy q, scored through ``batched_log_prob(td, action_key)``
            when it has that hook (see :func:`score_batch`), else ``get_dist(td)``.
        prior_network: the fixed prior p (its parameters are frozen copies-by-reference).
        beta: reward exponent β > 0.
        log_z_init: initial value of the learned scalar ``log_z`` (an ``nn.Parameter`` of this
            module, in the actor's dtype; put it in its own optimizer group, usually with a larger learning rate).
        reduction: ``"mean"`` over trajectories, ``"sum"``, or ``"none"`` (``[*B, T]``, δ²/2 at the
            first step of each trajectory).
        check_finite: raise, naming the key and the batch index, when a reward or log-probability
            is NaN or infinite (otherwise only that trajectory's δ is NaN).

    Prioritized replay: the importance weight ``priority_weight`` of a trajectory's first step
    weights its δ²/2 (``"mean"``: Σ w·δ²/2 / Σ w), and ``|δ|`` is written on every step of the
    trajectory under ``tensor_keys.priority`` (``[*B, T]``, 0 on padding) for
    ``replay_buffer.update_tensordict_priority(batch)``.

    When the batch carries ``ref_log_prob`` ``[*B, T]`` (log p of each step under this prior,
    stored when the data was generated), it is used instead of scoring the prior again;
    ``loss.tensor_keys.ref_log_prob = None`` always scores.
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable input keys (see :class:`~zarrl.algorithms.TrustPCLLoss`); ``ref_log_prob``:
        the prior's stored per-step log-probability (optional entry)."""

        action: NestedKey = "action"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        truncated: NestedKey = "truncated"
        is_init: NestedKey | None = "is_init"
        mask: NestedKey | None = ("collector", "mask")
        ref_log_prob: NestedKey | None = "ref_log_prob"
        priority: NestedKey | None = "td_error"
        priority_weight: NestedKey | None = "priority_weight"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    actor_network: TensorDictModule
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    prior_network: TensorDictModule
    prior_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: TensorDictModuleBase,
        prior_network: TensorDictModuleBase,
        beta: float,
        log_z_init: float = 0.0,
        *,
        reduction: Literal["mean", "sum", "none"] = "mean",
        check_finite: bool = False,
    ):
        super().__init__()
        beta = coefficient("beta", beta, strictly_above=True)
        log_z_init = coefficient("log_z_init", log_z_init, minimum=None)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.beta, self.reduction, self.check_finite = beta, reduction, bool(check_finite)
        self.convert_to_functional(actor_network, "actor_network")
        self.__dict__["prior_network"] = prior_network
        self.prior_network_params = frozen_params(prior_network)
        dtype = next(
            (p.dtype for p in actor_network.parameters() if p.is_floating_point()),
            torch.get_default_dtype(),
        )
        self.log_z = nn.Parameter(torch.tensor(float(log_z_init), dtype=dtype))

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        return [keys.action, *self.actor_network.in_keys, ("next", keys.reward)]

    @property
    def out_keys(self) -> list[str]:
        return ["loss_objective", "log_z", "delta_abs", "kl_estimate", "num_trajectories"]

    def trajectory_balance(self, tensordict: TensorDictBase) -> tuple[Tensor, Tensor, Tensor]:
        """δ ``[*B, T]`` (at the first step of each trajectory, 0 elsewhere), the start mask
        ``[*B, T]``, and the detached trajectory log-ratio Σ(log q − log p) at the starts."""
        steps = read_steps(tensordict, self.tensor_keys)
        start, end_index = check_complete_trajectories(steps, type(self).__name__)
        log_q = score_batch(
            self.actor_network, self.actor_network_params, tensordict, self.tensor_keys.action
        )
        log_p = fixed_reference_log_prob(
            self.prior_network,
            self.prior_network_params,
            tensordict,
            self.tensor_keys.action,
            self.tensor_keys.ref_log_prob,
        )
        if self.check_finite:
            check_finite(tensordict, [("next", self.tensor_keys.reward)])
            check_finite_tensor("log q (actor)", log_q, tensordict.batch_dims, what="the")
            check_finite_tensor("log p (prior)", log_p, tensordict.batch_dims, what="the")
        dtype = floating_dtype(log_q, self.log_z)  # integer / bool rewards promote to it
        log_q, log_p = log_q.to(dtype), log_p.to(dtype)
        ratio = (log_q - log_p).detach()
        if one_trajectory_per_row(steps, start):
            # δ = log Z + Σ_t (log q − log p − β·r_t) as row sums (float64, as path_consistency)
            f64 = torch.float64
            step = log_q.to(f64) - log_p.to(f64) - self.beta * steps.reward.to(f64)
            delta = (self.log_z.to(f64) + step.sum(-1)).to(log_q.dtype).unsqueeze(-1)
            pad = (0, log_q.shape[-1] - 1)
            return F.pad(delta, pad), start, F.pad(ratio.sum(-1, keepdim=True), pad)
        log_z = self.log_z.to(dtype).expand_as(log_q)
        # δ = −C of the whole-trajectory window with γ=1, τ_H=0, λ=1, V(s0)=log Z, rewards β·r.
        residual = path_consistency(
            self.beta * steps.reward.to(dtype),
            log_q,
            log_p,
            log_z,
            torch.zeros_like(log_q),
            terminated=steps.terminated,
            truncated=steps.truncated,
            valid=steps.valid,
            is_init=steps.is_init,
            gamma=1.0,
            entropy_coef=0.0,
            kl_coef=1.0,
            rollout="full",
            window_starts="first",
        )
        if steps.valid is not None:
            ratio = torch.where(steps.valid, ratio, torch.zeros_like(ratio))
        return -residual, start, segment_sum(ratio, start, end_index)

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        delta, start, log_ratio = self.trajectory_balance(tensordict)
        per_traj = 0.5 * delta.pow(2)
        n = start.sum()
        keys = self.tensor_keys
        weights = read_weights(tensordict, keys.priority_weight, per_traj.dtype)
        loss = reduce_windows(per_traj, start, weights, self.reduction)
        valid = None if keys.mask is None else tensordict.get(keys.mask, None)
        if valid is not None:
            valid = valid.reshape(start.shape).to(torch.bool)
        write_priority(tensordict, keys.priority, spread_over_segments(delta.abs(), start, valid))
        return TensorDict(
            {
                "loss_objective": loss,
                "log_z": self.log_z.detach().clone(),
                "delta_abs": masked_mean(delta.detach().abs(), start),
                "kl_estimate": masked_mean(log_ratio, start),
                "num_trajectories": n.detach().to(torch.float32),
            },
            batch_size=[],
        )
