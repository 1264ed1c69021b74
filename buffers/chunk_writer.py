"""The chunk writer of a ``ZarrStorage``: rows staged in the hot tier's pool (dirty chunks),
their background write-ahead and their write at a commit, and the deletion of dead chunks.

Appended rows are staged in the pool's chunks; completed chunks are encoded and stored in the
background (``buffers/write_ahead.py``) and *land* (are marked clean, their seal entries
staged) before the commit that counts them; a commit writes what is still staged
(``write_dirty``) before its commit record. Rewriting committed rows marks the next commit as
an in-place one (``in_place_pending``), which readers and pending refills treat as new bytes.
No commit record is written here (``buffers/commit_log.py``).
"""

from __future__ import annotations

import torch

from . import xor_rows
from .chunk_io import ChunkStore
from .chunk_pool import unique_chunks
from .commit_log import CommitLog
from .hot_tier import HotTier
from .index_columns import IndexColumns
from .ring import Ring
from .store_io import run_io, sync_log
from .write_ahead import WriteAhead


def on_host(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached on the CPU (itself when it already is)."""
    return t if t.device.type == "cpu" and not t.requires_grad else t.detach().to("cpu")


class ChunkWriter:
    """Staged chunks of one writable storage and their way to the store.

    Args:
        ring, log, chunks, hot: the storage's ring, commit log, chunk I/O and hot tier.
        index: the storage's RAM index columns, written beside the chunks by ``write_rows``.
    """

    def __init__(
        self,
        ring: Ring,
        log: CommitLog,
        chunks: ChunkStore,
        hot: HotTier,
        index: IndexColumns | None = None,
    ) -> None:
        self.ring, self.log, self.chunks, self.hot = ring, log, chunks, hot
        self.index = IndexColumns() if index is None else index
        self.write_ahead = WriteAhead(run_io)  # completed chunks, written in the background
        self.written_chunks = 0  # chunk ids below this were stored by this process
        self.in_place_pending = False  # committed rows rewritten since the last commit
        self.deleted_below = 0  # chunk ids below this were deleted (dead)

    @property
    def _committed_end(self) -> int:
        """Physical row after the last committed row."""
        return self.log.commit.base + self.log.commit.write_count

    @property
    def fresh_from(self) -> int:
        """The first chunk id that holds no committed row (written in place, not atomically)."""
        return -(self._committed_end // -self.log.header.chunk_rows)

    # ------------------------------------------------------------------ staging
    def write_rows(self, rows: torch.Tensor, leaves: dict[str, torch.Tensor], append: bool) -> None:
        """Stages ``leaves`` (``{path: [N, *tail, *shape]}``, any device) at ring positions
        ``rows`` (int64 ``[N]``) and writes the index columns. ``append``: the writer's cursor
        moves; rows at the ring's next positions are appended (the write count advances; of a
        batch larger than the ring only the last ring-full is kept), any others rewritten."""
        cap0 = self.log.header.capacity
        n = rows.numel()
        leaves = {k: on_host(v) for k, v in leaves.items()}
        run = append and torch.equal(rows, self.ring.append_positions(n))  # consecutive rows
        ring_run = False
        if run:
            phys = self.ring.end + torch.arange(n)
            keep = n if cap0 is None else min(n, cap0)  # a batch larger than the ring
            phys, rows = phys[n - keep :], rows[n - keep :]
            leaves = {k: v[n - keep :] for k, v in leaves.items()}
            self.ring.advance(n)
            ring_run = int(rows[-1]) - int(rows[0]) + 1 == rows.numel()  # no wrap-around
        else:
            phys = self.ring.phys(rows)
            self.before_rewrite(phys)
        self.index.ensure_rows(int(rows.max()) + 1)
        self.stage(phys, leaves, run)
        self.index.write(
            slice(int(rows[0]), int(rows[0]) + rows.numel()) if ring_run else rows, leaves
        )

    def before_rewrite(self, phys: torch.Tensor) -> None:
        """Rows at physical rows ``phys`` (int64) are about to be rewritten (not appended):
        chunks being written ahead land first; committed rows make the commit in-place."""
        self.land(wait=True)  # rows of chunks being written ahead may change
        if int(phys.min()) < self.ring.base + self.log.commit.write_count:
            self.in_place_pending = True

    def stage(self, phys: torch.Tensor, leaves: dict[str, torch.Tensor], run: bool) -> None:
        """Stages ``leaves`` (CPU, ``[N, *tail, *shape]``) at physical rows ``phys`` (int64
        ``[N]``; ``run``: consecutive) in the pool; more chunks than half the pool are staged
        and written group by group."""
        self.hot.grow_for(int(phys[-1]) if run else int(phys.max()))
        committed_end = self.ring.base + self.log.commit.write_count
        R = self.log.header.chunk_rows
        pool = self.hot.pool
        # chunks that may hold data: committed rows, or rows this process already stored
        # past the commit; anything later is absent or a torn leftover of a crash: zeros
        stored_chunks = max(-(committed_end // -R), self.written_chunks)

        def loader(chunks: list[int]):
            stored = [c for c in chunks if c < stored_chunks]
            if not stored:  # fresh chunks of an append: nothing to read (zeros)
                return [None] * len(chunks)
            decoded = dict(zip(stored, self.chunks.load(stored)))
            return [decoded.get(c) for c in chunks]

        if run:  # an append's chunks, without a per-row division
            first = int(phys[0])
            uniq = torch.arange(first // R, (first + phys.numel() - 1) // R + 1)
        else:
            uniq = unique_chunks(phys // R)
        room = max(1, pool.max_slots // 2)
        if uniq.numel() + len(pool.dirty - self.write_ahead.in_flight) <= room:
            pool.write(phys, leaves, loader, run=run)
        else:  # more chunks than the cache holds: stage and write them group by group
            self.write_dirty()
            chunks = phys // R
            for group in uniq.split(room):
                mask = torch.isin(chunks, group)
                pool.write(phys[mask], {k: v[mask] for k, v in leaves.items()}, loader)
                self.write_dirty()

    @property
    def pressure(self) -> bool:
        """Staged chunks not being written ahead fill half the pool (a commit is due)."""
        pool = self.hot.pool
        return len(pool.dirty - self.write_ahead.in_flight) >= max(1, pool.max_slots // 2)

    @property
    def staged(self) -> bool:
        """Whether any chunk holds rows not stored yet."""
        return bool(self.hot.pool.dirty)

    def first_staged(self, default: int) -> int:
        """The lowest staged chunk id (``default`` when none is)."""
        pool = self.hot.pool
        with pool.lock:
            return min(default, *pool.dirty) if pool.dirty else default

    def discard_staged(self) -> None:
        """Forgets every staged and cached chunk (the buffer was emptied)."""
        self.land(wait=True)
        pool = self.hot.pool
        with pool.lock:
            pool.dirty.clear()
            pool.drop_clean()

    # ------------------------------------------------------------------ writes
    def start_write_ahead(self, fsync: bool) -> None:
        """Starts encoding and storing the completed, staged chunks in the background: the
        next commit then finds them written (and, with ``fsync``, fsynced)."""
        if self.in_place_pending or not self.chunks.sync_codecs:
            return
        R = self.log.header.chunk_rows
        head = self.ring.end // R
        codecs = self.chunks.codecs()
        pool, ahead = self.hot.pool, self.write_ahead.in_flight
        with pool.lock:
            chunks = sorted(c for c in pool.dirty - ahead if c < head)
        if not chunks:
            return
        run_io(self.chunks.grow((chunks[-1] + 1) * R))
        half = max(1, pool.max_slots // 2)
        while self.write_ahead.in_flight and len(self.write_ahead.in_flight) + len(chunks) > half:
            self.land(wait=self.write_ahead.batches - 1)  # back-pressure: the oldest
        fresh_from = self.fresh_from
        # only chunks that hold no committed row: their seal entries are staged when they land
        # (before the commit that covers them); a rewrite of committed rows is written by the
        # commit itself, entries first
        chunks = [c for c in chunks if c >= fresh_from]
        if not chunks:
            return
        with pool.lock:
            items, tags = [], []
            for c in chunks:
                block = xor_rows.apply(pool.chunk_arrays(c), self.log.header.xor_previous)
                items += [(codecs[path], c, block[path]) for path in self.chunks.arrays]
                tags += list(self.chunks.arrays)
        self.write_ahead.submit(items, fresh_from, fsync=fsync, tags=tags)

    def land(self, wait: bool | int) -> None:
        """Marks the chunks of finished write-ahead batches clean (``wait``: see
        ``WriteAhead.land``); their unsynced files go to the store's log for the next durable
        commit, their seal entries are staged."""
        landed: list[tuple[str, int, int]] = []
        try:
            written = self.write_ahead.land(wait, sync_log(self.log.store), landed)
        finally:
            if landed:  # entries before the commit covering them (written by that commit)
                run_io(self.chunks.seal_entries(landed, defer=True))
        if written:
            self.written_chunks = max(self.written_chunks, written[-1] + 1)
            self.hot.pool.mark_clean(written)

    def write_dirty(self, skip: int | None = None) -> None:
        """Data half of a commit: encodes every staged chunk but ``skip`` and stores them, with
        any array resize, in one concurrent event-loop call; chunks being written ahead in the
        background are left to it, and waited for."""
        ahead = self.write_ahead.in_flight  # the background writes them meanwhile
        try:
            self._write_staged(skip, ahead)
        finally:
            self.land(wait=True)

    def _write_staged(self, skip: int | None, ahead: frozenset[int]) -> None:
        R = self.log.header.chunk_rows
        pool = self.hot.pool
        with pool.lock:
            dirty = sorted(c for c in pool.dirty if c != skip and c not in ahead)
            if not dirty:
                return
            io = self.chunks.grow((dirty[-1] + 1) * R)
            pairs = self.log.header.xor_previous
            blocks = [(c, xor_rows.apply(pool.chunk_arrays(c), pairs)) for c in dirty]
            self.chunks.write(  # published by the commit that follows
                blocks, io, self.fresh_from, self.write_ahead.encode_all
            )
            self.written_chunks = max(self.written_chunks, dirty[-1] + 1)
            pool.mark_clean(dirty)

    # ------------------------------------------------------------------ after a commit
    def committed(self, gc_below: int) -> None:
        """The commit record was published: settles the seal table, clears the in-place mark
        and deletes the chunks wholly below ``gc_below``."""
        if self.chunks.seals is not None:
            R = self.log.header.chunk_rows
            head = self._committed_end // R
            pool = self.hot.pool

            def keep(chunks: torch.Tensor) -> torch.Tensor:  # what the writer still caches
                return (pool.slots_of(chunks) >= 0) | (chunks >= head - 1)

            self.chunks.settle(keep)
        self.in_place_pending = False
        self.collect_garbage(gc_below)

    def collect_garbage(self, gc_below: int) -> None:
        """Deletes the chunks wholly below physical row ``gc_below`` (published in the commit
        record), from the pool and the store."""
        dead_below = gc_below // self.log.header.chunk_rows
        first = self.deleted_below
        if dead_below <= first:
            return
        for c in range(first, dead_below):
            self.hot.pool.evict(c)
        self.chunks.drop(first, dead_below)
        self.deleted_below = dead_below

    def adopt(self, gc_below: int) -> None:
        """A commit was adopted (reopened or refreshed): chunks below ``gc_below`` are gone."""
        self.deleted_below = gc_below // self.log.header.chunk_rows

    def forget_written(self) -> None:
        """The store's content was replaced: no chunk past its commit was stored by us."""
        self.written_chunks = 0

    def close(self) -> None:
        self.write_ahead.close()
