"""Trust-PCL and PCL: d-step path-consistency losses on ``[*B, T]`` sub-trajectories."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictParams
from torch import Tensor
from torchrl.objectives import LossModule, SoftUpdate
from zarrl.algorithms._common import (
    check_finite,
    check_finite_tensor,
    coefficient,
    entropy_estimate,
    fixed_reference_log_prob,
    floating_dtype,
    frozen_params,
    masked_mean,
    read_steps,
    read_weights,
    reduce_windows,
    rollout_length,
    score,
    step_tensor,
    write_priority,
)
from zarrl.algorithms.kl_budget import KLBudgetLambda
from zarrl.algorithms.path_consistency import path_consistency, segment_marks

__all__ = ["TrustPCLLoss", "PCLLoss"]


def _consecutive(cur: TensorDictBase, after: TensorDictBase) -> bool:
    """Whether the ``next`` entries of a ``[*B, T]`` batch are its own entries one step later
    (``after[..., t] == cur[..., t + 1]`` for every leaf: rows of consecutive steps, no episode
    boundary inside), so the values of ``T + 1`` states serve both V(s_t) and V(s_{t+1})."""
    if (
        cur.batch_dims < 1
        or cur.batch_size[-1] < 2
        or set(cur.keys(True, True)) != set(after.keys(True, True))
    ):
        return False
    time, length = cur.batch_dims - 1, cur.batch_size[-1]
    for key in cur.keys(True, True):
        a, b = cur.get(key), after.get(key)
        if a.shape != b.shape or not torch.equal(
            b.narrow(time, 0, length - 1), a.narrow(time, 1, length - 1)
        ):
            return False
    return True


class TrustPCLLoss(LossModule):
    """Trust-PCL (Nachum et al. 2018): multi-step path consistency with a relative-entropy term.

    For every window of ``rollout`` steps (or to the segment end) the residual

        C = −V(s_t) + γ^d·V(s_{t+d}) + Σ γ^i·[r − (τ_H+λ)·log π + λ·log π̃]

    is driven to zero; the loss is ½·mean C² over windows. The policy receives
    ``clip(C)·∇C`` (``advantage_clip``), the value network ``critic_coef·C·∇C``; the reported
    ``loss_objective`` is always ½·mean C².

    Args:
        actor_network: a TensorDictModule with ``get_dist(td)`` (e.g. ``ProbabilisticActor``), scored
            on the stored ``action`` of a whole ``[*B, T]`` batch in one call.
        value_network: a TensorDictModule writing ``"state_value"`` (``[*B]`` or ``[*B, 1]``).
        reference_network: a fixed reference policy π̃ (a prior). ``None``: a lagged EMA copy of the
            actor, kept in ``target_actor_network_params`` and moved by :meth:`make_target_updater`.
        reference_lag: κ of the EMA θ̃ ← κ·θ̃ + (1−κ)·θ used by :meth:`make_target_updater`.
        gamma: discount γ.
        entropy_coef: τ_H ≥ 0.
        kl_coef: fixed λ ≥ 0. Exclusive with ``kl_budget``.
        kl_budget: ε > 0: λ is tuned by :meth:`update_lambda` from recent episode returns.
        lambda_tuner_kwargs: extra arguments of :class:`~zarrl.algorithms.KLBudgetLambda`.
        rollout: window length d (int ≥ 1) or ``"full"``.
        window_starts: ``"all"`` steps start a window, or only the ``"first"`` of each segment.
        critic_coef: weight of the value network's gradient.
        advantage_clip: clip C to ``[−c, c]`` in the policy gradient (``None``: no clipping).
        bootstrap_from_target: bootstrap values V(s_{t+d}) from a lagged copy of the value network.
        reduction: ``"mean"`` over windows, ``"sum"``, or ``"none"`` (per-step ``[*B, T]``).
        check_finite: raise, naming the key and the batch index, when a reward, log-probability
            or value of the batch is NaN or infinite (otherwise only the windows containing
            that step are NaN).

    Prioritized replay: importance weights ``priority_weight`` (``[*B, T]``, one per step as
    TorchRL's samplers write them) weight each window by the weight of its start step, as in
    TorchRL's ``_reduce`` (``"mean"``: Σ w·½C² / Σ w). The new priority ``|C|`` is written into
    the input batch under ``tensor_keys.priority`` (``[*B, T]``: at each step the |C| of the
    window it starts, or with ``window_starts="first"`` of its segment's window; 0 on padding)
    for ``replay_buffer.update_tensordict_priority(batch)``.
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable input keys (``set_keys``).

        Attributes:
            action: the stored action, scored by the actor. Default ``"action"``.
            value: what the value network writes. Default ``"state_value"``.
            reward, done, terminated, truncated: step entries, read under ``"next"``.
            is_init: first step of an episode (optional). Default ``"is_init"``.
            mask: validity mask of padded slices (optional). Default ``("collector", "mask")``.
            ref_log_prob: the fixed ``reference_network``'s per-step log-probability stored with
                the data (optional; used instead of scoring it again; ignored for the lagged
                EMA reference, which changes). Default ``"ref_log_prob"``.
            priority: where the per-step priority |C| is written (``None``: not written).
                Default ``"td_error"`` (TorchRL's ``TensorDictReplayBuffer(priority_key=...)``).
            priority_weight: the sampler's importance weights (optional entry).
                Default ``"priority_weight"``.
        """

        action: NestedKey = "action"
        value: NestedKey = "state_value"
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
    value_network: TensorDictModule
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams
    reference_network: TensorDictModule | None
    reference_network_params: TensorDictParams | None

    def __init__(
        self,
        actor_network: TensorDictModuleBase,
        value_network: TensorDictModuleBase,
        *,
        reference_network: TensorDictModuleBase | None = None,
        reference_lag: float = 0.95,
        gamma: float = 1.0,
        entropy_coef: float = 0.0,
        kl_coef: float | None = None,
        kl_budget: float | None = None,
        lambda_tuner_kwargs: dict | None = None,
        rollout: int | Literal["full"] = 1,
        window_starts: Literal["all", "first"] = "all",
        critic_coef: float = 1.0,
        advantage_clip: float | None = None,
        bootstrap_from_target: bool = False,
        reduction: Literal["mean", "sum", "none"] = "mean",
        check_finite: bool = False,
    ):
        super().__init__()
        if kl_coef is not None and kl_budget is not None:
            raise ValueError("give kl_coef (fixed λ) or kl_budget (tuned λ), not both")
        if kl_coef is not None:
            kl_coef = coefficient("kl_coef", kl_coef)
        if kl_budget is not None:
            kl_budget = coefficient("kl_budget", kl_budget, strictly_above=True)
        entropy_coef = coefficient("entropy_coef", entropy_coef)
        gamma = coefficient("gamma", gamma, strictly_above=True, maximum=1.0)
        critic_coef = coefficient("critic_coef", critic_coef)
        rollout = rollout_length(rollout)
        if window_starts not in ("all", "first"):
            raise ValueError(f"window_starts must be 'all' or 'first', got {window_starts!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if advantage_clip is not None:
            advantage_clip = coefficient("advantage_clip", advantage_clip, strictly_above=True)
        reference_lag = coefficient("reference_lag", reference_lag)
        if reference_lag >= 1.0:
            raise ValueError(f"reference_lag must be in [0, 1), got {reference_lag}")
        self.gamma, self.entropy_coef = gamma, entropy_coef
        self.rollout, self.window_starts = rollout, window_starts
        self.critic_coef, self.advantage_clip = critic_coef, advantage_clip
        self.bootstrap_from_target, self.reduction = bootstrap_from_target, reduction
        self.reference_lag, self.check_finite = reference_lag, bool(check_finite)

        self.lambda_tuner = None
        if kl_budget is not None:
            self.lambda_tuner = KLBudgetLambda(kl_budget, **(lambda_tuner_kwargs or {}))
            initial = self.lambda_tuner.value
        else:
            initial = 0.0 if kl_coef is None else float(kl_coef)
        self.register_buffer("kl_coef", torch.tensor(initial, dtype=torch.float64))
        self.uses_reference = kl_budget is not None or (kl_coef is not None and kl_coef != 0)

        lagged_reference = self.uses_reference and reference_network is None
        self.convert_to_functional(
            actor_network, "actor_network", create_target_params=lagged_reference
        )
        self.convert_to_functional(
            value_network, "value_network", create_target_params=bootstrap_from_target
        )
        if reference_network is not None:
            self.__dict__["reference_network"] = reference_network
            self.reference_network_params = frozen_params(reference_network)
        else:
            self.__dict__["reference_network"] = None
            self.reference_network_params = None

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        return [
            keys.action,
            *self.actor_network.in_keys,
            *self.value_network.in_keys,
            *[("next", k) for k in self.value_network.in_keys],
            ("next", keys.reward),
            ("next", keys.terminated),
            ("next", keys.truncated),
        ]

    @property
    def out_keys(self) -> list[str]:
        return [
            "loss_objective",
            "residual_abs",
            "kl_estimate",
            "entropy",
            "kl_coef",
            "num_windows",
        ]

    # -- λ -------------------------------------------------------------------------------------
    def update_lambda(self, episode_returns, episode_lengths) -> float:
        """Feed finished episodes' returns (nats) and lengths to the KL-budget tuner; returns λ."""
        if self.lambda_tuner is None:
            raise RuntimeError("update_lambda needs a loss built with kl_budget=ε")
        value = self.lambda_tuner.update(episode_returns, episode_lengths)
        self.kl_coef.fill_(value)
        return value

    def get_extra_state(self) -> dict:
        """The λ tuner's episode history travels with ``state_dict()``."""
        return {} if self.lambda_tuner is None else {"lambda_tuner": self.lambda_tuner.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        if self.lambda_tuner is not None and state.get("lambda_tuner") is not None:
            self.lambda_tuner.load_state_dict(state["lambda_tuner"])

    def make_target_updater(self) -> SoftUpdate:
        """A TorchRL ``SoftUpdate`` moving the lagged reference / values: θ̃ ← κ·θ̃ + (1−κ)·θ."""
        return SoftUpdate(self, eps=self.reference_lag)

    # -- pieces ----------------------------------------------------------------------------------
    def _values(self, td: TensorDictBase) -> tuple[Tensor, Tensor]:
        key = self.tensor_keys.value
        in_keys = self.value_network.in_keys
        nxt = td.get("next")
        for k in in_keys:
            for where, sub in ((k, td), (("next", *((k,) if isinstance(k, str) else k)), nxt)):
                if sub.get(k, None) is None:
                    raise KeyError(
                        f"the value network reads {k!r}: the loss needs the entry {where!r} "
                        "(V(s_t) and the bootstrap V(s_{t+1}))"
                    )
        if self.bootstrap_from_target:
            with self.value_network_params.to_module(
                self.value_network, preserve_module_state=False
            ):
                cur = self.value_network(td.select(*in_keys, strict=False).copy())
            with (
                torch.no_grad(),
                self.target_value_network_params.to_module(
                    self.value_network, preserve_module_state=False
                ),
            ):
                nv = self.value_network(nxt.select(*in_keys, strict=False).copy())
            return step_tensor(cur, key), step_tensor(nv, key).detach()
        cur, after = td.select(*in_keys, strict=False), nxt.select(*in_keys, strict=False)
        if _consecutive(cur, after):  # V(s_{t+1}) is V of the next row's s_t: T + 1 states, not 2T
            time = td.batch_dims - 1
            states = torch.cat([cur, after[..., -1:]], dim=time)
            with self.value_network_params.to_module(
                self.value_network, preserve_module_state=False
            ):
                values = step_tensor(self.value_network(states), key)
            length = td.batch_size[-1]
            return values.narrow(time, 0, length), values.narrow(time, 1, length)
        both = torch.cat([cur, after], dim=0)
        with self.value_network_params.to_module(self.value_network, preserve_module_state=False):
            out = self.value_network(both)
        n = td.batch_size[0]
        values = step_tensor(out, key)
        return values[:n], values[n:]

    def _reference_log_prob(self, td: TensorDictBase) -> Tensor | None:
        if not self.uses_reference:
            return None
        if self.reference_network is not None:
            return fixed_reference_log_prob(
                self.reference_network,
                self.reference_network_params,
                td,
                self.tensor_keys.action,
                self.tensor_keys.ref_log_prob,
            )
        with torch.no_grad():
            lp, _ = score(
                self.actor_network, self.target_actor_network_params, td, self.tensor_keys.action
            )
        return lp

    def _residual(self, steps, log_prob, ref_log_prob, value, next_value) -> Tensor:
        return path_consistency(
            steps.reward,
            log_prob,
            ref_log_prob,
            value,
            next_value,
            terminated=steps.terminated,
            truncated=steps.truncated,
            valid=steps.valid,
            is_init=steps.is_init,
            gamma=self.gamma,
            entropy_coef=self.entropy_coef,
            kl_coef=self.kl_coef if self.uses_reference else 0.0,
            rollout=self.rollout,
            window_starts=self.window_starts,
        )

    def _check_finite(self, td, log_prob, ref_log_prob, value, next_value) -> None:
        keys = self.tensor_keys
        check_finite(td, [("next", keys.reward)])
        for name, tensor in (
            (f"log_prob of {keys.action!r}", log_prob),
            ("ref_log_prob (reference policy)", ref_log_prob),
            (f"{keys.value!r} V(s_t)", value),
            (f"{keys.value!r} V(s_t+1)", next_value),
        ):
            if tensor is not None:
                check_finite_tensor(name, tensor, td.batch_dims, what="the")

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        td = tensordict
        keys = self.tensor_keys
        steps = read_steps(td, keys)
        log_prob, dist = score(self.actor_network, self.actor_network_params, td, keys.action)
        ref_log_prob = self._reference_log_prob(td)
        value, next_value = self._values(td)
        if self.check_finite:
            self._check_finite(td, log_prob, ref_log_prob, value, next_value)
        # integer / bool rewards and mixed dtypes compute in the networks' floating dtype
        dtype = floating_dtype(log_prob, value, next_value)
        log_prob, value, next_value = log_prob.to(dtype), value.to(dtype), next_value.to(dtype)
        steps.reward = steps.reward.to(dtype)
        if ref_log_prob is not None:
            ref_log_prob = ref_log_prob.to(dtype)

        c = self.critic_coef
        if c != 1.0:  # scale the value gradient, keep the value
            value = c * value + (1.0 - c) * value.detach()
            next_value = c * next_value + (1.0 - c) * next_value.detach()
        if self.advantage_clip is None:
            residual = self._residual(steps, log_prob, ref_log_prob, value, next_value)
            per_window = 0.5 * residual.pow(2)
            residual_value = residual.detach()
        else:
            c_pi = self._residual(
                steps, log_prob, ref_log_prob, value.detach(), next_value.detach()
            )
            c_v = self._residual(steps, log_prob.detach(), ref_log_prob, value, next_value)
            residual_value = c_pi.detach()
            clipped = residual_value.clamp(-self.advantage_clip, self.advantage_clip)
            per_window = (
                0.5 * residual_value.pow(2)
                + clipped * (c_pi - residual_value)
                + residual_value * (c_v - residual_value)
            )

        valid = torch.ones_like(steps.terminated) if steps.valid is None else steps.valid
        priority = residual_value.abs()
        if self.window_starts == "first":
            windows = segment_marks(steps.terminated, steps.truncated, steps.valid, steps.is_init)[
                0
            ]
            t = torch.arange(windows.shape[-1], device=windows.device).expand(windows.shape)
            first = torch.where(windows, t, torch.zeros_like(t)).cummax(-1).values
            priority = torch.where(valid, priority.gather(-1, first), 0.0)
        else:
            windows = valid.clone()
        num_windows = windows.sum()
        weights = read_weights(td, keys.priority_weight, per_window.dtype)
        loss = reduce_windows(per_window, windows, weights, self.reduction)
        write_priority(td, keys.priority, priority)

        out = {
            "loss_objective": loss,
            "residual_abs": masked_mean(residual_value.abs(), windows),
            "entropy": entropy_estimate(dist, log_prob, valid),
            "kl_coef": self.kl_coef.detach().clone(),
            "num_windows": num_windows.detach().to(torch.float32),
            "value_mean": masked_mean(value.detach(), valid),
        }
        if ref_log_prob is not None:
            out["kl_estimate"] = masked_mean((log_prob - ref_log_prob).detach(), valid)
        return TensorDict(out, batch_size=[])


class PCLLoss(TrustPCLLoss):
    """PCL (Nachum et al. 2017): :class:`TrustPCLLoss` with λ = 0 (entropy regularization only).

    Takes the same arguments as :class:`TrustPCLLoss` except the reference policy and λ.
    """

    def __init__(
        self,
        actor_network: TensorDictModuleBase,
        value_network: TensorDictModuleBase,
        *,
        gamma: float = 1.0,
        entropy_coef: float = 0.01,
        rollout: int | Literal["full"] = 1,
        window_starts: Literal["all", "first"] = "all",
        critic_coef: float = 1.0,
        advantage_clip: float | None = None,
        bootstrap_from_target: bool = False,
        reference_lag: float = 0.95,
        reduction: Literal["mean", "sum", "none"] = "mean",
        check_finite: bool = False,
    ):
        if coefficient("entropy_coef", entropy_coef) <= 0:
            raise ValueError(f"PCL needs entropy_coef > 0, got {entropy_coef}")
        super().__init__(
            actor_network,
            value_network,
            gamma=gamma,
            entropy_coef=entropy_coef,
            kl_coef=0.0,
            rollout=rollout,
            window_starts=window_starts,
            critic_coef=critic_coef,
            advantage_clip=advantage_clip,
            bootstrap_from_target=bootstrap_from_target,
            reference_lag=reference_lag,
            reduction=reduction,
            check_finite=check_finite,
        )
