"""KL-regularized REINFORCE at the trajectory level: the seed paper's corrected RL baseline, and the
original uncorrected one (for reproduction only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictParams
from torchrl.objectives import LossModule
from zarrl.algorithms._common import (
    check_finite,
    check_finite_tensor,
    coefficient,
    fixed_reference_log_prob,
    floating_dtype,
    frozen_params,
    read_steps,
    read_weights,
    score,
    segment_sum,
    step_tensor,
    write_priority,
)
from zarrl.algorithms.rtb import check_complete_trajectories, spread_over_segments

__all__ = ["KLReinforceLoss"]

Mode = Literal["on_policy", "off_policy", "original"]


class KLReinforceLoss(LossModule):
    """REINFORCE for E_q[log r(x)] − (1/β)·KL(q ‖ p) over whole trajectories.

    With per-trajectory sums R = Σ r_t (= log r(x)), log q, log p (and log b of the behaviour
    policy, read from ``action_log_prob``):

    - ``"on_policy"``: A = R − (1/β)(log q − log p), centred by its batch mean, no gradient through
      A; loss = −mean A·log q.
    - ``"off_policy"``: same A (centred by the unweighted mean), weights
      w = softmax((log q − log b)/temperature) over the batch (no gradient); loss = −Σ w·A·log q.
      ``is_temperature="length"`` tempers by each trajectory's length (the seed paper); 1.0 gives
      plain self-normalized importance sampling.
    - ``"original"``: the RTB paper's baseline, raw reward r = exp(R) as the advantage (centred)
      plus ``penalty_coef``·mean (log q − log p)²; its optimum is not p·r.

    Args:
        actor_network: the trained policy q (``get_dist(td)``).
        prior_network: the fixed prior p.
        beta: β > 0 (target q ∝ p·r^β).
        mode: ``"on_policy"``, ``"off_policy"`` or ``"original"``.
        is_temperature: ``"length"`` or a positive float (off-policy only).
        penalty_coef: w of the original baseline's squared log-ratio penalty.
        check_finite: raise, naming the key and the batch index, when a reward or log-probability
            is NaN or infinite.

    Prioritized replay: the importance weight ``priority_weight`` of a trajectory's first step
    weights its term (means become Σ w·x / Σ w; off-policy, the self-normalized weights are
    multiplied by it and normalized again), and the centred advantage ``|A|`` is written on every
    step of the trajectory under ``tensor_keys.priority`` (``[*B, T]``, 0 on padding). A batch
    without any trajectory (fully padded) gives a loss of 0.
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable input keys; ``sample_log_prob`` is the behaviour log-probability,
        ``ref_log_prob`` the prior's stored per-step log-probability (optional entry: when the
        batch carries it, the prior is not scored again)."""

        action: NestedKey = "action"
        sample_log_prob: NestedKey = "action_log_prob"
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
        *,
        mode: Mode = "on_policy",
        is_temperature: Literal["length"] | float = "length",
        penalty_coef: float = 0.01,
        check_finite: bool = False,
    ):
        super().__init__()
        beta = coefficient("beta", beta, strictly_above=True)
        if mode not in ("on_policy", "off_policy", "original"):
            raise ValueError(f"mode must be 'on_policy', 'off_policy' or 'original', got {mode!r}")
        if not (isinstance(is_temperature, str) and is_temperature == "length"):
            try:
                is_temperature = coefficient("is_temperature", is_temperature, strictly_above=True)
            except ValueError as err:
                raise ValueError(f"is_temperature must be 'length' or > 0: {err}") from None
        self.beta, self.mode = beta, mode
        self.is_temperature = is_temperature
        self.penalty_coef = coefficient("penalty_coef", penalty_coef)
        self.check_finite = bool(check_finite)
        self.convert_to_functional(actor_network, "actor_network")
        self.__dict__["prior_network"] = prior_network
        self.prior_network_params = frozen_params(prior_network)

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        extra = [keys.sample_log_prob] if self.mode == "off_policy" else []
        return [keys.action, *self.actor_network.in_keys, ("next", keys.reward), *extra]

    @property
    def out_keys(self) -> list[str]:
        return ["loss_objective", "return_mean", "kl_estimate", "ess", "num_trajectories"]

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        td = tensordict
        keys = self.tensor_keys
        steps = read_steps(td, keys)
        start, end_index = check_complete_trajectories(steps, type(self).__name__)
        valid = steps.valid if steps.valid is not None else torch.ones_like(start)

        def per_trajectory(x):
            x = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
            return segment_sum(x, start, end_index)[start]

        log_q_step, _ = score(self.actor_network, self.actor_network_params, td, keys.action)
        log_p_step = fixed_reference_log_prob(
            self.prior_network, self.prior_network_params, td, keys.action, keys.ref_log_prob
        )
        if self.check_finite:
            names = [("next", keys.reward)]
            if self.mode == "off_policy":
                names.append(keys.sample_log_prob)
            check_finite(td, names)
            check_finite_tensor("log q (actor)", log_q_step, td.batch_dims, what="the")
            check_finite_tensor("log p (prior)", log_p_step, td.batch_dims, what="the")
        dtype = floating_dtype(log_q_step)  # integer / bool rewards promote to it
        log_q_step, log_p_step = log_q_step.to(dtype), log_p_step.to(dtype)
        log_q = per_trajectory(log_q_step)  # [K] trajectories
        if log_q.numel() == 0:  # fully padded: no trajectory, no loss (as RTB and Trust-PCL)
            return self._empty(td, log_q_step, valid)
        log_p = per_trajectory(log_p_step)
        ret = per_trajectory(steps.reward.to(dtype))
        log_ratio = (log_q - log_p).detach()
        prio = read_weights(td, keys.priority_weight, dtype)
        prio = None if prio is None else prio[start]

        def mean(x):
            return x.mean() if prio is None else (prio * x).sum() / prio.sum()

        out = {}
        if self.mode == "original":
            r = ret.exp()
            adv = r - r.mean()
            loss = -mean(adv * log_q) + self.penalty_coef * mean((log_q - log_p).pow(2))
            weights = None
        else:
            adv = ret - log_ratio / self.beta
            adv = adv - adv.mean()
            if self.mode == "on_policy":
                loss = -mean(adv * log_q)
                weights = None
            else:
                log_b_step = step_tensor(td, keys.sample_log_prob)
                log_b = per_trajectory(log_b_step.to(dtype))
                if self.is_temperature == "length":
                    temperature = per_trajectory(torch.ones_like(log_q_step))
                else:
                    temperature = float(self.is_temperature)
                weights = ((log_q.detach() - log_b) / temperature).softmax(0)
                if prio is not None:
                    weights = weights * prio / (weights * prio).sum()
                loss = -(weights * adv * log_q).sum()
        per_step = torch.zeros_like(log_q_step.detach())
        per_step[start] = adv.detach().abs()
        write_priority(td, keys.priority, spread_over_segments(per_step, start, steps.valid))
        out["loss_objective"] = loss
        out["return_mean"] = ret.detach().mean()
        out["kl_estimate"] = log_ratio.mean()
        out["ess"] = (
            torch.tensor(float(log_q.numel()))
            if weights is None
            else 1.0 / weights.pow(2).sum().detach()
        )
        out["num_trajectories"] = torch.tensor(float(log_q.numel()))
        return TensorDict(out, batch_size=[])

    def _empty(
        self, td: TensorDictBase, log_q_step: torch.Tensor, valid: torch.Tensor
    ) -> TensorDict:
        """The output for a batch without any trajectory: a loss of 0 (connected to the actor's
        graph, so ``backward`` works) and 0 statistics."""
        zero = torch.zeros((), dtype=log_q_step.dtype, device=log_q_step.device)
        loss = torch.where(valid, log_q_step, zero).sum() * 0.0
        write_priority(td, self.tensor_keys.priority, torch.zeros_like(log_q_step.detach()))
        stats = dict.fromkeys(("return_mean", "kl_estimate", "ess", "num_trajectories"), zero)
        return TensorDict({"loss_objective": loss, **stats}, batch_size=[])
