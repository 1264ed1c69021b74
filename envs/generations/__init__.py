"""zarrl.envs.generations: autoregressive policies over token ids for logged generations.

:class:`CausalTransformerPolicy` (torch only) and :class:`HFCausalLMPolicy` (a Hugging Face causal
LM, optional ``llm`` extra) both implement :class:`zarrl.algorithms.SequencePolicy` and
:class:`zarrl.algorithms.SequenceHeads` through :class:`AutoregressivePolicy`.
"""

from zarrl.envs.generations.base import AutoregressivePolicy, LogZHead
from zarrl.envs.generations.hf import HFCausalLMPolicy
from zarrl.envs.generations.transformer import CausalTransformerPolicy

__all__ = ["AutoregressivePolicy", "CausalTransformerPolicy", "HFCausalLMPolicy", "LogZHead"]
