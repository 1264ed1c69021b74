"""The ``generations`` task: fine-tune an autoregressive policy offline from logged generations.

No environment: the learner draws whole completions from a generations buffer
(``zarrl import generations``) through :class:`~zarrl.engine.generations_data.GenerationsDataSource`.
The policy is a :class:`~zarrl.envs.generations.CausalTransformerPolicy` sized from the buffer's
facts (vocabulary, end token, length limit, prompts), or a Hugging Face causal LM
(``model.kind: hf``), optionally started from the policy of another run (``init_run``); the reference is the buffer's stored ``ref_logprobs`` or the frozen
policy of a run folder (``reference_run``). Losses: ``sequence_rtb``, ``sequence_trust_pcl``,
``sequence_kl_reinforce`` (``configs/generations/``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from zarrl.engine.config import ConfigError, EnvConfig, ModelConfig
from zarrl.engine.generations_data import (
    GenerationsDataSource,
    buffer_facts,
    open_generations_buffer,
)
from zarrl.engine.generations_metrics import GenerationsEvaluator
from zarrl.engine.generations_models import build_policy, hf_description
from zarrl.engine.tasks.base import register_task, task_options
from zarrl.envs.generations import AutoregressivePolicy

__all__ = ["GenerationsTask", "RunPolicy", "load_run", "load_run_policy"]

DEFAULTS: dict[str, Any] = {
    "d_model": 64,
    "num_layers": 2,
    "num_heads": 4,
    "log_z": "table",  # table (one log Z per prompt of the buffer) | head (on the prompt encoding)
    "group_size": 0,  # 0: completions drawn uniformly; k: k completions of each drawn prompt
    "init_run": "",  # a run folder whose final policy the trained one starts from
    "reference_run": "",  # a run folder whose final policy is the frozen reference
    "eval_samples": 64,  # completions sampled per evaluated prompt for the metrics (0: none)
    "eval_prompts": 16,  # the buffer's first prompts evaluated
    "eval_enumerate": 20_000,  # most completions enumerated for tv_to_target (0: never)
}
FACTS = ("vocab_size", "eos_id", "max_new_tokens", "num_prompts", "max_prompt_len")


@dataclasses.dataclass
class RunPolicy:
    """What ``load_run`` reads of a ``generations`` run: its final (else last) ``policy``, the
    buffer ``facts``, the run's ``config`` and its checkpoint's ``extra`` (``buffer_path``)."""

    policy: AutoregressivePolicy
    facts: dict[str, int]
    config: Any
    extra: dict[str, Any]


def load_run(run_dir: str | Path) -> RunPolicy:
    """The final (else last) checkpoint of a ``generations`` run folder, read once."""
    from zarrl.engine.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
    from zarrl.engine.config import Config
    from zarrl.engine.tasks.base import build_task

    run_dir = Path(run_dir)
    final = run_dir / "checkpoints" / "final.pt"
    state = load_checkpoint(final if final.is_file() else latest_checkpoint(run_dir))
    config = Config.from_dict(state["config"])
    if config.env.task != "generations":
        raise CheckpointError(
            f"run {str(run_dir)!r} trained the {config.env.task!r} task, not 'generations'"
        )
    task = build_task(config.env, config.model)
    task.load_state_dict(state["extra"]["task"])
    actor = task.build_actor(initialize=False)
    actor.load_state_dict(state["modules"]["actor"])
    return RunPolicy(actor, task.facts, config, state["extra"])


def load_run_policy(run_dir: str | Path) -> tuple[AutoregressivePolicy, dict[str, int]]:
    """The final (else last) policy of a ``generations`` run folder and its buffer facts."""
    run = load_run(run_dir)
    return run.policy, run.facts


@register_task("generations")
class GenerationsTask:
    """``env.options``: ``d_model`` (64), ``num_layers`` (2), ``num_heads`` (4), ``log_z``
    (``table`` | ``head``), ``group_size`` (0), ``init_run`` (""), ``reference_run`` (""),
    ``eval_samples`` (64), ``eval_prompts`` (16), ``eval_enumerate`` (20000).
    ``env.name`` is a display name. ``model.kind``: ``default`` (zarrl's transformer, sized by
    the options above) or ``hf`` (a Hugging Face causal LM, ``model.hf``:
    :mod:`zarrl.engine.generations_models`)."""

    def __init__(self, env: EnvConfig, model: ModelConfig, *, seed: int = 0) -> None:
        opts = task_options("generations", env.options, DEFAULTS)
        if opts["log_z"] not in ("table", "head"):
            raise ConfigError(f"env.options.log_z: got {opts['log_z']!r}, expected table or head")
        if opts["group_size"] < 0:
            raise ConfigError(f"env.options.group_size: got {opts['group_size']}, expected >= 0")
        for key in ("eval_samples", "eval_prompts", "eval_enumerate"):
            if opts[key] < 0:
                raise ConfigError(f"env.options.{key}: got {opts[key]}, expected >= 0")
        for key in ("init_run", "reference_run"):
            if opts[key] and not Path(opts[key]).is_dir():
                raise ConfigError(f"env.options.{key}: run folder {opts[key]!r} does not exist")
        self.options, self.name = opts, env.name
        self.kind, self.hf = model.kind, dict(model.hf)
        self.seed, self._evaluator = seed, None
        self.hf_config: str | None = None  # the HF model's JSON config, once built or restored
        self.facts: dict[str, int] = {}
        self.generations = None
        self.provides = frozenset({"prior"}) if opts["reference_run"] else frozenset()

    # -- what the learner asks
    @property
    def description(self) -> str:
        f = self.facts
        if not f:
            return f"{self.name} (logged generations)"
        return (
            f"{self.name} (logged generations: V={f['vocab_size']}, end token {f['eos_id']}, "
            f"<= {f['max_new_tokens']} tokens, {f['num_prompts']} prompts)"
        )

    @property
    def max_episode_steps(self) -> int:
        return int(self.facts.get("max_new_tokens", 1))

    def attach_buffer(self, path: str | Path, storage_options: dict | None = None):
        """Open the generations buffer at ``path`` (a folder or a store URL); its facts size the
        policy (a resumed run's must match the checkpoint's). Returns its token storage."""
        generations = open_generations_buffer(path, storage_options)
        facts = buffer_facts(generations)
        if self.facts:
            changed = [k for k in FACTS if k != "max_prompt_len" and facts[k] != self.facts[k]]
            if changed:
                generations.close()
                raise ConfigError(
                    f"buffer.path: {str(path)!r} has "
                    f"{', '.join(f'{k}={facts[k]}' for k in changed)}, but the run was trained "
                    f"with {', '.join(f'{k}={self.facts[k]}' for k in changed)}"
                )
        else:
            self.facts = facts
        self.generations = generations
        return generations.storage

    def data_source(self, *, batch_size: int, seed: int) -> GenerationsDataSource:
        """Whole completions of the attached buffer, ``batch_size`` a batch."""
        group = self.options["group_size"] or None
        return GenerationsDataSource(
            self.generations, batch_size=batch_size, seed=seed, group_size=group
        )

    def make_env(self, *, seed: int, num_envs: int | None = None) -> None:
        """No environment: this task learns from a stored buffer only."""
        return None

    def build_actor(self, initialize: bool = True) -> AutoregressivePolicy:
        """A fresh policy (``model.kind``: zarrl's transformer or a Hugging Face causal LM; with
        ``init_run`` and ``initialize``, that run's weights)."""
        if not self.facts:
            raise ConfigError("buffer.path: the generations task needs a buffer to size its policy")
        actor = build_policy(self.kind, self.hf, self.options, self.facts, hf_config=self.hf_config)
        self.hf_config = self.hf_config or hf_description(actor)
        if initialize and self.options["init_run"]:
            start, _ = load_run_policy(self.options["init_run"])
            _load_trunk(actor, start, self.options["init_run"])
        return actor

    def build_value(self) -> nn.Module:
        raise ConfigError(
            "loss.name: the generations task's policy carries its own V(prefix) and log Z heads; "
            "use sequence_rtb, sequence_trust_pcl or sequence_kl_reinforce"
        )

    def build_prior(self) -> AutoregressivePolicy:
        """The frozen policy of ``reference_run``."""
        prior, facts = load_run_policy(self.options["reference_run"])
        if facts["vocab_size"] != self.facts.get("vocab_size"):
            raise ConfigError(
                f"env.options.reference_run: its policy has vocab_size {facts['vocab_size']}, the "
                f"buffer {self.facts.get('vocab_size')}"
            )
        prior.requires_grad_(False)
        return prior.eval()

    def metrics(self, actor: nn.Module, loss: nn.Module, *, reference: str) -> dict[str, float]:
        """``log_reward_mean``, ``kl_to_reference``, ``distinct_completions``,
        ``logged_share`` and, where enumerable, ``tv_to_target``
        (:mod:`zarrl.engine.generations_metrics`)."""
        if self.generations is None:
            return {}
        if self._evaluator is None:
            o = self.options
            self._evaluator = GenerationsEvaluator(
                self.generations,
                samples=o["eval_samples"],
                prompts=o["eval_prompts"],
                enumerate_max=o["eval_enumerate"],
                seed=self.seed + 20_000,
            )
        return self._evaluator(actor, loss)

    def state_dict(self) -> dict[str, Any]:
        return {"facts": dict(self.facts), "hf_config": self.hf_config}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.facts = {k: int(v) for k, v in state.get("facts", {}).items()}
        self.hf_config = state.get("hf_config")


def _load_trunk(actor: nn.Module, start: nn.Module, where: str) -> None:
    """Copy ``start``'s weights into ``actor``; heads whose shape differs (another prompt table)
    keep their fresh values, any other mismatch is refused naming the parameter."""
    own = actor.state_dict()
    state = {}
    for name, value in start.state_dict().items():
        if name not in own:
            raise ConfigError(f"env.options.init_run: {where!r} has an unknown parameter {name}")
        if own[name].shape != value.shape:
            if name.startswith(("log_z_head.", "value_head.")):
                continue
            raise ConfigError(
                f"env.options.init_run: parameter {name} of {where!r} has shape "
                f"{tuple(value.shape)}, this policy {tuple(own[name].shape)}"
            )
        state[name] = value
    with torch.no_grad():
        actor.load_state_dict(state, strict=False)
