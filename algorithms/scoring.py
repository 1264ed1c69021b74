"""The scoring hook a policy may offer the losses (a declared interface, no attribute probing)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from tensordict import NestedKey, TensorDictBase
from torch import Tensor

__all__ = ["BatchedLogProb"]


@runtime_checkable
class BatchedLogProb(Protocol):
    """A policy that scores a whole batch of steps in one call.

    ``batched_log_prob(td, action_key)`` returns log π(a|s) ``[*B]`` (nats, summed over the action
    dims) of ``td[action_key]`` for a ``td`` of batch shape ``[*B]`` (e.g. ``[B, T]``
    trajectories): the same value as ``policy.get_dist(td).log_prob(action)`` summed over the
    action dims, typically through a fused kernel. Every loss of :mod:`zarrl.algorithms` scores a
    policy that implements it through this method, and any other TorchRL actor through
    ``get_dist``. ``zarrl.envs.gmm_posterior.DiffusionActor`` implements it; an instance whose
    ``batched_log_prob`` is set to ``None`` is scored through ``get_dist``.
    """

    def batched_log_prob(self, td: TensorDictBase, action_key: NestedKey | None = None) -> Tensor:
        """log π(a|s) ``[*B]`` (nats) of ``td[action_key]``."""
        ...
