"""The round-robin writers of the buffers attached to a ``ZarrStorage``, kept at the ring's
cursor: a buffer built on a reopened store continues where the last run stopped, a refused
write moves the writers back (no hole), and a checkpoint loaded with hooks restarts them after
its rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchrl.data.replay_buffers.writers import RoundRobinWriter

from ._compat_torchrl import (
    after_sampler_init,
    buffer_writer,
    set_writer_position,
    wrap_writer_init,
    writer_position,
)
from .ring import Ring


def follow_ring(writer: Any, ring: Ring) -> Any:
    """A ``RoundRobinWriter`` that wrote nothing yet continues at ``ring``'s write count and
    next position; returns ``writer``."""
    if isinstance(writer, RoundRobinWriter) and writer_position(writer)[0] == 0:
        set_writer_position(writer, ring.write_count, ring.next_position())
    return writer


def attach_buffer(buffer: Any, ring: Ring, load_sampler: Callable[[Any], bool]) -> None:
    """A buffer attached to a storage whose ``ring`` holds rows: its writer (built now or
    later) follows the ring, and a buffer that still builds its sampler gets it through
    ``load_sampler(sampler)`` (the state stored with the store)."""
    if ring.write_count == 0:
        return
    writer = buffer_writer(buffer)
    if writer is not None:
        follow_ring(writer, ring)
        return
    wrap_writer_init(buffer, lambda built: follow_ring(built, ring))
    after_sampler_init(buffer, load_sampler)


def restart_writers(buffers: list, ring: Ring) -> None:
    """The round-robin writers of ``buffers`` continue after the rows ``ring`` holds (their
    write count restarts from the ring's)."""
    for buffer in buffers:
        writer = buffer_writer(buffer)
        if isinstance(writer, RoundRobinWriter):
            set_writer_position(writer, 0, writer_position(writer)[1])
            follow_ring(writer, ring)


def rollback_writers(buffers: list, n: int, cap0: int | None) -> None:
    """A refused write must not leave a hole: round-robin writers move their cursor before
    calling ``set``, so the writers of ``buffers`` move ``n`` rows back (``cap0``: the ring's
    rows along dim 0, ``None`` when it grows)."""
    for buffer in buffers:
        writer = buffer_writer(buffer)
        if not isinstance(writer, RoundRobinWriter):
            continue
        write_count, cursor = writer_position(writer)
        if write_count >= n:
            set_writer_position(
                writer, write_count - n, (cursor - n) % cap0 if cap0 else cursor - n
            )
