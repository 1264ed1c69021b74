"""What the learner asks of a task, and the registry that builds one from the ``env`` section.

A task owns its environments and the networks that fit them: the policy, the value network and,
where it has one, a fixed prior policy (the reference of RTB, KL-regularized REINFORCE and
Trust-PCL's fixed-reference form). A loss names the networks it needs in its signature
(``actor_network``, ``value_network``, ``prior_network``, ``reference_network``); the engine asks
the task for each and refuses, naming what is missing, where the task provides none
(:func:`zarrl.engine.registry.build_loss`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.envs import EnvBase
from zarrl.engine.config import ConfigError, EnvConfig, ModelConfig
from zarrl.engine.schema import conform, unknown_key

__all__ = ["TASKS", "StoredDataTask", "Task", "build_task", "register_task", "task_options"]


@runtime_checkable
class Task(Protocol):
    """The environments and networks of one task (see the module docstring).

    ``provides`` names the optional networks it can build (``"prior"``); ``max_episode_steps`` is
    the longest episode (evaluation rollouts, whole-trajectory checks).
    """

    description: str
    provides: frozenset[str]
    max_episode_steps: int

    def make_env(self, *, seed: int, num_envs: int | None = None) -> EnvBase:
        """A TorchRL environment on the CPU (``num_envs``: sub-envs, default the config's)."""
        ...

    def build_actor(self) -> TensorDictModuleBase:
        """A fresh stochastic policy writing ``action`` and ``action_log_prob``."""
        ...

    def build_value(self) -> TensorDictModuleBase:
        """A fresh state-value network writing ``state_value`` ``[*B, 1]``."""
        ...

    def build_prior(self) -> TensorDictModuleBase:
        """The task's fixed prior policy (frozen); only where ``"prior"`` is in ``provides``."""
        ...

    def metrics(self, actor: nn.Module, loss: nn.Module, *, reference: str) -> dict[str, float]:
        """Task-specific figures of the current policy (e.g. distance to an exact optimum);
        ``reference`` is how the loss's reference was built (``"prior"``, ``"lagged"``,
        ``"none"``)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep for the task's environments to behave alike on resume."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...


@runtime_checkable
class StoredDataTask(Protocol):
    """A task that learns offline from a stored dataset of its own kind (not environment steps):
    ``train.mode: offline`` asks it for the storage and the data source instead of opening a
    ``ZarrStorage`` of steps for TorchRL's slice sampler."""

    def attach_buffer(self, path: str | Path, storage_options: dict | None = None) -> Any:
        """Open the dataset at ``path`` (``buffer.path``; ``buffer.storage_options`` for a store
        URL) before the networks are built (its facts size them); returns the run's storage
        (``len()``, ``close()``)."""
        ...

    def data_source(self, *, batch_size: int, seed: int) -> Any:
        """The :class:`zarrl.engine.sources.DataSource` drawing ``batch_size`` items a batch."""
        ...


#: ``(env section, model section, *, seed) -> Task``; ``seed`` is the run's ``run.seed`` (for the
#: task's own random streams, e.g. a fixed evaluation sample)
TaskFactory = Callable[..., Task]

#: ``env.task`` name -> factory ``(env section, model section, *, seed) -> Task``.
TASKS: dict[str, TaskFactory] = {}


def register_task(name: str) -> Callable[[TaskFactory], TaskFactory]:
    """Class decorator registering a task factory under ``env.task: <name>``."""

    def add(factory: TaskFactory) -> TaskFactory:
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered ({TASKS[name]!r})")
        TASKS[name] = factory
        return factory

    return add


def build_task(env: EnvConfig, model: ModelConfig, *, seed: int = 0) -> Task:
    """The task named by ``env.task``, built from the ``env`` and ``model`` sections for a run
    seeded with ``seed``."""
    factory = TASKS.get(env.task)
    if factory is None:
        close = difflib.get_close_matches(env.task, TASKS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"env.task: got {env.task!r}{hint}, expected one of {', '.join(TASKS)}")
    return factory(env, model, seed=seed)


def task_options(task: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
    """``defaults`` updated with ``options`` (the ``env.options`` of a task), each checked: an
    unknown key gets a "did you mean", a value is checked against the type of its default
    (:func:`~zarrl.engine.schema.conform`; a ``None`` default takes anything)."""
    merged = dict(defaults)
    for key, value in options.items():
        if key not in defaults:
            raise unknown_key(key, list(defaults), "env.options.", f"unknown option of {task!r}")
        default = defaults[key]
        tp = Any if default is None else type(default)
        merged[key] = conform(value, tp, f"env.options.{key}")
    return merged
