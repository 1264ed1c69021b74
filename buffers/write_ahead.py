"""Write-ahead of completed chunks: encode and store them on a background thread while the caller
keeps appending, so a bulk load overlaps encoding, file writes and (for ``durability="os"``
stores) fsyncs with the caller instead of paying them at the next commit.

A batch writes chunk files only, never the commit record: the storage publishes a commit that
covers a chunk only after the batch holding it has *landed* (``WriteAhead.land``), so a commit
never refers to a chunk that is not fully written. Chunks of a batch stay pinned as dirty in the
chunk pool until it lands, and the storage lands every batch before any write that could touch
them (in-place writes, emptying, synchronous chunk writes), so the arrays the batch encodes are
not modified while it runs (they are views of the pool, not copies).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .chunk_codec import ChunkCodec, store_chunks
from .store_io import SyncLog

# chunks encoded at once by a batch: blosc runs single-threaded outside the main thread, and
# encoding dominates a batch
ENCODE_THREADS = min(4, os.cpu_count() or 1)


@dataclass
class _Batch:
    chunks: list[int]
    future: concurrent.futures.Future
    unsynced: set[Path] = field(default_factory=set)


class WriteAhead:
    """At most one batch of chunk writes in flight, on one background thread (created lazily;
    blosc, zstd, file writes and fsyncs release the GIL)."""

    def __init__(self, run_io) -> None:
        self._run_io = run_io  # runs zarr coroutines (chunks of non-local stores)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._encoders: concurrent.futures.ThreadPoolExecutor | None = None
        self._batch: _Batch | None = None

    @property
    def in_flight(self) -> frozenset[int]:
        """Chunk ids of the batch not landed yet."""
        return frozenset(self._batch.chunks) if self._batch is not None else frozenset()

    def submit(
        self,
        items: Sequence[tuple[ChunkCodec, int, np.ndarray]],
        fresh_from: int,
        fsync: bool,
    ) -> None:
        """Starts encoding and storing ``items`` (``(codec, chunk id, chunk array)``, arrays
        left untouched until the batch lands); chunks ``>= fresh_from`` hold no committed row
        and are written in place (``chunk_codec.store_chunks``). ``fsync``: fsync the files
        and their directories too. Only one batch runs at a time: land the previous one first."""
        if self._batch is not None:
            raise RuntimeError("a write-ahead batch is still in flight; land it first")
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, "zarrl-write-ahead")
            self._encoders = concurrent.futures.ThreadPoolExecutor(ENCODE_THREADS, "zarrl-encode")
        batch = _Batch(chunks=sorted({c for _, c, _ in items}), future=None)  # type: ignore[arg-type]
        batch.future = self._executor.submit(self._write, list(items), fresh_from, fsync, batch)
        self._batch = batch

    def _write(self, items, fresh_from: int, fsync: bool, batch: _Batch) -> None:
        log = SyncLog()
        try:
            blobs = self._encoders.map(lambda item: item[0].encode(item[2]), items)
            encoded = [(codec, c, blob) for (codec, c, _), blob in zip(items, blobs)]
            self._run_io(store_chunks(encoded, fresh_from, log=log))
            if fsync:
                log.sync()
        finally:
            batch.unsynced = set(log.files)  # written but not fsynced: the next durable commit

    def land(self, wait: bool, log: SyncLog | None) -> list[int] | None:
        """Finishes the batch in flight and returns the chunk ids it wrote (``None`` when there
        is none or, ``wait=False``, while it still runs). Files it wrote but did not fsync are
        added to ``log`` (the store's, for the next durable commit). A failed batch raises its
        error here; its chunks are still dirty and are written again later."""
        batch = self._batch
        if batch is None or not (wait or batch.future.done()):
            return None
        self._batch = None
        concurrent.futures.wait([batch.future])
        if log is not None:
            log.files |= batch.unsynced
        error = batch.future.exception()
        if error is not None:
            raise error
        return batch.chunks

    def close(self, wait: bool = True) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=wait)
            self._encoders.shutdown(wait=wait)
            self._executor = self._encoders = None


__all__ = ["WriteAhead"]
