"""The Trainer's replay buffer hosted by Ray (``collector.backend: ray``): one Ray actor owns the
run's ``ZarrStorage``; the Ray collector workers extend it directly and the learner samples it,
so no collected row passes through the learner's process (``docs/scale-out.md``).

- :class:`ZarrReplayBuffer`: the buffer class the actor runs (a ``TensorDictReplayBuffer``): it
  also keeps the finished episodes of what the workers write (returns and lengths for the
  learner's logs) and answers flush / close / next-trajectory-id calls on its storage.
- :class:`RayHostedStorage`: the learner's handle, standing where a local ``ZarrStorage`` stands
  in the :class:`~zarrl.engine.trainer.Trainer` (``len``, ``flush``, ``close``); its ``buffer`` is
  the Ray-hosted replay buffer the data source samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data import TensorDictReplayBuffer
from zarrl.engine.policies import next_trajectory_id

__all__ = ["EPISODE_KEYS", "RayHostedStorage", "ZarrReplayBuffer"]

#: What the learner logs of each finished episode (the last step's row).
EPISODE_KEYS = (("next", "done"), ("next", "episode_reward"), ("next", "step_count"))


class ZarrReplayBuffer(TensorDictReplayBuffer):
    """A ``TensorDictReplayBuffer`` that remembers the last rows of the episodes written since
    the last :meth:`take_episodes` (``EPISODE_KEYS`` only, a few rows per batch); run inside
    the buffer's Ray actor (``ZarrReplayBuffer(..., service_backend="ray")``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._finished: list[TensorDictBase] = []

    def extend(self, tensordicts: TensorDictBase, **kwargs: Any) -> torch.Tensor:
        index = super().extend(tensordicts, **kwargs)
        rows = tensordicts.reshape(-1)
        done = rows.get(("next", "done"), None)
        if done is not None and bool(done.any()):
            self._finished.append(rows[done.reshape(-1)].select(*EPISODE_KEYS, strict=False))
        return index

    def take_episodes(self) -> TensorDictBase | None:
        """The ``[episodes]`` last rows of the episodes finished since the last call (``None``
        if none), forgotten here."""
        if not self._finished:
            return None
        out, self._finished = torch.cat(self._finished), []
        return out

    def flush_storage(self) -> int:
        """Commits the storage; returns the rows ever written (``write_count``)."""
        self.storage.flush()
        return int(self.write_count)

    def next_trajectory_id(self) -> int:
        """One more than the largest stored trajectory id (``policies.next_trajectory_id``)."""
        return next_trajectory_id(self.storage)

    def close_storage(self) -> int:
        """Commits and closes the storage; returns the rows it holds."""
        rows = len(self.storage)
        self.storage.close()
        return rows


class RayHostedStorage:
    """The learner's handle on a ``ZarrStorage`` built by ``factory()`` inside a Ray actor.

    ``buffer``: the Ray-hosted :class:`ZarrReplayBuffer` (its actor asks Ray for no CPU);
    ``len``, :meth:`flush` and :meth:`close` act on the remote storage. ``path``: where the store
    is (for messages)."""

    def __init__(self, factory: Callable[[], Any], path: str) -> None:
        from zarrl.engine.ray_collect import init_ray

        init_ray()
        self.path = path
        self.buffer = ZarrReplayBuffer(
            storage=factory,
            service_backend="ray",
            service_backend_options={"remote_config": {"num_cpus": 0}},
        )
        self._remote = self.buffer.client()  # the actor's own methods, one round trip each

    def __len__(self) -> int:
        return len(self.buffer)

    @property
    def closed(self) -> bool:
        return not self.buffer.is_alive

    def flush(self) -> int:
        """Commits the remote storage; returns the rows ever written."""
        return int(self._remote.flush_storage())

    def next_trajectory_id(self) -> int:
        return int(self._remote.next_trajectory_id())

    def take_episodes(self) -> TensorDictBase | None:
        """The last rows of the episodes finished since the last call (see ZarrReplayBuffer)."""
        return self._remote.take_episodes()

    def close(self) -> None:
        """Commits and closes the remote storage, then stops its actor (idempotent)."""
        if self.closed:
            return
        try:
            self._remote.close_storage()
        finally:
            self.buffer.close()
