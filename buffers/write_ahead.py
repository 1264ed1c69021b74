"""Write-ahead of completed chunks: encode and store them on a background thread while the caller
keeps appending, so a bulk load overlaps encoding, file writes and (for ``durability="os"``
stores) fsyncs with the caller instead of paying them at the next commit.

A batch writes chunk files only, never the commit record: the storage publishes a commit that
covers a chunk only after the batch holding it has *landed* (``WriteAhead.land``), so a commit
never refers to a chunk that is not fully written. Batches run in submission order. Chunks of a batch stay pinned as dirty in the
chunk pool until it lands, and the storage lands every batch before any write that could touch
them (in-place writes, emptying, synchronous chunk writes), so the arrays the batch encodes are
not modified while it runs (they are views of the pool, not copies).
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .chunk_codec import ChunkCodec, store_chunks
from .seals import data_crc
from .store_io import SyncLog, fsync_files

# threads that encode a batch (the write-ahead thread and its helpers): one core is left to the
# thread that appends (on 2 cores, a second encoder only made both wait for each other)
ENCODE_THREADS = min(4, max(1, (os.cpu_count() or 1) - 1))


@dataclass
class _Batch:
    chunks: list[int]
    future: concurrent.futures.Future
    items: list[tuple[Any, int]] = field(default_factory=list)  # (tag, chunk id) per item
    crcs: list[int] = field(default_factory=list)  # the crc32c each encoded item ends with
    unsynced: set[Path] = field(default_factory=set)
    synced: concurrent.futures.Future | None = None  # the fsync of ``unsynced``, if asked
    work: tuple = ()  # the arguments of ``WriteAhead._write`` (run inline if not started)


class WriteAhead:
    """Batches of chunk writes running in order on one background thread (created lazily),
    each encoding its chunks on ``ENCODE_THREADS`` threads, that one included (blosc, zstd,
    file writes and fsyncs release the GIL)."""

    def __init__(self, run_io) -> None:
        self._run_io = run_io  # runs zarr coroutines (chunks of non-local stores)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._encoders: concurrent.futures.ThreadPoolExecutor | None = None
        self._syncer: concurrent.futures.ThreadPoolExecutor | None = None
        self._batches: collections.deque[_Batch] = collections.deque()

    @property
    def batches(self) -> int:
        """Batches not landed yet."""
        return len(self._batches)

    @property
    def in_flight(self) -> frozenset[int]:
        """Chunk ids of the batches not landed yet."""
        return frozenset(c for batch in self._batches for c in batch.chunks)

    def submit(
        self,
        items: Sequence[tuple[ChunkCodec, int, np.ndarray]],
        fresh_from: int,
        fsync: bool,
        tags: Sequence[Any] | None = None,
    ) -> None:
        """Queues encoding and storing ``items`` (``(codec, chunk id, chunk array)``, arrays
        left untouched until the batch lands); chunks ``>= fresh_from`` hold no committed row
        and are written in place (``chunk_codec.store_chunks``). ``fsync``: then fsync the
        files, on a thread of their own (the next batch does not wait); their directories, and
        files whose fsync has not finished when the batch lands, are left to the next durable
        commit (one fsync per directory there, not one per batch). ``tags`` (one per item,
        e.g. the array path) come back with each item's crc from :meth:`land`."""
        self._start()
        tags = [None] * len(items) if tags is None else list(tags)
        batch = _Batch(
            chunks=sorted({c for _, c, _ in items}),
            future=None,  # type: ignore[arg-type]
            items=[(tag, c) for tag, (_, c, _) in zip(tags, items)],
        )
        batch.work = (list(items), fresh_from, fsync, batch)
        batch.future = self._executor.submit(self._write, *batch.work)
        self._batches.append(batch)

    def _run_inline(self, batches: list[_Batch]) -> None:
        """Runs on the calling thread every batch of ``batches`` the background thread has not
        started (a thread that must wait for them anyway does their work instead of idling
        while the background catches up)."""
        for batch in batches:
            if not batch.future.cancel():
                continue
            done: concurrent.futures.Future = concurrent.futures.Future()
            try:
                self._write(*batch.work)
            except BaseException as err:  # raised by ``land``, as from the background
                done.set_exception(err)
            else:
                done.set_result(None)
            batch.future = done

    def encode_all(self, items: Sequence[tuple[ChunkCodec, int, np.ndarray]]) -> list:
        """The encoded bytes of ``(codec, chunk id, chunk array)`` items, in order: one group
        of about equal bytes per encoder thread, the first encoded by the calling thread (a
        thread's wake-up costs a futex round trip with the GIL held: one task per thread, not
        one per chunk), and any group no helper has started by then too (helpers busy with
        another batch). Callable from the owner (a commit's chunks) and from the batches."""
        groups = split_by_bytes(items, ENCODE_THREADS)
        rest = []
        if len(groups) > 1:
            self._start()
            rest = [self._encoders.submit(encode_group, [items[i] for i in g]) for g in groups[1:]]
        outs = [encode_group([items[i] for i in groups[0]])]
        for group, future in zip(groups[1:], rest):
            if future.cancel():  # not started (the helpers are busy elsewhere): encoded here
                outs.append(encode_group([items[i] for i in group]))
            else:
                outs.append(future.result())
        blobs: list = [None] * len(items)
        for group, out in zip(groups, outs):
            for i, blob in zip(group, out):
                blobs[i] = blob
        return blobs

    def _start(self) -> None:
        """Creates the threads (once)."""
        if self._executor is None:
            pool = concurrent.futures.ThreadPoolExecutor
            self._executor = pool(1, "zarrl-write-ahead")
            self._encoders = pool(max(1, ENCODE_THREADS - 1), "zarrl-encode")
            self._syncer = pool(1, "zarrl-sync")

    def _write(self, items, fresh_from: int, fsync: bool, batch: _Batch) -> None:
        log = SyncLog()
        try:
            blobs = self.encode_all(items)
            batch.crcs = [data_crc(blob) for blob in blobs]
            encoded = [(codec, c, blob) for (codec, c, _), blob in zip(items, blobs)]
            self._run_io(store_chunks(encoded, fresh_from, log=log))
        finally:
            batch.unsynced = set(log.files)
        if fsync and log.files:  # the next batch does not wait for these fsyncs
            batch.synced = self._syncer.submit(fsync_files, sorted(log.files))

    def land(self, wait: bool | int, log: SyncLog | None, landed: list | None = None) -> list[int]:
        """Finishes batches in submission order and returns the chunk ids they wrote: every
        finished one (``wait=False``), every one (``wait=True``, waiting), or (an int ``n``)
        waiting until at most ``n`` remain in flight. Files a batch wrote but did not fsync are
        added to ``log`` (the store's, for the next durable commit). A failed batch raises its
        error here (later ones are still landed first); its chunks stay dirty and are written
        again later. ``landed`` receives ``(tag, chunk id, crc)`` of every item written."""
        keep = 0 if wait is True else None if wait is False else int(wait)
        if keep is not None and len(self._batches) > keep:
            self._run_inline(list(self._batches)[: len(self._batches) - keep])
        written: list[int] = []
        error: BaseException | None = None
        while self._batches:
            batch = self._batches[0]
            if not batch.future.done():
                if keep is None or len(self._batches) <= keep:
                    break
                concurrent.futures.wait([batch.future])
            self._batches.popleft()
            synced = batch.synced
            files = batch.unsynced
            if synced is not None and synced.done() and synced.exception() is None:
                batch.unsynced = set()
            if log is not None:  # not (yet) fsynced: the next durable commit fsyncs them,
                log.files |= batch.unsynced  # and the directories of every file written
                log.dirs |= {path.parent for path in files}
            if batch.future.exception() is not None:
                error = error or batch.future.exception()
            else:
                written += batch.chunks
                if landed is not None:
                    landed += [(tag, c, crc) for (tag, c), crc in zip(batch.items, batch.crcs)]
        if error is not None:
            raise error
        return written

    def close(self, wait: bool = True) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=wait)
            self._encoders.shutdown(wait=wait)
            self._syncer.shutdown(wait=wait)
            self._executor = self._encoders = self._syncer = None


def encode_group(items: Sequence[tuple[ChunkCodec, int, np.ndarray]]) -> list:
    """The encoded bytes of ``(codec, chunk id, chunk array)`` items, in order."""
    return [codec.encode(block) for codec, _, block in items]


def split_by_bytes(items: Sequence[tuple[Any, int, np.ndarray]], parts: int) -> list[list[int]]:
    """Indices of ``items`` in at most ``parts`` non-empty groups of about equal bytes (their
    arrays'): largest first, each to the lightest group; ascending within a group."""
    loads = [0] * max(1, min(parts, len(items)))
    groups: list[list[int]] = [[] for _ in loads]
    for i in sorted(range(len(items)), key=lambda i: -items[i][2].nbytes):
        g = loads.index(min(loads))
        loads[g] += items[i][2].nbytes
        groups[g].append(i)
    return [sorted(g) for g in groups if g] or [[]]


__all__ = ["WriteAhead", "encode_group", "split_by_bytes"]
