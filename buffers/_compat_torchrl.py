"""The TorchRL internals zarrl relies on, in one place (TorchRL 0.14).

Each function names the private attribute it reads; if a TorchRL release moves one, this module
is the only place to change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MAX_SIZE_UNBOUNDED = 2**31 - 1
"""The ``max_size`` of a storage without bound: TorchRL keeps ``len()`` in an int32 shared
value (``TensorStorage._len_value``)."""


def save_hooks(storage: Any) -> list[Callable]:
    """Hooks registered by ``rb.register_save_hook`` (kept by the storage's checkpointer in
    ``StorageCheckpointerBase._save_hooks``), called as ``hook(data, path=path)``."""
    return list(getattr(storage.checkpointer, "_save_hooks", ()))


def load_hooks(storage: Any) -> list[Callable]:
    """Hooks registered by ``rb.register_load_hook`` (``_load_hooks``), called as
    ``hook(data, out=None)``."""
    return list(getattr(storage.checkpointer, "_load_hooks", ()))


def buffer_sampler(buffer: Any) -> Any | None:
    """The sampler holding a replay buffer's sampling state: the learner-side
    ``_prioritized_sampler`` of a ``TensorDictPrioritizedReplayBuffer(sync=False)`` (whose
    ``_sampler`` is a uniform one for writer processes), else ``_sampler`` once built, else
    the ``_init_sampler`` instance it will use (``None`` when there is none yet)."""
    state = getattr(buffer, "__dict__", {})
    for name in ("_prioritized_sampler", "_sampler", "_init_sampler"):
        if state.get(name) is not None:
            return state[name]
    return None


def caught_up(buffer: Any) -> None:
    """A ``TensorDictPrioritizedReplayBuffer(sync=False)`` whose learner sampler was restored
    already covers every stored row: its catch-up counter (``_prioritized_sampler_write_count``,
    rows written before which the sampler knows the rows) becomes the buffer's write count,
    so the next sample does not reset the restored priorities to the default."""
    if "_prioritized_sampler_write_count" in getattr(buffer, "__dict__", {}):
        buffer._prioritized_sampler_write_count = int(buffer.write_count)


def buffer_lock(buffer: Any) -> Any | None:
    """The buffer's ``_replay_lock`` (held by TorchRL around extends, samples and priority
    updates), or ``None``."""
    return getattr(buffer, "__dict__", {}).get("_replay_lock")


def after_sampler_init(buffer: Any, restore: Callable[[Any], bool]) -> None:
    """Calls ``restore(sampler)`` once the buffer has built its sampler, in place of TorchRL's
    default-priority initialization of the rows already stored
    (``ReplayBuffer._initialize_prioritized_sampler``, the last sampler step of
    ``ReplayBuffer._init``), which still runs when ``restore`` returns ``False``. The hook is
    an instance attribute removed when it runs (the buffer stays picklable)."""
    original = getattr(buffer, "_initialize_prioritized_sampler", None)
    if original is None or buffer.__dict__.get("_sampler") is not None:
        sampler = buffer_sampler(buffer)
        if sampler is not None and not isinstance(sampler, type) and restore(sampler):
            caught_up(buffer)
        return

    def initialize() -> None:
        buffer.__dict__.pop("_initialize_prioritized_sampler", None)
        if restore(buffer_sampler(buffer)):
            caught_up(buffer)
        else:
            original()

    buffer._initialize_prioritized_sampler = initialize


def buffer_writer(buffer: Any) -> Any | None:
    """The buffer's writer once built (``ReplayBuffer._writer``), else ``None``."""
    return getattr(buffer, "__dict__", {}).get("_writer")


def writer_position(writer: Any) -> tuple[int, int]:
    """``(write_count, cursor)`` of a ``RoundRobinWriter`` (``_write_count``, ``_cursor``)."""
    return writer._write_count, writer._cursor


def set_writer_position(writer: Any, write_count: int, cursor: int) -> None:
    """Moves a ``RoundRobinWriter`` to ``write_count`` rows written, next row at ``cursor``."""
    writer._write_count = write_count
    writer._cursor = cursor


def wrap_writer_init(buffer: Any, wrap: Callable[[Any], Any]) -> bool:
    """A buffer that builds its writer lazily (``ReplayBuffer._init_writer``: ``None`` for
    TorchRL's ``RoundRobinWriter``, a class or a factory) passes the built writer through
    ``wrap``; a writer instance there is wrapped at once. Returns whether the buffer had such an
    initializer."""
    from torchrl.data.replay_buffers.writers import RoundRobinWriter, Writer

    if not hasattr(buffer, "_init_writer"):
        return False
    init = buffer._init_writer or RoundRobinWriter  # ``None``: TorchRL's default writer
    if isinstance(init, Writer):
        wrap(init)
    elif callable(init):
        buffer._init_writer = lambda: wrap(init())
    return True


def attached_buffers(storage: Any) -> list:
    """The buffers attached to a storage (``Storage._attached_entities``), as a new list."""
    return list(storage._attached_entities)


def set_attached_buffers(storage: Any, buffers: list) -> None:
    """Makes ``buffers`` the storage's attached buffers (``_attached_entities_list``)."""
    storage._attached_entities_list = list(buffers)


def last_cursor(storage: Any) -> Any:
    """The last cursor a ``TensorStorage`` was written at (``_last_cursor_index``: what
    TorchRL's slice samplers take as the end of the newest trajectory)."""
    return storage._last_cursor_index


def shared_counters(storage: Any) -> dict[str, Any]:
    """The shared values a ``TensorStorage`` keeps its length, mutation revision and last cursor
    in (``_len_value``, ``_mutation_revision_value``, ``_last_cursor_index_value``, created
    here if not yet), keyed by those attribute names: a proxy storage given them in its state
    shares them with the original across processes."""
    _ = storage._len, storage._mutation_revision, storage._last_cursor_index
    names = ("_len_value", "_mutation_revision_value", "_last_cursor_index_value")
    return {name: getattr(storage, name) for name in names}
