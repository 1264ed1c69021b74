"""The commit policy of a writable ``ZarrStorage``: when staged rows become a commit, and the
commit itself (data first, then the commit record).

Appends that complete a chunk trigger a commit (at most every ``min_commit_interval`` seconds:
the completed chunks are written ahead in the background and counted by a later commit once
they landed); so do ``flush_every_rows`` / ``flush_every_seconds``, staged chunks filling half
the cache and explicit flushes. ``durability`` (``"os"``: fsync; ``"process"``: page cache)
is chosen per call: ``flush`` gets the storage's ``durability``, automatic commits its
``commit_durability`` (``docs/storage_format.md``, "Durability").
"""

from __future__ import annotations

import time
from typing import Protocol

from .chunk_io import ChunkStore
from .chunk_writer import ChunkWriter
from .commit_log import CommitLog
from .format import Commit
from .guard import StoreGuard
from .ring import Ring
from .store_io import run_io, sync_log

DURABILITIES = ("os", "process")


class CommitSettings(Protocol):
    """The commit options of a storage, read at every decision (they may be changed live)."""

    durability: str
    commit_durability: str
    flush_every_rows: int | None
    flush_every_seconds: float | None
    min_commit_interval: float
    gc_grace_seconds: float


class Committer:
    """Decides and makes the commits of one writable storage.

    Args:
        ring, log, chunks, writer, guard: the storage's ring, commit log, chunk I/O, chunk
            writer and guard.
        settings: where the commit options are read (the storage).
    """

    def __init__(
        self,
        ring: Ring,
        log: CommitLog,
        chunks: ChunkStore,
        writer: ChunkWriter,
        guard: StoreGuard,
        settings: CommitSettings,
    ) -> None:
        self.ring, self.log, self.chunks, self.writer = ring, log, chunks, writer
        self.guard, self.settings = guard, settings

    # ------------------------------------------------------------------ policy
    def after_write(self, length: int) -> None:
        """Rows were staged; ``length``: the storage's length in elements after them. Commits
        when a trigger is due, else starts writing completed chunks ahead."""
        s = self.settings
        self.writer.land(wait=False)
        committed_end = self.ring.base + self.log.commit.write_count
        since = time.monotonic() - self.log.last_publish
        explicit = (
            s.flush_every_rows is not None and self.ring.end - committed_end >= s.flush_every_rows
        ) or (s.flush_every_seconds is not None and since >= s.flush_every_seconds)
        due = explicit or self.completed_chunks_due()
        # staged chunks not being written ahead (those are pinned until they land, at most
        # half the pool: start_write_ahead waits for them beyond that)
        pressure = self.writer.pressure
        if due and not pressure and not self.writer.in_place_pending:
            # completed chunks (rate-limited by min_commit_interval > 0): commit what the
            # background has written, never waiting for encoding
            ahead = not explicit and s.min_commit_interval > 0
            self.commit_whole_chunks(length, write_ahead=ahead)
        elif due or pressure:
            self.flush(s.commit_durability, length)
        else:
            self.start_write_ahead()

    def start_write_ahead(self) -> None:
        """Completed chunks are encoded and stored in the background (``ChunkWriter``)."""
        self.writer.start_write_ahead(fsync=self.settings.durability == "os")

    def commit_deferred(self, length: int) -> None:
        """Completed chunks whose commit ``min_commit_interval`` deferred are committed at the
        next sampling call once the interval has passed: a burst of appends followed only by
        sampling would otherwise stay uncommitted (not durable, and invisible to the background
        refill, which decodes committed chunks only). Takes the storage's lock: a worker's
        writes may be applied by the pump thread meanwhile."""
        if self.guard.read_only:
            return
        with self.guard.lock:
            if not self.guard.closed and self.completed_chunks_due():
                self.after_write(length)

    def completed_chunks_due(self) -> bool:
        """Appends completed a chunk since the last commit, and ``min_commit_interval`` has
        passed (bulk loads commit at most that often)."""
        R = self.log.header.chunk_rows
        pending = self.ring.end // R > (self.ring.base + self.log.commit.write_count) // R
        since = time.monotonic() - self.log.last_publish
        return pending and since >= self.settings.min_commit_interval

    def commit_whole_chunks(self, length: int, write_ahead: bool = False) -> None:
        """Automatic commit up to the last completed chunk: the partly filled head chunk stays
        staged, so it is written once when full instead of at every commit. ``write_ahead``:
        commit only up to the first chunk not written yet, and start writing the completed
        ones in the background (their commit comes at a later call, once they have landed)."""
        R = self.log.header.chunk_rows
        durability = self.settings.commit_durability
        head = self.ring.end // R
        if write_ahead:
            self.start_write_ahead()
            head = self.writer.first_staged(head)
            if head * R - self.ring.base <= self.log.commit.write_count:
                return
        elif self.ring.end % R == 0 or head * R - self.ring.base <= self.log.commit.write_count:
            self.flush(durability, length)
            return
        wc = head * R - self.ring.base
        if not write_ahead:
            self.writer.write_dirty(skip=head)
        self.publish(
            wc, max(min(length, self.ring.live_len(wc)), self.log.commit.length), durability
        )

    # ------------------------------------------------------------------ commits
    def flush(self, durability: str, length: int) -> None:
        """Writes every staged chunk, then publishes a commit counting ``length`` elements,
        unless nothing changed since the last commit (and, for ``"os"``, nothing waits for
        its fsync)."""
        if self.guard.read_only or self.guard.closed or self.log.header is None:
            return
        self.guard.check_owner_process()
        c = self.log.commit
        if not (
            self.writer.staged
            or self.writer.in_place_pending
            or (self.ring.base, self.ring.write_count, length) != (c.base, c.write_count, c.length)
            or (durability == "os" and bool(sync_log(self.log.store)))  # an earlier cheap commit
        ):
            return
        self.writer.write_dirty()
        self.publish(self.ring.write_count, length, durability)

    def publish(self, write_count: int, length: int, durability: str) -> None:
        """The commit point: one atomic rewrite of the group attributes counting
        ``write_count`` rows since the ring's base and ``length`` elements; ``durability="os"``
        fsyncs every file written since the last such commit, then the record."""
        if durability not in DURABILITIES:
            raise ValueError(f"durability must be 'os' or 'process', got {durability!r}")
        gc_below = self.log.gc_threshold(self.settings.gc_grace_seconds)
        old, base = self.log.commit, self.ring.base
        seals = self.chunks.seals
        commit = Commit(
            revision=old.revision + 1,
            base=base,
            write_count=write_count,
            length=length,
            extent=old.extent,
            inplace_revision=old.inplace_revision + int(self.writer.in_place_pending),
            gc_below=gc_below,
            head=None
            if seals is None
            else seals.head(base + write_count, self.log.header.chunk_rows, old),
        )
        live_start = self.ring.live_start(base, write_count)
        run_io(self.chunks.pending_seals())  # entries of chunks written ahead, before the record
        self.log.publish(commit, durable=durability == "os", live_start=live_start)
        self.writer.committed(gc_below)
