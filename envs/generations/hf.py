"""A thin adapter exposing a Hugging Face causal LM as a zarrl sequence policy (``llm`` extra).

``transformers`` is imported by the caller that builds the model, never here: the adapter only
calls the model with ``input_ids``, ``attention_mask`` and ``position_ids`` (keywords, so that no
argument lands in another slot) and reads ``logits`` and ``hidden_states``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from zarrl.envs.generations.base import AutoregressivePolicy, LogZHead

__all__ = ["HFCausalLMPolicy"]


class HFCausalLMPolicy(AutoregressivePolicy):
    """A ``transformers`` causal LM (e.g. ``LlamaForCausalLM``) with a V(prefix) head and a log Z
    head on its last hidden state.

    Args:
        model: the causal LM (``model.config.vocab_size`` and ``hidden_size`` are read).
        num_prompts: size of the log Z table (``None``: a head on the prompt encoding).
        bos_id: a token put before every prompt (needed when a prompt may be empty).
    """

    def __init__(
        self, model: nn.Module, *, num_prompts: int | None = None, bos_id: int | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.vocab_size = int(model.config.vocab_size)
        self.bos_id = bos_id
        hidden = int(model.config.hidden_size)
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.log_z_head = LogZHead(hidden, num_prompts)

    def features(
        self, prompt_tokens: Tensor, prompt_mask: Tensor, response_tokens: Tensor
    ) -> tuple[Tensor, Tensor]:
        prompt_mask = prompt_mask.to(torch.bool)
        if self.bos_id is not None:
            bos = torch.full_like(prompt_tokens[:, :1], self.bos_id)
            prompt_tokens = torch.cat([bos, prompt_tokens], 1)
            prompt_mask = torch.cat([torch.ones_like(prompt_mask[:, :1]), prompt_mask], 1)
        if prompt_tokens.shape[1] == 0 or not bool(prompt_mask[:, -1].all()):
            raise ValueError(
                "every prompt needs at least one token, left-padded (give bos_id for empty prompts)"
            )
        Lp, L = prompt_tokens.shape[1], response_tokens.shape[1]
        tokens = torch.cat([torch.where(prompt_mask, prompt_tokens, 0), response_tokens], 1)
        attention = torch.cat([prompt_mask, torch.ones_like(response_tokens, dtype=torch.bool)], 1)
        positions = (attention.long().cumsum(1) - 1).clamp(min=0)
        out = self.model(
            input_ids=tokens,
            attention_mask=attention.long(),
            position_ids=positions,
            output_hidden_states=True,
            use_cache=False,
        )
        logits = out.logits[:, Lp - 1 : Lp + L]
        hidden = out.hidden_states[-1][:, Lp - 1 : Lp + L]
        return logits, hidden
