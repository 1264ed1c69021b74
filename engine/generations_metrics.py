"""Evaluation metrics of the ``generations`` task, from the policy's own samples and the logs.

Per evaluation, ``samples`` completions of each of the buffer's first ``prompts`` prompts are
drawn from the policy (one seeded generator: every evaluation draws with the same noise, and the
training's random streams are untouched), then:

- ``distinct_completions``: distinct completions among a prompt's samples, averaged over prompts;
- ``logged_share``: the share of samples whose (prompt, completion) appears in the logs;
- ``log_reward_mean``: mean log_reward of the samples found in the logs (a completion logged more
  than once: the mean of its logged rewards). Offline there is no reward function: a sample never
  logged has no reward, so this is the mean over the ``logged_share`` of samples that have one;
- ``kl_to_reference``: KL(policy ‖ reference) in nats, the sample mean of
  Σ_t (log π − log π_ref). The reference is scored on every sample where it is a model
  (``reference_run``); where it is the stored ``ref_logprobs``, over the samples found in the logs;
- ``tv_to_target`` (when the completion space is enumerable: at most ``enumerate_max``
  completions over the evaluated prompts, every one of them logged, and a loss with β): the total
  variation between the policy and prior·exp(β·log_reward) normalized per prompt, both computed
  exactly by enumeration; the largest over the evaluated prompts.

A (prompt, completion) pair is found in the logs through one integer key per completion: its
tokens as digits in base V + 1 after the prompt index (exact when they fit in 63 bits, as they
do for every enumerable space), else a 64-bit polynomial hash (a collision has probability
~ n²/2⁶⁴ for n completions). The logs are read once, in chunks, at the first evaluation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor, nn

__all__ = ["GenerationsEvaluator", "completion_keys", "enumerate_completions"]

CHUNK = 4096  # completions read, generated or scored per call
_HASH = np.uint64(0x9E3779B97F4A7C15)  # odd: the hash's powers never vanish mod 2^64


def completion_keys(
    prompt: Tensor, tokens: Tensor, mask: Tensor, *, vocab_size: int, max_len: int, exact: bool
) -> np.ndarray:
    """uint64 ``[B]``: one key per (prompt ``[B]``, completion ``[B, L]`` with ``mask``),
    ``Σ_t (token_t + 1)·m^t + prompt·m^max_len`` mod 2⁶⁴ with m = V + 1 (``exact``) or an odd
    64-bit multiplier."""
    L = tokens.shape[1]
    if tokens.shape[1] > max_len:
        raise ValueError(f"completions of {L} tokens exceed the length limit {max_len}")
    m = np.uint64(vocab_size + 1) if exact else _HASH
    powers = np.ones(max_len + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for t in range(1, max_len + 1):  # over positions, not rows
            powers[t] = powers[t - 1] * m
        digits = torch.where(mask, tokens + 1, 0).cpu().numpy().astype(np.uint64)
        keys = (digits * powers[:L]).sum(-1, dtype=np.uint64)
        keys += prompt.cpu().numpy().astype(np.uint64) * powers[max_len]
    return keys


def enumerate_completions(vocab_size: int, eos_id: int, max_len: int) -> tuple[Tensor, Tensor]:
    """Every completion (non-end tokens, then the end token, or ``max_len`` non-end tokens):
    ``(tokens int64 [N, max_len], mask bool [N, max_len])``, shortest first."""
    symbols = torch.tensor([t for t in range(vocab_size) if t != eos_id])
    k = len(symbols)
    tokens, masks = [], []
    for n in range(max_len + 1):  # prefixes of n non-end tokens, as base-k numbers
        code = torch.arange(k**n)
        digits = (code.unsqueeze(-1) // k ** torch.arange(n - 1, -1, -1)) % k
        body = symbols[digits] if n else torch.zeros(1, 0, dtype=torch.long)
        ends = n < max_len
        tok = torch.zeros(len(body), max_len, dtype=torch.long)
        tok[:, :n] = body
        if ends:
            tok[:, n] = eos_id
        mask = torch.arange(max_len) < n + int(ends)
        tokens.append(tok)
        masks.append(mask.expand(len(body), max_len))
    return torch.cat(tokens), torch.cat(masks)


class GenerationsEvaluator:
    """The metrics of the module docstring for the policy trained on ``buffer`` (a
    ``GenerationsBuffer``).

    Args:
        buffer: the run's generations buffer.
        samples: completions drawn per evaluated prompt (0: no metric).
        prompts: the buffer's first ``prompts`` prompts are evaluated.
        enumerate_max: most completions enumerated (over the evaluated prompts) for
            ``tv_to_target`` (0: never).
        seed: the evaluation generator's seed.
    """

    def __init__(
        self, buffer, *, samples: int, prompts: int, enumerate_max: int, seed: int
    ) -> None:
        self.buffer, self.samples, self.seed = buffer, int(samples), int(seed)
        self.prompts = min(int(prompts), buffer.num_prompts)
        self.enumerate_max = int(enumerate_max)
        self.V, self.eos, self.L = buffer.vocab_size, buffer.eos_id, buffer.max_new_tokens
        self.exact = (self.V + 1) ** self.L * max(buffer.num_prompts, 1) < 2**63
        self._logged: dict[str, np.ndarray] | None = None
        self._space: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the logs
    def _keys(self, prompt: Tensor, tokens: Tensor, mask: Tensor) -> np.ndarray:
        return completion_keys(
            prompt, tokens, mask, vocab_size=self.V, max_len=self.L, exact=self.exact
        )

    def logged(self) -> dict[str, np.ndarray]:
        """Sorted distinct keys of the logged completions with their mean log_reward and mean
        Σ_t ref log-prob (float64 ``[U]``; ``ref`` only where the buffer stores them)."""
        if self._logged is not None:
            return self._logged
        keys, rewards, refs = [], [], []
        for start in range(0, self.buffer.num_completions, CHUNK):
            idx = torch.arange(start, min(start + CHUNK, self.buffer.num_completions))
            batch = self.buffer.completions(idx)
            mask = batch["masks", "response"]
            keys.append(self._keys(batch["prompt"], batch["tokens", "response"], mask))
            rewards.append(batch["log_reward"].double().numpy())
            if self.buffer.has_ref:
                ref = torch.where(mask, batch["log_probs", "ref"].double(), 0.0).sum(-1)
                refs.append(ref.numpy())
        unique, inverse, counts = np.unique(
            np.concatenate(keys), return_inverse=True, return_counts=True
        )

        def mean(parts: list[np.ndarray]) -> np.ndarray:
            return np.bincount(inverse, np.concatenate(parts), len(unique)) / counts

        self._logged = {"keys": unique, "log_reward": mean(rewards)}
        if refs:
            self._logged["ref"] = mean(refs)
        return self._logged

    def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(found bool [B], position in the logged arrays [B])``."""
        table = self.logged()["keys"]
        pos = np.searchsorted(table, keys).clip(max=max(len(table) - 1, 0))
        return table[pos] == keys, pos

    # ------------------------------------------------------------------ scoring
    def _prompt_batch(self, prompt: Tensor, tokens: Tensor, mask: Tensor, device) -> TensorDict:
        ptok, pmask = self.buffer.prompt_tokens(prompt)
        return TensorDict(
            {
                ("tokens", "prompt"): ptok,
                ("masks", "prompt"): pmask,
                ("tokens", "response"): tokens,
                ("masks", "response"): mask,
                "prompt": prompt,
            },
            batch_size=[len(prompt)],
        ).to(device)

    @staticmethod
    def _reference_model(loss: nn.Module):
        """A callable scoring Σ_t log π_ref ``[B]`` with the loss's frozen reference model."""
        if getattr(loss, "prior_network", None) is None:
            return None

        def score(batch: TensorDict) -> Tensor:
            mask = batch["masks", "response"]
            return loss.reference_log_probs(batch, mask).double().sum(-1)

        return score

    def _target_space(self, loss: nn.Module, device) -> dict[str, Any] | None:
        """The enumerated completions of the evaluated prompts with their log_reward and
        reference log-prob, or ``None`` where the space is too large or not all logged."""
        if self._space is not None:
            return self._space or None
        self._space = {}
        k = self.V - 1
        n = sum(k**i for i in range(self.L)) + k**self.L
        if self.enumerate_max <= 0 or n * self.prompts > self.enumerate_max:
            return None
        tokens, mask = enumerate_completions(self.V, self.eos, self.L)
        prompt = torch.arange(self.prompts).repeat_interleave(n)
        tokens, mask = tokens.repeat(self.prompts, 1), mask.repeat(self.prompts, 1)
        found, pos = self._lookup(self._keys(prompt, tokens, mask))
        if not found.all():
            return None
        logged = self.logged()
        ref = None
        if "ref" in logged:
            ref = torch.from_numpy(logged["ref"][pos])
        else:
            reference = self._reference_model(loss)
            if reference is None:
                return None
            ref = torch.cat(
                [
                    reference(self._prompt_batch(p, t, m, device)).cpu()
                    for p, t, m in _chunks(prompt, tokens, mask)
                ]
            )
        self._space = {
            "prompt": prompt,
            "tokens": tokens,
            "mask": mask,
            "ref": ref.view(self.prompts, n),
            "log_reward": torch.from_numpy(logged["log_reward"][pos]).view(self.prompts, n),
        }
        return self._space

    # ------------------------------------------------------------------ the metrics
    @torch.no_grad()
    def __call__(self, actor: nn.Module, loss: nn.Module) -> dict[str, float]:
        """The metrics of ``actor`` (the trained policy) under ``loss``'s reference and β."""
        if self.samples <= 0 or self.prompts <= 0:
            return {}
        was_training = actor.training
        actor.eval()
        try:
            return self._evaluate(actor, loss)
        finally:
            actor.train(was_training)

    def _evaluate(self, actor: nn.Module, loss: nn.Module) -> dict[str, float]:
        device = next(actor.parameters()).device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        prompt = torch.arange(self.prompts).repeat_interleave(self.samples)
        ptok, pmask = self.buffer.prompt_tokens(prompt)
        keys, log_pi, log_ref = [], [], []
        reference = None if self.buffer.has_ref else self._reference_model(loss)
        for start in range(0, len(prompt), CHUNK):
            rows = slice(start, start + CHUNK)
            out = actor.generate(
                ptok[rows].to(device), pmask[rows].to(device), self.L, self.eos, generator=generator
            )
            out["prompt"] = prompt[rows].to(device)
            mask = out["masks", "response"]
            keys.append(self._keys(prompt[rows], out["tokens", "response"], mask))
            log_pi.append(torch.where(mask, out["log_probs", "behaviour"], 0.0).double().sum(-1))
            if reference is not None:
                log_ref.append(reference(out))
        keys_np = np.concatenate(keys)
        log_pi_t = torch.cat(log_pi).cpu()
        found, pos = self._lookup(keys_np)
        logged = self.logged()
        distinct = [
            len(np.unique(keys_np[p * self.samples : (p + 1) * self.samples]))
            for p in range(self.prompts)  # over prompts (a few), not rows
        ]
        metrics = {
            "distinct_completions": float(np.mean(distinct)),
            "logged_share": float(found.mean()),
        }
        if found.any():
            metrics["log_reward_mean"] = float(logged["log_reward"][pos[found]].mean())
        if log_ref:
            metrics["kl_to_reference"] = float((log_pi_t - torch.cat(log_ref).cpu()).mean())
        elif "ref" in logged and found.any():
            ref = torch.from_numpy(logged["ref"][pos[found]])
            metrics["kl_to_reference"] = float((log_pi_t[torch.from_numpy(found)] - ref).mean())
        beta = getattr(loss, "beta", None)
        space = self._target_space(loss, device) if beta is not None else None
        if space is not None:
            metrics["tv_to_target"] = self._tv(actor, space, float(beta), device)
        return metrics

    def _tv(self, actor: nn.Module, space: dict[str, Any], beta: float, device) -> float:
        scored = torch.cat(
            [
                actor.token_log_probs(self._prompt_batch(p, t, m, device)).double().sum(-1).cpu()
                for p, t, m in _chunks(space["prompt"], space["tokens"], space["mask"])
            ]
        ).view(self.prompts, -1)
        target = (space["ref"] + beta * space["log_reward"]).softmax(-1)
        tv = 0.5 * (scored.exp() - target).abs().sum(-1)
        value = float(tv.max())
        return value if math.isfinite(value) else math.nan


def _chunks(*tensors: Tensor):
    for start in range(0, len(tensors[0]), CHUNK):
        yield tuple(t[start : start + CHUNK] for t in tensors)
