"""A known random autoregressive prior over a small vocabulary, for exact checks by enumeration.

Every prompt has its own table of next-token logits over all prefixes of non-end tokens; a
completion stops at the end token (kept as its last token) or after ``max_new_tokens`` tokens.
Each possible completion has a known ``log_reward`` (Gaussian, seeded), so the target
prior·exp(β·log_reward), normalized per prompt, is computed exactly by enumeration.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

__all__ = ["RandomAutoregressivePrior"]


class RandomAutoregressivePrior:
    """Args:
    vocab_size: token ids ``0..vocab_size-1``, the end token included.
    eos_id: the end token.
    max_new_tokens: the length limit.
    num_prompts: prompts ``p = 0..P-1``, with token ids ``prompt_ids[p]``.
    seed: seeds the logits and the rewards.
    temperature: scale of the Gaussian logits.
    reward_scale: standard deviation of the log-rewards (nats).
    """

    def __init__(
        self,
        vocab_size: int = 5,
        eos_id: int = 4,
        max_new_tokens: int = 4,
        num_prompts: int = 2,
        *,
        seed: int = 0,
        temperature: float = 1.0,
        reward_scale: float = 1.0,
    ) -> None:
        if not 0 <= eos_id < vocab_size:
            raise ValueError(f"eos_id must lie in [0, {vocab_size}), got {eos_id}")
        self.vocab_size, self.eos_id = vocab_size, eos_id
        self.max_new_tokens, self.num_prompts = max_new_tokens, num_prompts
        self.symbols = [t for t in range(vocab_size) if t != eos_id]
        k = len(self.symbols)
        self.prompt_ids = [[p % vocab_size, (p * 3 + 1) % k] for p in range(num_prompts)]
        # prefix (non-end tokens, length < max_new_tokens) -> row of the logit table
        self._offsets = [sum(k**i for i in range(n)) for n in range(max_new_tokens + 1)]
        self._digit = torch.full((vocab_size,), -1, dtype=torch.long)
        self._digit[self.symbols] = torch.arange(k)
        g = torch.Generator().manual_seed(seed)
        nodes = self._offsets[max_new_tokens]
        logits = torch.randn(num_prompts, nodes, vocab_size, generator=g, dtype=torch.float64)
        self.log_policy = (temperature * logits).log_softmax(-1)  # [P, nodes, V]
        self.completions = [
            (*prefix, eos_id)
            for n in range(max_new_tokens)
            for prefix in itertools.product(self.symbols, repeat=n)
        ] + list(itertools.product(self.symbols, repeat=max_new_tokens))
        self.index = {c: i for i, c in enumerate(self.completions)}
        self.log_reward = reward_scale * torch.randn(
            num_prompts, len(self.completions), generator=g, dtype=torch.float64
        )

    def _node(self, prefix: tuple[int, ...]) -> int:
        code = 0
        for t in prefix:
            code = code * len(self.symbols) + int(self._digit[t])
        return self._offsets[len(prefix)] + code

    def token_log_probs(self, prompt: int, completion: tuple[int, ...]) -> list[float]:
        """log prior(y_t | prompt, y_<t) of each token of ``completion``."""
        return [
            float(self.log_policy[prompt, self._node(tuple(completion[:t])), tok])
            for t, tok in enumerate(completion)
        ]

    def log_prob_table(self) -> Tensor:
        """log prior(y | prompt) ``[P, N]`` (float64) of every completion ``self.completions``."""
        return torch.tensor(
            [
                [sum(self.token_log_probs(p, c)) for c in self.completions]
                for p in range(self.num_prompts)
            ],
            dtype=torch.float64,
        )

    def target(self, beta: float) -> Tensor:
        """prior·exp(β·log_reward), normalized per prompt: ``[P, N]`` float64 probabilities."""
        return (self.log_prob_table() + beta * self.log_reward).softmax(-1)

    def sample(self, prompts: Tensor, generator: torch.Generator | None = None) -> list[dict]:
        """One completion per entry of ``prompts`` ``[n]`` (prompt indices), as import records:
        ``prompt_ids``, ``completion_ids``, ``logprobs`` (the prior's: it is the sampler),
        ``ref_logprobs`` (the same: it is also the reference), ``log_reward``, ``group_id``.
        Sampled for all rows at once, one position at a time."""
        n, k = prompts.numel(), len(self.symbols)
        node = torch.zeros(n, dtype=torch.long)
        code = torch.zeros(n, dtype=torch.long)
        alive = torch.ones(n, dtype=torch.bool)
        tokens, logps = [], []
        for t in range(self.max_new_tokens):
            logp = self.log_policy[prompts, node]
            draw = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
            tokens.append(torch.where(alive, draw, -1))
            logps.append(logp.gather(-1, draw.unsqueeze(-1)).squeeze(-1))
            alive &= draw != self.eos_id
            code = code * k + self._digit[draw].clamp(min=0)
            node = torch.where(alive, self._offsets[t + 1] + code, 0)
        tokens_t, logps_t = torch.stack(tokens, 1), torch.stack(logps, 1)
        records = []
        for row in range(n):
            keep = tokens_t[row] >= 0
            completion = tuple(int(x) for x in tokens_t[row][keep])
            lp = [float(x) for x in logps_t[row][keep]]
            p = int(prompts[row])
            records.append(
                {
                    "prompt_ids": list(self.prompt_ids[p]),
                    "completion_ids": list(completion),
                    "logprobs": lp,
                    "ref_logprobs": lp,
                    "log_reward": float(self.log_reward[p, self.index[completion]]),
                    "group_id": p,
                }
            )
        return records

    def all_records(self) -> list[dict]:
        """Every possible completion of every prompt as a record (``zarrl score`` input)."""
        return [
            {
                "prompt_ids": list(self.prompt_ids[p]),
                "completion_ids": list(c),
                "logprobs": self.token_log_probs(p, c),
                "log_reward": float(self.log_reward[p, i]),
                "group_id": p,
            }
            for p in range(self.num_prompts)
            for i, c in enumerate(self.completions)
        ]

    def total_variation(self, records: list[dict], key: str, beta: float) -> list[float]:
        """Per prompt, TV between exp(record[key]) over the enumerated completions and the
        target; every completion of every prompt must appear once in ``records``."""
        learned = torch.full(
            (self.num_prompts, len(self.completions)), math.nan, dtype=torch.float64
        )
        by_prompt = {tuple(ids): p for p, ids in enumerate(self.prompt_ids)}
        for r in records:
            learned[by_prompt[tuple(r["prompt_ids"])], self.index[tuple(r["completion_ids"])]] = r[
                key
            ]
        if torch.isnan(learned).any():
            raise ValueError("records do not cover every completion of every prompt")
        return (0.5 * (learned.exp() - self.target(beta)).abs().sum(-1)).tolist()
