"""The policies of the ``generations`` task, by ``model.kind``: ``default`` (zarrl's own
:class:`~zarrl.envs.generations.CausalTransformerPolicy`, sized by ``env.options``) or ``hf``
(a Hugging Face causal LM through :class:`~zarrl.envs.generations.HFCausalLMPolicy`, ``llm``
extra).

``model.hf`` (kind ``hf``) takes exactly one of

- ``path``: a local folder written by ``save_pretrained`` (``from_pretrained`` with
  ``local_files_only``: nothing is fetched from a hub);
- ``config``: keyword arguments of the model's config class (``model_type``, default ``llama``;
  ``vocab_size`` defaults to the buffer's), a freshly initialized model;

and optionally ``bos_id`` (a token put before every prompt; needed when a prompt may be empty) and
``dtype`` (``float32`` | ``bfloat16`` | ``float16``; default ``float32``). The model's config is
kept in the run's checkpoint (:func:`hf_description`), so a resumed run, ``zarrl sample`` and
``zarrl score`` rebuild the model from the checkpoint alone (the folder is no longer read).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from zarrl.engine.config import ConfigError
from zarrl.envs.generations import CausalTransformerPolicy, HFCausalLMPolicy

__all__ = ["HF_KEYS", "build_policy", "hf_description"]

HF_KEYS = ("path", "config", "model_type", "bos_id", "dtype")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_policy(
    kind: str,
    hf: Mapping[str, Any],
    options: Mapping[str, Any],
    facts: Mapping[str, int],
    *,
    hf_config: str | None = None,
) -> nn.Module:
    """A fresh policy for the buffer ``facts`` (vocabulary, length limit, prompts): zarrl's
    transformer (``kind`` ``default``, sized by ``options``) or the causal LM of ``hf``
    (``hf_config``: the JSON config of :func:`hf_description`, rebuilt without reading
    ``hf.path`` and with fresh weights, which a checkpoint then overwrites)."""
    num_prompts = facts["num_prompts"] if options["log_z"] == "table" else None
    if kind == "default":
        return CausalTransformerPolicy(
            facts["vocab_size"],
            d_model=options["d_model"],
            num_layers=options["num_layers"],
            num_heads=options["num_heads"],
            max_positions=max(64, 1 + facts["max_prompt_len"] + facts["max_new_tokens"]),
            num_prompts=num_prompts,
        )
    spec = _check_hf(hf)
    model = _causal_lm(spec, facts["vocab_size"], hf_config)
    vocab = int(model.config.vocab_size)
    if vocab != facts["vocab_size"]:
        raise ConfigError(
            f"model.hf: the model's vocab_size is {vocab}, the buffer's {facts['vocab_size']} "
            "(import the logs with --vocab-size equal to the model's)"
        )
    policy = HFCausalLMPolicy(model, num_prompts=num_prompts, bos_id=spec.get("bos_id"))
    return policy.to(DTYPES[spec.get("dtype", "float32")])


def hf_description(policy: nn.Module) -> str | None:
    """The JSON config of a :class:`HFCausalLMPolicy`'s model (``None`` for another policy)."""
    if not isinstance(policy, HFCausalLMPolicy):
        return None
    return policy.model.config.to_json_string(use_diff=False)


def _check_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
    spec = dict(hf)
    unknown = sorted(set(spec) - set(HF_KEYS))
    if unknown:
        raise ConfigError(f"model.hf: unknown key {unknown[0]!r} (expected {', '.join(HF_KEYS)})")
    if ("path" in spec) == ("config" in spec):
        raise ConfigError(
            "model.hf: give exactly one of path (a save_pretrained folder) or config (the "
            "keyword arguments of a fresh model's config)"
        )
    if "config" in spec and not isinstance(spec["config"], Mapping):
        raise ConfigError(f"model.hf.config: got {spec['config']!r}, expected a mapping")
    if spec.get("dtype", "float32") not in DTYPES:
        raise ConfigError(
            f"model.hf.dtype: got {spec['dtype']!r}, expected one of {', '.join(DTYPES)}"
        )
    bos = spec.get("bos_id")
    if bos is not None and (isinstance(bos, bool) or not isinstance(bos, int) or bos < 0):
        raise ConfigError(f"model.hf.bos_id: got {bos!r}, expected a token id or null")
    return spec


def _causal_lm(spec: Mapping[str, Any], vocab_size: int, hf_config: str | None) -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a folder or a config: never the hub
    try:
        import transformers
    except ImportError as err:
        raise ConfigError(
            "model.kind: 'hf' needs the transformers package: pip install 'zarrl[llm]'"
        ) from err
    if hf_config is not None:
        data = json.loads(hf_config)
        config = transformers.AutoConfig.for_model(data.pop("model_type"), **data)
        return transformers.AutoModelForCausalLM.from_config(config)
    if "path" in spec:
        path = Path(spec["path"])
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model.hf.path: {str(path)!r} is not a save_pretrained folder (no config.json)"
            )
        try:
            return transformers.AutoModelForCausalLM.from_pretrained(
                str(path), local_files_only=True
            )
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.hf.path: {str(path)!r} cannot be loaded: {err}") from err
    kwargs = {"vocab_size": vocab_size, **spec["config"]}
    try:
        config = transformers.AutoConfig.for_model(spec.get("model_type", "llama"), **kwargs)
        return transformers.AutoModelForCausalLM.from_config(config)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.hf.config: {err}") from err
