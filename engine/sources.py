"""Where the learner's batches come from: the Trainer's data sources, chosen by ``train.mode``.

A data source owns the run's replay buffer (a TorchRL ``ReplayBuffer`` on a ``ZarrStorage``) and
hands :class:`~zarrl.engine.trainer.Trainer` one batch per update; the trainer does the rest
(loss, optimizer, reference/target updates, evaluation, checkpoints, logging) the same way for
every source.

| ``train.mode`` | source | adds rows | one update's batch |
|---|---|---|---|
| ``online`` / ``mixed`` | :class:`CollectorSource` (:class:`RayCollectorSource` with ``collector.backend: ray``: a Ray-hosted buffer) | ``collect()``: one TorchRL collector batch | ``[batch_size, slice_len]`` slices |
| ``offline`` | :class:`ReplaySource` | never (the stored buffer, read-only) | ``[batch_size, slice_len]`` slices |
| ``sampler`` | :class:`SamplerSource` | each ``next_batch()``: fresh whole trajectories from the task's sampler function | ``[batch_size, T]`` |

A new source implements :class:`DataSource` and registers a factory with
:func:`register_source` under a new ``train.mode`` name; the factory gets the trainer (its
config, task, actor, storage and device) and returns the source.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from tensordict import TensorDictBase
from torchrl.data import ReplayBuffer, SliceSampler, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import RandomSampler
from zarrl.engine.config import ConfigError
from zarrl.engine.policies import TRAJ_KEY

if TYPE_CHECKING:
    from zarrl.engine.trainer import Trainer

__all__ = [
    "SOURCES",
    "CollectorSource",
    "DataSource",
    "RayCollectorSource",
    "ReplaySource",
    "SamplerSource",
    "TrajectorySampler",
    "build_source",
    "register_source",
]


@runtime_checkable
class DataSource(Protocol):
    """One learner batch per update, from rows kept in ``buffer``.

    ``buffer``: the run's replay buffer; its ``storage`` is the run's ``ZarrStorage`` (flushed
    before every checkpoint) and its ``write_count`` counts the rows ever written (the trainer's
    ``frames`` counter grows by the rows a source writes). ``collects``: whether the source adds
    rows in :meth:`collect` between rounds of updates (the trainer then runs
    ``train.updates_per_frame`` updates per new row); otherwise the trainer runs rounds of
    ``train.log_every_updates`` updates and :meth:`collect` adds nothing.
    """

    buffer: ReplayBuffer
    collects: bool

    def collect(self) -> int:
        """Add rows to the buffer before a round of updates; returns how many (0 if none)."""
        ...

    def next_batch(self) -> TensorDictBase:
        """The batch of one update, on the CPU (the trainer moves it to the learner device)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep for the source to continue alike (tensors, plain types)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...

    def close(self) -> None:
        """Stop what the source runs (a collector); the trainer closes the storage."""
        ...


SourceFactory = Callable[["Trainer"], DataSource]

#: ``train.mode`` -> factory ``(trainer) -> DataSource``.
SOURCES: dict[str, SourceFactory] = {}


def register_source(*modes: str) -> Callable[[SourceFactory], SourceFactory]:
    """Decorator registering a source factory under one or more ``train.mode`` names."""

    def add(factory: SourceFactory) -> SourceFactory:
        for mode in modes:
            if mode in SOURCES:
                raise ValueError(f"train.mode {mode!r} already has a source ({SOURCES[mode]!r})")
            SOURCES[mode] = factory
        return factory

    return add


def build_source(mode: str, trainer: Trainer) -> DataSource:
    """The source of ``train.mode`` for ``trainer`` (a "did you mean" for an unknown mode)."""
    factory = SOURCES.get(mode)
    if factory is None:
        close = difflib.get_close_matches(mode, SOURCES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"train.mode: got {mode!r}{hint}, expected one of {', '.join(SOURCES)}")
    return factory(trainer)


class ReplaySource:
    """Slices of stored trajectories: ``batch_size`` slices of ``slice_len`` steps sampled by
    TorchRL's ``SliceSampler`` (trajectory ids under ``("collector", "traj_ids")``, short
    episodes padded, mask under ``("collector", "mask")``) -> ``[batch_size, slice_len]``."""

    collects = False

    def __init__(self, storage, *, batch_size: int, slice_len: int) -> None:
        self.batch_size, self.slice_len = batch_size, slice_len
        sampler = SliceSampler(
            slice_len=slice_len, traj_key=TRAJ_KEY, strict_length=False, pad_output=True
        )
        self.buffer = TensorDictReplayBuffer(
            storage=storage, sampler=sampler, batch_size=batch_size * slice_len
        )

    def collect(self) -> int:
        return 0

    def next_batch(self) -> TensorDictBase:
        return self.buffer.sample().reshape(self.batch_size, self.slice_len)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None

    def close(self) -> None:
        return None


class CollectorSource(ReplaySource):
    """A :class:`ReplaySource` whose buffer a TorchRL collector extends: :meth:`collect` runs one
    collector batch. The collector (built by the trainer, which owns the acting policy and the
    episode bookkeeping) must write into :attr:`buffer`; :meth:`attach` hands it over."""

    collects = True

    def __init__(self, storage, *, batch_size: int, slice_len: int) -> None:
        super().__init__(storage, batch_size=batch_size, slice_len=slice_len)
        self.collector = None
        self._batches: Iterator[Any] | None = None

    def attach(self, collector) -> None:
        """Start collecting with ``collector`` (built with ``replay_buffer=self.buffer``)."""
        self.collector = collector
        self._batches = iter(collector)

    def collect(self) -> int:
        if self._batches is None:
            raise RuntimeError("CollectorSource.collect: no collector attached")
        before = int(self.buffer.write_count)
        next(self._batches)
        return int(self.buffer.write_count) - before

    def close(self) -> None:
        if self.collector is not None:
            self.collector.shutdown()


@runtime_checkable
class TrajectorySampler(Protocol):
    """A task's sampler function (tasks whose ``provides`` holds ``"sampler"``).

    :meth:`sample_rows` draws ``num`` whole trajectories of ``actor`` (no autograd) and returns
    them as ``[num]`` buffer rows (one row per trajectory); ``draw`` is the index of the draw
    (0, 1, ...: a task may schedule exploration by it) and ``generator`` the source's random
    stream. :meth:`batch_from_rows` turns ``[N]`` rows back into the ``[N, T]`` batch the
    losses read.
    """

    def sample_rows(
        self, actor: torch.nn.Module, num: int, *, draw: int, generator: torch.Generator
    ) -> TensorDictBase: ...

    def batch_from_rows(self, rows: TensorDictBase) -> TensorDictBase: ...


class SamplerSource:
    """Fresh whole trajectories every update, through the run's Zarr buffer.

    Each :meth:`next_batch` draws ``fresh`` trajectories with the task's sampler function,
    writes them to the buffer, reads them back and adds ``replayed`` older rows sampled
    uniformly from the buffer (the replay ratio), then returns the ``[fresh + replayed, T]``
    batch. The sampler draws from its own ``torch.Generator`` (seeded with ``seed`` on
    ``device``), saved in checkpoints with the draw count.
    """

    collects = False

    def __init__(
        self,
        storage,
        sampler: TrajectorySampler,
        actor: torch.nn.Module,
        *,
        fresh: int,
        replayed: int,
        seed: int,
        device: torch.device,
    ) -> None:
        if fresh <= 0:
            raise ConfigError(
                f"train.replay_ratio: leaves {fresh} fresh trajectories per update, expected >= 1"
            )
        self.sampler, self.actor = sampler, actor
        self.fresh, self.replayed = fresh, replayed
        self.buffer = ReplayBuffer(storage=storage, sampler=RandomSampler(), batch_size=None)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.draws = 0

    def collect(self) -> int:
        return 0

    def next_batch(self) -> TensorDictBase:
        rows = self.sampler.sample_rows(
            self.actor, self.fresh, draw=self.draws, generator=self.generator
        )
        self.draws += 1
        index = self.buffer.extend(rows.cpu())
        rows = self.buffer.storage.get(index)
        if self.replayed > 0:
            rows = torch.cat([rows, self.buffer.sample(self.replayed)], dim=0)
        return self.sampler.batch_from_rows(rows)

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.draws = int(state["draws"])
        self.generator.set_state(state["generator"].to(self.generator.get_state().device))

    def close(self) -> None:
        return None


def _check_slices(trainer: Trainer) -> None:
    """Refuse slices that cannot hold what the loss learns from (whole episodes, a window)."""
    from zarrl.engine.registry import WHOLE_TRAJECTORY_LOSSES, canonical_loss_name

    cfg = trainer.config
    loss_name = canonical_loss_name(cfg.loss["name"])
    longest = trainer.task.max_episode_steps
    if loss_name in WHOLE_TRAJECTORY_LOSSES and cfg.train.slice_len < longest:
        raise ConfigError(
            f"train.slice_len: got {cfg.train.slice_len}, expected >= the longest episode "
            f"({longest} steps): {loss_name} learns from whole trajectories"
        )
    rollout = getattr(trainer.loss, "rollout", None)
    if isinstance(rollout, int) and cfg.train.slice_len < rollout:
        raise ConfigError(
            f"train.slice_len: got {cfg.train.slice_len}, expected >= loss.rollout ({rollout}): "
            "a slice shorter than the rollout window never holds a whole window"
        )


class RayCollectorSource(CollectorSource):
    """A :class:`CollectorSource` on a Ray-hosted buffer (``collector.backend: ray``): ``storage``
    is a :class:`~zarrl.engine.ray_buffer.RayHostedStorage`; Ray workers extend its buffer and
    :meth:`next_batch` samples it there (the same ``SliceSampler``, run in the buffer's actor)."""

    def __init__(self, storage, *, batch_size: int, slice_len: int) -> None:
        self.batch_size, self.slice_len = batch_size, slice_len
        self.buffer = storage.buffer
        self.buffer.set_sampler(
            SliceSampler(
                slice_len=slice_len, traj_key=TRAJ_KEY, strict_length=False, pad_output=True
            )
        )
        self.collector = None
        self._batches = None

    def next_batch(self) -> TensorDictBase:
        return self.buffer.sample(self.batch_size * self.slice_len).reshape(
            self.batch_size, self.slice_len
        )


@register_source("online", "mixed")
def _collector_source(trainer: Trainer) -> CollectorSource:
    _check_slices(trainer)
    train = trainer.config.train
    kind = RayCollectorSource if trainer.config.collector.backend == "ray" else CollectorSource
    return kind(trainer.storage, batch_size=train.batch_size, slice_len=train.slice_len)


@register_source("offline")
def _replay_source(trainer: Trainer) -> DataSource:
    from zarrl.engine.tasks import StoredDataTask

    train = trainer.config.train
    if isinstance(trainer.task, StoredDataTask):  # the task's own batches (whole completions)
        return trainer.task.data_source(batch_size=train.batch_size, seed=trainer.config.run.seed)
    _check_slices(trainer)
    return ReplaySource(trainer.storage, batch_size=train.batch_size, slice_len=train.slice_len)


@register_source("sampler")
def _sampler_source(trainer: Trainer) -> SamplerSource:
    task = trainer.task
    if "sampler" not in task.provides or not isinstance(task, TrajectorySampler):
        raise ConfigError(
            f"train.mode: 'sampler' draws trajectories with the task's sampler function, which "
            f"the {trainer.config.env.task!r} task ({task.description}) does not provide; use "
            "online, offline or mixed"
        )
    cfg = trainer.config
    replayed = round(cfg.train.replay_ratio * cfg.train.batch_size)
    return SamplerSource(
        trainer.storage,
        task,
        trainer.actor,
        fresh=cfg.train.batch_size - replayed,
        replayed=replayed,
        seed=cfg.run.seed,
        device=trainer.device,
    )
