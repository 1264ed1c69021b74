"""Losses on batches of logged generations (whole completions of prompts, ``[B, L]`` padded).

The target of every loss here is π(y|x) ∝ π_ref(y|x)·exp(β·log_reward(x, y)). The reference is
the batch's stored ``("log_probs", "ref")`` when it carries them, else a frozen reference model
(``prior_network``) scored in the same batched call. See :mod:`zarrl.algorithms.sequence_scoring`
for the batch layout and the policy interface.

- :class:`SequenceRTBLoss`: relative trajectory balance with log Z per prompt.
- :class:`SequenceTrustPCLLoss`: Trust-PCL's path consistency over d-token windows with a learned
  V(prefix), or (``rollout="full"``) over whole completions with V(prompt) = log Z / β, where it
  equals (1/β)²·RTB.
- :class:`SequenceKLReinforceLoss`: off-policy REINFORCE for E[log_reward] − (1/β)·KL(π‖π_ref)
  with token- or sequence-level importance weights (truncated or masked) and their effective
  sample size.
- :class:`SequenceMLELoss`: maximum likelihood of the stored completions (pre-training a prior).

RTB and Trust-PCL are squared consistency residuals, zero on every completion at the optimum,
whichever policy sampled it: they need no importance weights (the behaviour log-probs are only a
diagnostic). KL-REINFORCE is an expectation under the trained policy and needs them off-policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase
from tensordict.nn import TensorDictParams
from torch import Tensor, nn
from torchrl.objectives import LossModule
from zarrl.algorithms._common import (
    check_finite_tensor,
    coefficient,
    frozen_params,
    reduce_windows,
    write_priority,
)
from zarrl.algorithms.path_consistency import path_consistency
from zarrl.algorithms.sequence_scoring import SequenceHeads, SequencePolicy

__all__ = [
    "SequenceKLReinforceLoss",
    "SequenceMLELoss",
    "SequenceRTBLoss",
    "SequenceTrustPCLLoss",
]

Reduction = Literal["mean", "sum", "none"]


@dataclass
class SequenceKeys:
    """The entries of a sequence batch a loss reads (``set_keys`` renames them); ``ref_log_prob``
    ``None`` always scores the reference model; ``priority`` is written ``[B]``."""

    response: NestedKey = ("tokens", "response")
    response_mask: NestedKey = ("masks", "response")
    behaviour_log_prob: NestedKey = ("log_probs", "behaviour")
    ref_log_prob: NestedKey | None = ("log_probs", "ref")
    log_reward: NestedKey = "log_reward"
    prompt: NestedKey = "prompt"
    priority: NestedKey | None = "td_error"
    priority_weight: NestedKey | None = "priority_weight"


class _SequenceLoss(LossModule):
    """Scoring of the trained policy and of the reference, shared by the three losses."""

    default_keys = SequenceKeys
    _AcceptedKeys = SequenceKeys
    tensor_keys: SequenceKeys
    actor_network: nn.Module
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: nn.Module,
        prior_network: nn.Module | None,
        beta: float,
        reduction: Reduction,
        check_finite: bool,
    ) -> None:
        super().__init__()
        if not isinstance(actor_network, SequencePolicy):
            raise TypeError(
                f"actor_network must implement zarrl.algorithms.SequencePolicy "
                f"(token_log_probs, generate); got {type(actor_network).__name__}"
            )
        if prior_network is not None and not isinstance(prior_network, SequencePolicy):
            raise TypeError(
                "prior_network must implement zarrl.algorithms.SequencePolicy, got "
                f"{type(prior_network).__name__}"
            )
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.beta = coefficient("beta", beta, strictly_above=True)
        self.reduction, self.check_finite = reduction, bool(check_finite)
        self.convert_to_functional(actor_network, "actor_network")
        self.__dict__["prior_network"] = prior_network
        self.prior_network_params = None if prior_network is None else frozen_params(prior_network)

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        k = self.tensor_keys
        return [k.response, k.response_mask, k.log_reward, k.prompt]

    def _actor(self, call):
        with self.actor_network_params.to_module(self.actor_network, preserve_module_state=False):
            return call(self.actor_network)

    def _mask(self, batch: TensorDictBase) -> Tensor:
        mask = batch.get(self.tensor_keys.response_mask).to(torch.bool)
        if mask.ndim != 2:
            raise ValueError(
                f"{self.tensor_keys.response_mask!r} has shape {tuple(mask.shape)}, expected [B, L]"
            )
        return mask

    def _log_reward(self, batch: TensorDictBase, dtype: torch.dtype) -> Tensor:
        key = self.tensor_keys.log_reward
        value = batch.get(key, None)
        if value is None:
            raise KeyError(f"the loss needs the per-completion entry {key!r} [B]")
        value = value.reshape(batch.batch_size[0], -1)[:, 0].to(dtype)
        if self.check_finite:
            check_finite_tensor(key, value, 1)
        return value

    def reference_log_probs(self, batch: TensorDictBase, mask: Tensor) -> Tensor:
        """log π_ref per token ``[B, L]`` (no gradient): stored, else the frozen reference model."""
        key = self.tensor_keys.ref_log_prob
        stored = None if key is None else batch.get(key, None)
        if stored is not None:
            if stored.shape != mask.shape:
                raise ValueError(
                    f"{key!r} has shape {tuple(stored.shape)}, expected {tuple(mask.shape)}"
                )
            ref = stored.detach()
        elif self.prior_network is not None:
            with (
                torch.no_grad(),
                self.prior_network_params.to_module(
                    self.prior_network, preserve_module_state=False
                ),
            ):
                ref = self.prior_network.token_log_probs(batch)
        else:
            raise KeyError(
                f"the loss needs the reference's log-probs: the batch has no {key!r} entry and no "
                "prior_network (a frozen reference model) was given"
            )
        if self.check_finite:
            check_finite_tensor("reference log-probs", torch.where(mask, ref, 0.0), 1)
        return torch.where(mask, ref, torch.zeros((), dtype=ref.dtype, device=ref.device))

    def _row_weights(self, batch: TensorDictBase, dtype: torch.dtype) -> Tensor | None:
        key = self.tensor_keys.priority_weight
        value = None if key is None else batch.get(key, None)
        return None if value is None else value.reshape(batch.batch_size[0], -1)[:, 0].to(dtype)

    def _reduce_rows(self, per_row: Tensor, weights: Tensor | None) -> Tensor:
        rows = torch.ones_like(per_row, dtype=torch.bool)
        return reduce_windows(per_row, rows, weights, self.reduction)


class SequenceRTBLoss(_SequenceLoss):
    """Relative trajectory balance on whole completions: ½·mean δ², with

        δ(x, y) = log Z(x) + Σ_t log π(y_t|x, y_<t) − Σ_t log π_ref(y_t|x, y_<t) − β·log_reward(x, y)

    and log Z(x) from the policy's log Z head (a table per prompt or a head on the prompt
    encoding, :class:`~zarrl.algorithms.SequenceHeads`). At the optimum π ∝ π_ref·exp(β·log_reward)
    and Z(x) is its normalizer. Valid on completions from any sampler: no importance weights.

    Args:
        actor_network: the trained policy (:class:`SequencePolicy` and :class:`SequenceHeads`).
        prior_network: a frozen reference model, used when the batch carries no stored
            ``("log_probs", "ref")``.
        beta: β > 0.
        reduction: ``"mean"`` (Σ w·δ²/2 / Σ w with the batch's ``priority_weight`` w), ``"sum"``
            or ``"none"`` (``[B]``).
        check_finite: raise, naming the entry and row, on a non-finite reward or log-prob.

    ``|δ|`` ``[B]`` is written under ``tensor_keys.priority`` for prioritized replay.
    """

    def __init__(
        self,
        actor_network: nn.Module,
        prior_network: nn.Module | None = None,
        *,
        beta: float = 1.0,
        reduction: Reduction = "mean",
        check_finite: bool = False,
    ) -> None:
        super().__init__(actor_network, prior_network, beta, reduction, check_finite)
        if not isinstance(actor_network, SequenceHeads):
            raise TypeError("SequenceRTBLoss needs a policy with a log Z head (SequenceHeads)")

    @property
    def out_keys(self) -> list[str]:
        return ["loss_objective", "log_z", "delta_abs", "kl_estimate", "log_reward_mean"]

    def balance(self, batch: TensorDictBase) -> tuple[Tensor, Tensor, Tensor]:
        """δ ``[B]``, the detached Σ_t (log π − log π_ref) ``[B]`` and log Z ``[B]``."""
        mask = self._mask(batch)
        log_q, _, log_z = self._actor(lambda m: m.score_with_heads(batch))
        log_p = self.reference_log_probs(batch, mask).to(log_q.dtype)
        f64 = torch.float64
        ratio = torch.where(mask, log_q.to(f64) - log_p.to(f64), 0.0).sum(-1)
        delta = log_z.to(f64) + ratio - self.beta * self._log_reward(batch, f64)
        return delta.to(log_q.dtype), ratio.detach().to(log_q.dtype), log_z

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        delta, ratio, log_z = self.balance(tensordict)
        loss = self._reduce_rows(0.5 * delta.pow(2), self._row_weights(tensordict, delta.dtype))
        write_priority(tensordict, self.tensor_keys.priority, delta.abs())
        return TensorDict(
            {
                "loss_objective": loss,
                "log_z": log_z.detach().mean(),
                "delta_abs": delta.detach().abs().mean(),
                "kl_estimate": ratio.mean(),
                "log_reward_mean": self._log_reward(tensordict, delta.dtype).mean(),
            },
            batch_size=[],
        )


class SequenceTrustPCLLoss(_SequenceLoss):
    """Trust-PCL's path consistency on completions, all windows of a padded batch at once.

    With λ = 1/β, γ = 1, the completion's log_reward on its last token and the end of every
    completion terminal (V = 0 after it), the residual of the window of tokens t..k is

        C(t) = −V(x, y_<t) + Σ_{i=t}^{k} [r_i − λ·log π(y_i|·) + λ·log π_ref(y_i|·)] + V(x, y_≤k)

    (:func:`~zarrl.algorithms.path_consistency`); the loss is ½·mean C² over windows, training the
    policy and the value head together. ``rollout=d``: windows of d tokens starting at every token,
    V(prefix) from the policy's value head. ``rollout="full"``: one window per completion with
    V(x) = λ·log Z(x) from the log Z head: then C = −λ·δ of :class:`SequenceRTBLoss` and this loss
    is λ²·RTB (:func:`~zarrl.algorithms.sequence_trust_pcl_from_rtb`). No importance weights.

    Args:
        actor_network: the trained policy with its V(prefix) and log Z heads.
        prior_network: a frozen reference model, used when no ``("log_probs", "ref")`` is stored.
        beta: β > 0 (λ = 1/β).
        rollout: window length d ≥ 1, or ``"full"``.
        entropy_coef: τ_H ≥ 0 (0: the target π ∝ π_ref·exp(β·log_reward)).
        reduction, check_finite: as :class:`SequenceRTBLoss` (``"none"``: ``[B]``, the mean of a
            row's ½C² over its windows).

    The mean ``|C|`` of each row ``[B]`` is written under ``tensor_keys.priority``.
    """

    def __init__(
        self,
        actor_network: nn.Module,
        prior_network: nn.Module | None = None,
        *,
        beta: float = 1.0,
        rollout: int | Literal["full"] = 4,
        entropy_coef: float = 0.0,
        reduction: Reduction = "mean",
        check_finite: bool = False,
    ) -> None:
        super().__init__(actor_network, prior_network, beta, reduction, check_finite)
        if not isinstance(actor_network, SequenceHeads):
            raise TypeError("SequenceTrustPCLLoss needs a policy with value and log Z heads")
        if rollout != "full" and not (
            isinstance(rollout, int) and not isinstance(rollout, bool) and rollout >= 1
        ):
            raise ValueError(f"rollout must be an int >= 1 or 'full', got {rollout!r}")
        self.rollout = rollout
        self.entropy_coef = coefficient("entropy_coef", entropy_coef)

    @property
    def kl_coef(self) -> float:
        """λ = 1/β."""
        return 1.0 / self.beta

    @property
    def out_keys(self) -> list[str]:
        return ["loss_objective", "residual_abs", "value_start", "kl_estimate", "num_windows"]

    def residuals(self, batch: TensorDictBase) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(C [B, L], window starts [B, L], V(prompt) [B], Σ(log π − log π_ref) [B])``."""
        mask = self._mask(batch)
        B, L = mask.shape
        log_q, value, log_z = self._actor(lambda m: m.score_with_heads(batch))
        dtype = log_q.dtype
        log_p = self.reference_log_probs(batch, mask).to(dtype)
        lam = self.kl_coef
        length = mask.sum(-1)
        last = torch.arange(L, device=mask.device) == (length - 1).clamp(min=0).unsqueeze(-1)
        last &= mask
        reward = torch.where(last, self._log_reward(batch, dtype).unsqueeze(-1), 0.0)
        if self.rollout == "full":
            start_value = lam * log_z
            v, v_next = start_value.unsqueeze(-1).expand(B, L), torch.zeros_like(log_q)
            window_starts = "first"
        else:
            start_value = value[:, 0]
            v, v_next = value[:, :L], value[:, 1 : L + 1]
            window_starts = "all"
        residual = path_consistency(
            reward,
            log_q,
            log_p,
            v,
            v_next,
            terminated=last,
            valid=mask,
            gamma=1.0,
            entropy_coef=self.entropy_coef,
            kl_coef=lam,
            rollout=self.rollout,
            window_starts=window_starts,
        )
        starts = mask.clone()
        if window_starts == "first":
            starts[:, 1:] = False
        ratio = torch.where(mask, log_q - log_p, 0.0).sum(-1).detach()
        return residual, starts, start_value, ratio

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        residual, starts, start_value, ratio = self.residuals(tensordict)
        n = starts.sum(-1).clamp(min=1).to(residual.dtype)
        per_row = torch.where(starts, 0.5 * residual.pow(2), 0.0).sum(-1) / n
        weights = self._row_weights(tensordict, residual.dtype)
        if self.reduction == "none":
            loss = per_row if weights is None else per_row * weights
        else:
            # every window counts once: rows weigh by their number of windows
            w = n if weights is None else n * weights
            total = (per_row * w).sum()
            loss = total if self.reduction == "sum" else total / w.sum().clamp(min=1e-12)
        abs_c = torch.where(starts, residual.detach().abs(), 0.0)
        write_priority(tensordict, self.tensor_keys.priority, abs_c.sum(-1) / n)
        return TensorDict(
            {
                "loss_objective": loss,
                "residual_abs": abs_c.sum() / starts.sum().clamp(min=1),
                "value_start": start_value.detach().mean(),
                "kl_estimate": ratio.mean(),
                "num_windows": starts.sum().to(torch.float32),
            },
            batch_size=[],
        )


class SequenceKLReinforceLoss(_SequenceLoss):
    """Off-policy REINFORCE for J(π) = E_π[log_reward] − (1/β)·KL(π ‖ π_ref), whose maximizer is
    π ∝ π_ref·exp(β·log_reward).

    With the per-token advantage A_t = log_reward − λ·Σ_{i≥t}(log π_i − log π_ref_i) − b (λ = 1/β,
    the KL as a per-token penalty summed to the end, b the mean sequence advantage of the batch or
    of the completions of the same prompt), the loss is −mean_rows Σ_t w_t·A_t·log π_t with A and w
    detached. The importance weights w correct for completions sampled by another policy, from the
    stored behaviour log-probs b_t:

    - ``is_level="sequence"``: one weight per completion, exp(Σ_t log π_t − log b_t) (unbiased,
      high variance); ``"token"``: w_t = exp(log π_t − log b_t) per token (TRL / verl's
      token-level correction: lower variance, ignores the prefix's mismatch).
    - ``is_mode="truncate"``: w ← min(w, ``is_max``) (TRL's ``*_truncate``, verl / OpenRLHF TIS);
      ``"mask"``: w ← 0 outside [``is_min``, ``is_max``] (TRL's ``*_mask``, OpenRLHF icepop);
      ``"none"``: raw weights; ``"off"``: no weights at all (on-policy data only).

    Logged: ``ess`` (the effective sample size 1/Σŵ² of the normalized sequence weights, out of
    B), ``is_weight_mean``, ``is_clipped_fraction``.
    """

    def __init__(
        self,
        actor_network: nn.Module,
        prior_network: nn.Module | None = None,
        *,
        beta: float = 1.0,
        is_level: Literal["token", "sequence"] = "token",
        is_mode: Literal["truncate", "mask", "none", "off"] = "truncate",
        is_max: float = 3.0,
        is_min: float = 0.0,
        baseline: Literal["batch", "group", "none"] = "batch",
        reduction: Reduction = "mean",
        check_finite: bool = False,
    ) -> None:
        super().__init__(actor_network, prior_network, beta, reduction, check_finite)
        if is_level not in ("token", "sequence"):
            raise ValueError(f"is_level must be 'token' or 'sequence', got {is_level!r}")
        if is_mode not in ("truncate", "mask", "none", "off"):
            raise ValueError(
                f"is_mode must be 'truncate', 'mask', 'none' or 'off', got {is_mode!r}"
            )
        if baseline not in ("batch", "group", "none"):
            raise ValueError(f"baseline must be 'batch', 'group' or 'none', got {baseline!r}")
        self.is_level, self.is_mode, self.baseline = is_level, is_mode, baseline
        self.is_max = coefficient("is_max", is_max, strictly_above=True)
        self.is_min = coefficient("is_min", is_min, maximum=self.is_max)

    @property
    def in_keys(self) -> list[NestedKey]:
        return [*super().in_keys, self.tensor_keys.behaviour_log_prob]

    @property
    def out_keys(self) -> list[str]:
        return [
            "loss_objective",
            "log_reward_mean",
            "kl_estimate",
            "ess",
            "is_weight_mean",
            "is_clipped_fraction",
        ]

    def _correct(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """The corrected weights and the bool mask of those changed by the correction."""
        if self.is_mode == "truncate":
            return w.clamp(max=self.is_max), w > self.is_max
        if self.is_mode == "mask":
            outside = (w > self.is_max) | (w < self.is_min)
            return torch.where(outside, torch.zeros_like(w), w), outside
        return w, torch.zeros_like(w, dtype=torch.bool)

    def _baseline(self, advantage: Tensor, batch: TensorDictBase) -> Tensor:
        if self.baseline == "none":
            return torch.zeros_like(advantage)
        if self.baseline == "batch":
            return advantage.mean().expand_as(advantage)
        prompt = batch.get(self.tensor_keys.prompt).reshape(-1).long()
        groups, index = torch.unique(prompt, return_inverse=True)
        sums = advantage.new_zeros(groups.numel()).index_add_(0, index, advantage)
        counts = advantage.new_zeros(groups.numel()).index_add_(
            0, index, torch.ones_like(advantage)
        )
        return (sums / counts)[index]

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        td = tensordict
        mask = self._mask(td)
        log_q = self._actor(lambda m: m.token_log_probs(td))
        dtype = log_q.dtype
        zero = torch.zeros((), dtype=dtype, device=log_q.device)
        log_p = self.reference_log_probs(td, mask).to(dtype)
        log_r = self._log_reward(td, dtype)
        lam = 1.0 / self.beta
        kl_step = torch.where(mask, log_q.detach() - log_p, zero)
        kl_to_go = kl_step.flip(-1).cumsum(-1).flip(-1)
        seq_adv = log_r - lam * kl_step.sum(-1)
        base = self._baseline(seq_adv, td)
        adv = (log_r - base).unsqueeze(-1) - lam * kl_to_go
        n_rows = mask.shape[0]
        if self.is_mode == "off":
            w_tok = mask.to(dtype)
            seq_w = torch.ones(n_rows, dtype=dtype, device=log_q.device)
            changed = torch.zeros_like(mask)
        else:
            key = self.tensor_keys.behaviour_log_prob
            log_b = td.get(key, None)
            if log_b is None:
                raise KeyError(f"off-policy KL-REINFORCE needs the behaviour log-probs {key!r}")
            if self.check_finite:
                check_finite_tensor(key, torch.where(mask, log_b, 0.0), 1)
            log_ratio = torch.where(mask, log_q.detach() - log_b.to(dtype), zero)
            if self.is_level == "sequence":
                seq_w, seq_changed = self._correct(log_ratio.sum(-1).exp())
                w_tok = torch.where(mask, seq_w.unsqueeze(-1), zero)
                changed = seq_changed.unsqueeze(-1) & mask
            else:
                w_tok, changed = self._correct(log_ratio.exp())
                w_tok = torch.where(mask, w_tok, zero)
                changed &= mask
            seq_w = log_ratio.sum(-1).exp()
        per_row = -(w_tok * adv * torch.where(mask, log_q, zero)).sum(-1)
        loss = self._reduce_rows(per_row, self._row_weights(td, dtype))
        write_priority(td, self.tensor_keys.priority, (seq_adv - base).detach().abs())
        normalized = seq_w / seq_w.sum().clamp(min=torch.finfo(dtype).tiny)
        return TensorDict(
            {
                "loss_objective": loss,
                "log_reward_mean": log_r.mean(),
                "kl_estimate": kl_step.sum(-1).mean(),
                "ess": 1.0 / normalized.pow(2).sum(),
                "is_weight_mean": w_tok.sum() / mask.sum().clamp(min=1),
                "is_clipped_fraction": changed.sum().to(dtype) / mask.sum().clamp(min=1),
            },
            batch_size=[],
        )


class SequenceMLELoss(_SequenceLoss):
    """Maximum likelihood of the stored completions (supervised fine-tuning, or pre-training a
    prior on text): the mean over completions of −Σ_t log π(y_t|x, y_<t). Rewards, reference
    and behaviour log-probs are not read.

    Args:
        actor_network: the trained policy (:class:`SequencePolicy`).
        reduction: ``"mean"`` (over completions, weighted by ``priority_weight``), ``"sum"`` or
            ``"none"`` (``[B]``).
    """

    def __init__(self, actor_network: nn.Module, *, reduction: Reduction = "mean") -> None:
        super().__init__(actor_network, None, 1.0, reduction, False)

    @property
    def in_keys(self) -> list[NestedKey]:
        k = self.tensor_keys
        return [k.response, k.response_mask]

    @property
    def out_keys(self) -> list[str]:
        return ["loss_objective", "nll_per_token"]

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        mask = self._mask(tensordict)
        log_q = self._actor(lambda m: m.token_log_probs(tensordict))
        nll = -torch.where(mask, log_q, 0.0).sum(-1)
        loss = self._reduce_rows(nll, self._row_weights(tensordict, nll.dtype))
        return TensorDict(
            {
                "loss_objective": loss,
                "nll_per_token": nll.detach().sum() / mask.sum().clamp(min=1),
            },
            batch_size=[],
        )
