"""The RTB ⇔ Trust-PCL equivalence (Deleu et al. 2025, Prop. 3.1), executable.

Trust-PCL with γ = 1, τ_H = 0, λ = α = 1/β, the fixed prior as reference, one window per trajectory
(``rollout="full"``, ``window_starts="first"``) and V(s₀) = α·log Z has residual C(τ) = −α·δ(τ), so
its loss is α²·L_RTB for every parameter value.
"""

from __future__ import annotations

import torch
from tensordict import NestedKey, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from zarrl.algorithms.rtb import RTBLoss
from zarrl.algorithms.sequence_losses import SequenceRTBLoss, SequenceTrustPCLLoss
from zarrl.algorithms.trust_pcl import TrustPCLLoss

__all__ = [
    "LogZValue",
    "rtb_from_trust_pcl",
    "sequence_rtb_from_trust_pcl",
    "sequence_trust_pcl_from_rtb",
    "trust_pcl_from_rtb",
]


class LogZValue(TensorDictModuleBase):
    """A value "network" writing ``scale·log_z`` for every state (``[*B, 1]``).

    Args:
        log_z: the scalar parameter (shared, e.g. ``RTBLoss.log_z``).
        scale: α.
        out_key: where to write. Default ``"state_value"``.
    """

    def __init__(self, log_z: nn.Parameter, scale: float, out_key: NestedKey = "state_value"):
        super().__init__()
        self.log_z, self.scale = log_z, float(scale)
        self.in_keys: list[NestedKey] = []
        self.out_keys: list[NestedKey] = [out_key]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        value = (self.scale * self.log_z).expand(*tensordict.batch_size, 1)
        tensordict.set(self.out_keys[0], value)
        return tensordict


def trust_pcl_from_rtb(rtb: RTBLoss) -> TrustPCLLoss:
    """The Trust-PCL loss equal to α²·``rtb`` (α = 1/β), sharing its actor and ``log_z``."""
    alpha = 1.0 / rtb.beta
    loss = TrustPCLLoss(
        rtb.actor_network,
        LogZValue(rtb.log_z, alpha),
        reference_network=rtb.prior_network,
        gamma=1.0,
        entropy_coef=0.0,
        kl_coef=alpha,
        rollout="full",
        window_starts="first",
        critic_coef=1.0,
        reduction=rtb.reduction,
    )
    loss.set_keys(**{k: getattr(rtb.tensor_keys, k) for k in rtb.tensor_keys.__dataclass_fields__})
    return loss


def rtb_from_trust_pcl(loss: TrustPCLLoss, initial_state: TensorDictBase | None = None) -> RTBLoss:
    """The RTB loss whose α²-multiple is ``loss`` (β = 1/λ, prior = the fixed reference).

    ``log_z`` starts at V(s₀)/λ when ``initial_state`` (a TensorDict of the initial state, batch
    ``[]`` or ``[1]``) is given, else at 0. Raises ``ValueError`` naming the first setting of
    ``loss`` that breaks the equivalence.
    """
    lam = float(loss.kl_coef)
    checks = [
        (loss.gamma == 1.0, f"gamma must be 1, got {loss.gamma}"),
        (loss.entropy_coef == 0.0, f"entropy_coef must be 0, got {loss.entropy_coef}"),
        (loss.lambda_tuner is None and lam > 0, f"needs a fixed kl_coef > 0, got {lam}"),
        (loss.reference_network is not None, "needs a fixed reference_network (the prior)"),
        (loss.rollout == "full", f"rollout must be 'full', got {loss.rollout!r}"),
        (
            loss.window_starts == "first",
            f"window_starts must be 'first', got {loss.window_starts!r}",
        ),
        (loss.advantage_clip is None, "advantage_clip must be None"),
        (loss.critic_coef == 1.0, f"critic_coef must be 1, got {loss.critic_coef}"),
        (not loss.bootstrap_from_target, "bootstrap_from_target must be False"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"this TrustPCLLoss has no RTB equivalent: {message}")
    log_z_init = 0.0
    if initial_state is not None:
        with (
            torch.no_grad(),
            loss.value_network_params.to_module(loss.value_network, preserve_module_state=False),
        ):
            out = loss.value_network(initial_state.copy())
        log_z_init = float(out.get(loss.tensor_keys.value).reshape(-1)[0]) / lam
    rtb = RTBLoss(
        loss.actor_network, loss.reference_network, 1.0 / lam, log_z_init, reduction=loss.reduction
    )
    rtb.set_keys(**{k: getattr(loss.tensor_keys, k) for k in rtb.tensor_keys.__dataclass_fields__})
    return rtb


def sequence_trust_pcl_from_rtb(rtb: SequenceRTBLoss) -> SequenceTrustPCLLoss:
    """The sequence Trust-PCL loss equal to α²·``rtb`` (α = 1/β): whole completions
    (``rollout="full"``), V(prompt) = α·log Z(prompt), the same policy, reference and keys."""
    loss = SequenceTrustPCLLoss(
        rtb.actor_network,
        rtb.prior_network,
        beta=rtb.beta,
        rollout="full",
        entropy_coef=0.0,
        reduction=rtb.reduction,
        check_finite=rtb.check_finite,
    )
    loss.set_keys(**{k: getattr(rtb.tensor_keys, k) for k in rtb.tensor_keys.__dataclass_fields__})
    return loss


def sequence_rtb_from_trust_pcl(loss: SequenceTrustPCLLoss) -> SequenceRTBLoss:
    """The sequence RTB loss whose α²-multiple is ``loss`` (β the same); raises ``ValueError``
    naming the setting of ``loss`` that breaks the equivalence."""
    if loss.rollout != "full":
        raise ValueError(
            f"this SequenceTrustPCLLoss has no RTB equivalent: rollout must be 'full', got "
            f"{loss.rollout!r}"
        )
    if loss.entropy_coef != 0.0:
        raise ValueError(
            "this SequenceTrustPCLLoss has no RTB equivalent: entropy_coef must be 0, got "
            f"{loss.entropy_coef}"
        )
    rtb = SequenceRTBLoss(
        loss.actor_network,
        loss.prior_network,
        beta=loss.beta,
        reduction=loss.reduction,
        check_finite=loss.check_finite,
    )
    rtb.set_keys(**{k: getattr(loss.tensor_keys, k) for k in loss.tensor_keys.__dataclass_fields__})
    return rtb
