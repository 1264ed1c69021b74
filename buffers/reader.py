"""Following the commit record: how a storage makes a commit its visible state (at open, at
``refresh()`` of a reader, after ``loads``), and the checks that keep a reader from returning
rows the writer has recycled since (``StaleRead``)."""

from __future__ import annotations

import time

import torch
import zarr

from .chunk_io import ChunkStore, StaleRead
from .chunk_writer import ChunkWriter
from .commit_log import CommitLog
from .format import Commit, Header
from .hot_tier import HotTier
from .index_columns import IndexColumns
from .ring import Ring


class Reader:
    """Adopts commits into the ring, the hot tier, the chunk writer's horizon and the index
    columns of one storage.

    Args:
        ring, log, chunks, hot, writer, index: the storage's parts.
    """

    def __init__(
        self,
        ring: Ring,
        log: CommitLog,
        chunks: ChunkStore,
        hot: HotTier,
        writer: ChunkWriter,
        index: IndexColumns,
    ) -> None:
        self.ring, self.log, self.chunks = ring, log, chunks
        self.hot, self.writer, self.index = hot, writer, index
        self.last_refresh = time.monotonic()

    def due(self, every_seconds: float | None) -> bool:
        """Whether ``every_seconds`` (``None``: never) passed since the last ``poll``."""
        return every_seconds is not None and time.monotonic() - self.last_refresh >= every_seconds

    def poll(self) -> tuple[zarr.Group, Header | None, Commit]:
        """The store's group as it is now, with its header and commit record."""
        self.last_refresh = time.monotonic()
        group = self.log.fresh_group()
        header, commit = self.log.read_group(group)
        return group, header, commit

    def needs_full(self, commit: Commit) -> bool:
        """Whether adopting ``commit`` after the current one must drop every cached chunk:
        rows rewritten in place, a new base, or a whole ring overwritten since."""
        old, cap0 = self.log.commit, self.log.header.capacity
        return (
            commit.inplace_revision != old.inplace_revision
            or commit.base != old.base
            or (cap0 is not None and commit.write_count - old.write_count >= cap0)
        )

    def adopt(self, commit: Commit, full: bool, since: Commit | None = None) -> None:
        """Makes ``commit`` the visible state of the parts: cached chunks (all dropped when
        ``full``, else the old head chunk of ``since``), ring, gc horizon, index columns (the
        rows committed after ``since``, or all live rows). Raises ``StaleRead`` if the writer
        recycled rows while they were read."""
        R = self.log.header.chunk_rows
        pool = self.hot.pool
        with pool.lock:
            if full:
                pool.drop_clean()
            elif since is not None:
                pool.evict((since.base + since.write_count) // R)  # old head chunk
        self.log.commit = commit
        self.ring.adopt(commit.base, commit.write_count)
        self.writer.adopt(commit.gc_below)
        self.hot.grow_for(self.ring.end)
        live_rows = self.ring.rows_of(commit.length)
        start, end = self.ring.live_range(live_rows)
        if since is not None and not full:
            start = max(start, since.base + since.write_count)
        if self.index and end > start:
            self.index.ensure_rows(live_rows)
            self.index.reload(self.chunks, start, end, self.ring.position(torch.arange(start, end)))

    def adopt_fresh(self, commit: Commit) -> Commit:
        """``adopt(commit, full=True)``; a reader that the writer moved past while it read the
        index columns adopts the newest commit instead (up to 4 tries). Returns the adopted
        commit."""
        for attempt in range(4):
            try:
                self.adopt(commit, full=True)
                return commit
            except StaleRead:
                if attempt == 3:
                    raise
                self.log.reopen(self.log.fresh_group())
                self.chunks.reload()
                _, commit = self.log.read()
        return commit

    def check_not_stale(self, first_row: int) -> None:
        """Readers: chunks just loaded from physical row ``first_row`` on must still be live in
        the newest commit (the writer may have recycled them since this reader's last
        refresh); raises ``StaleRead`` if not."""
        R = self.log.header.chunk_rows
        if first_row // R < self.log.latest().gc_below // R:  # its chunk may be deleted
            self.hot.drop_clean()
            raise StaleRead(
                f"{self.log.where}: rows read by this reader were recycled by the writer; call "
                "refresh() more often (or set refresh_every_seconds)"
            )
