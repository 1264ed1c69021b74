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
from .format import Commit, Header, StoreFormatError
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

    def setup(self, header: Header, create: bool = False) -> None:
        """Makes ``header`` the layout of the parts: the ring's row shape, the arrays (created
        when ``create``), the chunk pool and the RAM index columns."""
        self.log.header = header
        self.ring.tail = header.tail
        self.chunks.attach(header, create)
        self.hot.build(header)
        self.index.build(header)

    def open_store(self, existsok: bool) -> Commit | None:
        """Attaches the parts to the store's commit record (an empty group becomes an empty
        zarrl store); returns the adopted commit, ``None`` while no row decided the schema.
        Refuses a group that is not a zarrl store, and an existing store unless ``existsok``
        (or read-only)."""
        group, read_only = self.log.group, self.chunks.read_only
        attrs = group.attrs.asdict()
        if "zarrl" not in attrs:
            if attrs or any(True for _ in group.members()) or read_only:
                raise StoreFormatError(
                    f"{self.log.where} is a Zarr group but not a zarrl replay store "
                    "(no attributes['zarrl'])"
                )
            self.log.write()  # empty zarrl store, schema decided by the first write
            return None
        header, commit = self.log.read()
        if not existsok and not read_only:
            raise FileExistsError(
                f"a zarrl store already exists at {self.log.where}; pass existsok=True or use "
                "ZarrStorage.open(path) to continue it"
            )
        self.log.check_layout(attrs["zarrl"])
        if header is None:
            return None
        self.log.adopt_layout(attrs["zarrl"], header)
        self.setup(header)
        commit = self.adopt_fresh(commit)
        R, end = header.chunk_rows, commit.base + commit.write_count
        if self.chunks.seals is not None and not read_only and end % R:
            self.chunks.load([end // R])  # the head chunk on disk, checked: its crcs
        return commit

    def refresh(self) -> Commit | None:
        """Re-reads the commit record and adopts a newer one (the first one: with its layout);
        returns the adopted commit, ``None`` when nothing new is visible."""
        group, header, commit = self.poll()
        if header is None:
            return None
        if self.log.header is None:
            self.log.reopen(group)
            self.log.adopt_layout(group.attrs.asdict()["zarrl"], header)
            self.setup(header)
            return self.adopt_fresh(commit)
        if commit.revision == self.log.commit.revision:
            return None
        old, full = self.log.commit, self.needs_full(commit)
        if commit.extent != old.extent:  # the writer resized the arrays: reload their metadata
            self.log.reopen(group)
            self.chunks.reload()
        try:
            self.adopt(commit, full, since=old)
        except StaleRead:
            commit = self.adopt_fresh(commit)
        return commit

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
