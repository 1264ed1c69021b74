"""A small causal transformer policy over token ids, written in torch (no extra dependency)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from zarrl.envs.generations.base import AutoregressivePolicy, LogZHead

__all__ = ["CausalTransformerPolicy"]


class CausalTransformerPolicy(AutoregressivePolicy):
    """Token + position embeddings, a pre-norm ``nn.TransformerEncoder`` under a causal mask, a
    language-model head, a V(prefix) head and a log Z head. The input is ``[BOS, prompt,
    response]``: the prompt is a prefix (left padding is masked out of attention and skipped by the
    positions), and BOS (id ``vocab_size``, never generated) keeps an empty prompt well defined.

    Args:
        vocab_size: number of token ids the policy emits (the end token included).
        d_model: width; ``num_layers`` blocks of ``num_heads`` heads, MLP width ``4·d_model``.
        max_positions: longest ``1 + prompt + completion`` the position table covers.
        num_prompts: size of the log Z table (``None``: a head on the prompt encoding).
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        d_model: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        max_positions: int = 256,
        num_prompts: int | None = None,
    ) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.vocab_size, self.max_positions = int(vocab_size), int(max_positions)
        self.config = {
            "vocab_size": self.vocab_size,
            "d_model": d_model,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "max_positions": max_positions,
            "num_prompts": num_prompts,
        }
        self.token_embedding = nn.Embedding(vocab_size + 1, d_model)
        self.position_embedding = nn.Embedding(max_positions, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size)
        self.value_head = nn.Linear(d_model, 1)
        self.log_z_head = LogZHead(d_model, num_prompts)
        nn.init.normal_(self.token_embedding.weight, std=0.1)
        nn.init.normal_(self.position_embedding.weight, std=0.1)
        for head in (self.lm_head, self.value_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def features(
        self, prompt_tokens: Tensor, prompt_mask: Tensor, response_tokens: Tensor
    ) -> tuple[Tensor, Tensor]:
        B, Lp = prompt_tokens.shape
        L = response_tokens.shape[1]
        S = 1 + Lp + L
        if self.max_positions < S:
            raise ValueError(
                f"1 + prompt ({Lp}) + completion ({L}) = {S} tokens exceed the policy's "
                f"max_positions ({self.max_positions})"
            )
        device = prompt_tokens.device
        bos = torch.full((B, 1), self.vocab_size, dtype=torch.long, device=device)
        tokens = torch.cat([bos, torch.where(prompt_mask, prompt_tokens, 0), response_tokens], 1)
        valid = torch.cat(
            [
                torch.ones(B, 1, dtype=torch.bool, device=device),
                prompt_mask.to(torch.bool),
                torch.ones(B, L, dtype=torch.bool, device=device),
            ],
            1,
        )
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        causal = torch.ones(S, S, dtype=torch.bool, device=device).triu(1)
        h = self.encoder(x, mask=causal, src_key_padding_mask=~valid)
        h = self.norm(h[:, Lp:])  # the last prompt token (or BOS) and every response token
        return self.lm_head(h), h
