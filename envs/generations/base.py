"""The shared half of every autoregressive policy in zarrl: scoring, heads and sampling on top of
one method, :meth:`AutoregressivePolicy.features`.

Sequence batches follow ``docs/generations.md``: prompts ``[B, Lp]`` left-padded, completions
``[B, L]`` right-padded, each with a bool mask.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn

__all__ = ["AutoregressivePolicy", "LogZHead"]

PROMPT_TOKENS, PROMPT_MASK = ("tokens", "prompt"), ("masks", "prompt")
RESPONSE_TOKENS, RESPONSE_MASK = ("tokens", "response"), ("masks", "response")
BEHAVIOUR = ("log_probs", "behaviour")


class LogZHead(nn.Module):
    """log Z(prompt): a table over prompt indices (``num_prompts`` given: few prompts) or a small
    MLP on the prompt encoding (many prompts, or prompts never seen in training).

    Args:
        hidden_size: width of the prompt encoding.
        num_prompts: size of the table, or ``None`` for the MLP head.
    """

    def __init__(self, hidden_size: int, num_prompts: int | None) -> None:
        super().__init__()
        self.num_prompts = num_prompts
        if num_prompts is not None:
            if num_prompts <= 0:
                raise ValueError(f"num_prompts must be > 0, got {num_prompts}")
            self.table = nn.Parameter(torch.zeros(num_prompts))
        else:
            self.mlp = nn.Sequential(
                nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1)
            )

    def forward(self, prompt_index: Tensor | None, prompt_encoding: Tensor) -> Tensor:
        """log Z ``[B]`` from the prompt indices ``[B]`` (table) or the encodings ``[B, H]``."""
        if self.num_prompts is None:
            return self.mlp(prompt_encoding).squeeze(-1)
        if prompt_index is None:
            raise KeyError("the log Z table needs the batch's 'prompt' entry (prompt indices)")
        bad = (prompt_index < 0) | (prompt_index >= self.num_prompts)
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise IndexError(
                f"prompt index {int(prompt_index[i])} (batch row {i}) is outside the log Z table "
                f"of {self.num_prompts} prompts"
            )
        return self.table[prompt_index]


class AutoregressivePolicy(nn.Module):
    """Scoring, V(prefix), log Z and batched sampling for a model providing :meth:`features`.

    Subclasses set ``vocab_size`` and the heads ``value_head`` (``H -> 1``) and ``log_z_head``
    (:class:`LogZHead`), and implement :meth:`features`.
    """

    vocab_size: int
    value_head: nn.Module
    log_z_head: LogZHead

    def features(
        self, prompt_tokens: Tensor, prompt_mask: Tensor, response_tokens: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(logits [B, L+1, V], hidden [B, L+1, H])`` at the L + 1 prefixes of the response:
        row t predicts response token t from the prompt and tokens ``< t``; ``hidden[:, 0]`` is
        the prompt's encoding."""
        raise NotImplementedError

    def _inputs(self, batch: TensorDictBase) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        try:
            prompt, pmask = batch.get(PROMPT_TOKENS), batch.get(PROMPT_MASK)
            response, rmask = batch.get(RESPONSE_TOKENS), batch.get(RESPONSE_MASK)
        except KeyError as err:
            raise KeyError(
                f"a sequence batch needs {PROMPT_TOKENS}, {PROMPT_MASK}, {RESPONSE_TOKENS} and "
                f"{RESPONSE_MASK}: {err}"
            ) from None
        if response.numel() and (response.min() < 0 or response.max() >= self.vocab_size):
            raise ValueError(
                f"{RESPONSE_TOKENS}: token ids must lie in [0, {self.vocab_size}), got "
                f"[{int(response.min())}, {int(response.max())}]"
            )
        return prompt, pmask.to(torch.bool), response, rmask.to(torch.bool)

    def score_with_heads(self, batch: TensorDictBase) -> tuple[Tensor, Tensor, Tensor]:
        """``(token_log_probs [B, L], value [B, L+1], log_z [B])`` from one pass of the model."""
        prompt, pmask, response, rmask = self._inputs(batch)
        logits, hidden = self.features(prompt, pmask, response)
        log_probs = self._gather(logits, response, rmask)
        value = self.value_head(hidden).squeeze(-1)
        log_z = self.log_z_head(batch.get("prompt", None), hidden[:, 0])
        return log_probs, value, log_z

    @staticmethod
    def _gather(logits: Tensor, response: Tensor, rmask: Tensor) -> Tensor:
        L = response.shape[1]
        lp = logits[:, :L].log_softmax(-1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
        return torch.where(rmask, lp, torch.zeros((), dtype=lp.dtype, device=lp.device))

    def token_log_probs(self, batch: TensorDictBase) -> Tensor:
        """log π(token_t | prompt, tokens_<t) ``[B, L]`` (nats), 0 on padding."""
        prompt, pmask, response, rmask = self._inputs(batch)
        logits, _ = self.features(prompt, pmask, response)
        return self._gather(logits, response, rmask)

    def value(self, batch: TensorDictBase) -> Tensor:
        """V(prefix) ``[B, L+1]`` (nats)."""
        return self.score_with_heads(batch)[1]

    def log_z(self, batch: TensorDictBase) -> Tensor:
        """log Z(prompt) ``[B]`` (nats)."""
        return self.score_with_heads(batch)[2]

    @torch.no_grad()
    def generate(
        self,
        prompt_tokens: Tensor,
        prompt_mask: Tensor,
        max_new_tokens: int,
        eos_id: int,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> TensorDict:
        """One completion per prompt row, sampled token by token for the whole batch at once
        (the loop runs over positions, never rows): a row stops after ``eos_id`` or after
        ``max_new_tokens`` tokens. ``("log_probs", "behaviour")`` are the log-probs of the
        sampled tokens under the sampling distribution (``temperature`` 1: this policy's)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not 0 <= eos_id < self.vocab_size:
            raise ValueError(f"eos_id must lie in [0, {self.vocab_size}), got {eos_id}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        prompt_mask = prompt_mask.to(torch.bool)
        B, device = prompt_tokens.shape[0], prompt_tokens.device
        tokens = torch.zeros(B, 0, dtype=torch.long, device=device)
        mask = torch.zeros(B, 0, dtype=torch.bool, device=device)
        log_probs = torch.zeros(B, 0, device=device)
        alive = torch.ones(B, dtype=torch.bool, device=device)
        ended = torch.zeros(B, dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            logits, _ = self.features(prompt_tokens, prompt_mask, tokens)
            logp = (logits[:, -1].float() / temperature).log_softmax(-1)
            draw = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
            lp = logp.gather(-1, draw.unsqueeze(-1)).squeeze(-1)
            draw = torch.where(alive, draw, torch.zeros_like(draw))
            tokens = torch.cat([tokens, draw.unsqueeze(-1)], 1)
            mask = torch.cat([mask, alive.unsqueeze(-1)], 1)
            log_probs = torch.cat([log_probs, torch.where(alive, lp, 0.0).unsqueeze(-1)], 1)
            ended |= alive & (draw == eos_id)
            alive &= draw != eos_id
            if not alive.any():
                break
        return TensorDict(
            {
                PROMPT_TOKENS: prompt_tokens,
                PROMPT_MASK: prompt_mask,
                RESPONSE_TOKENS: tokens,
                RESPONSE_MASK: mask,
                BEHAVIOUR: log_probs,
                "terminated": ended,
            },
            batch_size=[B],
        )
