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
    fixed_reference_log_prob,
    frozen_params,
    read_steps,
    score,
    segment_sum,
    step_tensor,
)
from zarrl.algorithms.rtb import check_complete_trajectories

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
    ):
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if mode not in ("on_policy", "off_policy", "original"):
            raise ValueError(f"mode must be 'on_policy', 'off_policy' or 'original', got {mode!r}")
        if is_temperature != "length" and not (
            isinstance(is_temperature, (int, float)) and is_temperature > 0
        ):
            raise ValueError(f"is_temperature must be 'length' or > 0, got {is_temperature!r}")
        self.beta, self.mode = float(beta), mode
        self.is_temperature, self.penalty_coef = is_temperature, float(penalty_coef)
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
        ).to(log_q_step.dtype)
        log_q = per_trajectory(log_q_step)  # [K] trajectories
        log_p = per_trajectory(log_p_step)
        ret = per_trajectory(steps.reward.to(log_q.dtype))
        log_ratio = (log_q - log_p).detach()
        out = {}
        if self.mode == "original":
            r = ret.exp()
            adv = r - r.mean()
            loss = -(adv * log_q).mean() + self.penalty_coef * (log_q - log_p).pow(2).mean()
            weights = None
        else:
            adv = ret - log_ratio / self.beta
            adv = adv - adv.mean()
            if self.mode == "on_policy":
                loss = -(adv * log_q).mean()
                weights = None
            else:
                log_b_step = step_tensor(td, keys.sample_log_prob)
                log_b = per_trajectory(log_b_step.to(log_q.dtype))
                if self.is_temperature == "length":
                    temperature = per_trajectory(torch.ones_like(log_q_step))
                else:
                    temperature = float(self.is_temperature)
                weights = ((log_q.detach() - log_b) / temperature).softmax(0)
                loss = -(weights * adv * log_q).sum()
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
