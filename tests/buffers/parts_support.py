"""An empty store's commit log, ring and chunk I/O, wired as ``ZarrStorage`` wires them, for
the tests of the parts built on them (chunk writer, committer, hot tier)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from zarrl.buffers.chunk_io import ChunkStore
from zarrl.buffers.commit_log import CommitLog, open_group
from zarrl.buffers.format import Header, LeafSpec
from zarrl.buffers.ring import Ring


def store_parts(path, rows: int, chunk_rows: int, obs_shape: tuple[int, ...]):
    """``(log, ring, chunks)`` of a new store at ``path``: ``rows`` rows of one int64 leaf
    ``obs`` of ``obs_shape``, ``chunk_rows`` rows a chunk, nothing written yet."""
    log = CommitLog(open_group(path, "a"), str(path), max_size=rows, ndim=1)
    log.header = Header(rows, 1, (), chunk_rows, {"obs": LeafSpec("int64", obs_shape)}, [], False)
    ring = Ring(rows)
    ring.tail = ()
    chunks = ChunkStore(log, ring, read_only=False)
    chunks.attach(log.header, create=True)
    return log, ring, chunks


def call_while_locked(lock, call: Callable[[threading.Event], Any]) -> list:
    """Runs ``call(released)`` on a thread while another thread holds ``lock``: asserts it has
    not returned 0.2 s later, then sets ``released`` and lets go of the lock; returns
    ``[call's result]``."""
    held, release, done = threading.Event(), threading.Event(), []

    def hold():
        with lock:
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    caller = threading.Thread(target=lambda: done.append(call(release)))
    caller.start()
    caller.join(0.2)
    assert not done  # blocked while the other thread holds the lock
    release.set()
    caller.join(5)
    holder.join(5)
    return done
