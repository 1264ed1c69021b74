"""An empty store's commit log, ring and chunk I/O, wired as ``ZarrStorage`` wires them, for
the tests of the parts built on them (chunk writer, committer, hot tier)."""

from __future__ import annotations

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
