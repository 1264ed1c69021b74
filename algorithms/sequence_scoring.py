"""What a loss on logged generations asks of an autoregressive policy (a declared interface).

A *sequence batch* is a ``TensorDict`` of batch size ``[B]`` (see ``docs/generations.md``):
``("tokens", "prompt")`` int64 ``[B, Lp]`` left-padded with ``("masks", "prompt")`` bool ``[B, Lp]``;
``("tokens", "response")`` int64 ``[B, L]`` right-padded with ``("masks", "response")`` bool
``[B, L]``; ``("log_probs", "behaviour")`` float ``[B, L]`` (the sampler's), optionally
``("log_probs", "ref")``; ``log_reward`` ``[B]``, ``prompt`` int64 ``[B]`` (prompt index),
``group_id`` ``[B]``, ``terminated`` bool ``[B]``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from tensordict import TensorDictBase
from torch import Tensor

__all__ = ["SequenceHeads", "SequencePolicy"]


@runtime_checkable
class SequencePolicy(Protocol):
    """An autoregressive policy over completions of a prompt, scored a whole batch at a time."""

    def token_log_probs(self, batch: TensorDictBase) -> Tensor:
        """log π(token_t | prompt, tokens_<t) ``[B, L]`` (nats) of ``("tokens", "response")``;
        0 on padding. One batched call, differentiable."""
        ...

    def generate(
        self,
        prompt_tokens: Tensor,
        prompt_mask: Tensor,
        max_new_tokens: int,
        eos_id: int,
        generator: torch.Generator | None = None,
    ) -> TensorDictBase:
        """Sample one completion per prompt row (``[P, Lp]`` left-padded), stopping at ``eos_id``
        (kept as the last token) or after ``max_new_tokens``; returns a sequence batch whose
        ``("log_probs", "behaviour")`` are this policy's log-probs of the sampled tokens."""
        ...


@runtime_checkable
class SequenceHeads(Protocol):
    """The learned heads of the consistency losses: V(prefix) and log Z(prompt)."""

    def value(self, batch: TensorDictBase) -> Tensor:
        """V of every prefix ``[B, L + 1]`` (nats): column t is the value after t response tokens
        (column 0: the prompt alone)."""
        ...

    def log_z(self, batch: TensorDictBase) -> Tensor:
        """log Z(prompt) ``[B]`` (nats): log Σ_y reference(y|x)·exp(β·log_reward(x, y))."""
        ...
