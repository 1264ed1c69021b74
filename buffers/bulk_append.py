"""Bulk appends to a growing ``ZarrStorage``: whole chunks encoded and stored straight from the
caller's arrays, bypassing the chunk pool's per-row staging.

``append_chunks`` takes rows that fill whole chunks from the ring's end (which must be on a
chunk boundary) and hands them to the storage's write-ahead (``buffers/write_ahead.py``): each
chunk is encoded on the encoder threads, written as a fresh chunk file (no committed row lives
in it) and, for ``durability="os"`` storages, fsynced on the sync thread while the caller goes
on. Their seal entries are staged when the batch lands, before the commit that counts them,
exactly as for the chunks the storage writes ahead itself; the rows are counted by the next
commit (``flush``), never before. A crash before it leaves the chunk files past the commit:
nothing counts them and the next appends overwrite them.

``BulkAppender`` accepts rows in pieces of any size: the rows up to the next chunk boundary go
through ``ZarrStorage.set`` (the chunk pool), the chunks after it through ``append_chunks``, the
last one partly filled (``append_chunks(rows=)``: zeros past its rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from .chunk_writer import on_host
from .format import key_path, path_key
from .row_data import validate
from .store_io import run_io

BACKLOG = 2
"""Write-ahead batches of bulk chunks in flight at most (each holds its source arrays)."""
RESERVE_CHUNKS = 8
"""A bulk append that grows the arrays makes room for at least this many more chunks (array
metadata only, zeros past the commit): a growing import rewrites every leaf's metadata a few
times instead of at every doubling."""


def check_bulk(storage: Any) -> None:
    """Raises ``ValueError`` naming why ``storage`` takes no bulk append: it must be writable,
    growing (``max_size=None``), one batch dim, without ``dedupe_next`` and with synchronous
    chunk codecs."""
    header = storage.log.header
    why = None
    if storage.read_only:
        why = "it is read-only"
    elif storage.ring.capacity is not None:
        why = "it is a ring of fixed capacity (bulk appends need max_size=None)"
    elif storage.ndim != 1 or (header is not None and header.tail):
        why = "it has more than one batch dim"
    elif header is not None and header.xor_previous:
        why = "it stores de-duplicated next leaves (dedupe_next=True)"
    elif header is not None and not storage.chunks.sync_codecs:
        why = "a leaf's codecs have no whole-chunk encoder"
    if why is not None:
        raise ValueError(f"{storage.where}: no bulk append: {why}")


def ensure_layout(storage: Any, td: TensorDictBase) -> None:
    """Creates the store's layout (arrays, seal table, an empty commit) from the first row of
    ``td`` when the storage has none yet, as its first ``set`` would."""
    if storage.log.header is None:
        storage.rows.create_layout(storage.rows.infer_layout(td[0]))


def append_chunks(storage: Any, data: TensorDictBase, rows: int | None = None) -> int:
    """Appends the rows of ``data`` (a TensorDict ``[k * chunk_rows]`` of the store's schema)
    as ``k`` whole chunks at the ring's end, which must be a chunk boundary; returns ``k``.
    ``rows`` (default: all of them) counts only the first ``rows``, in the last chunk: the
    chunk is still written whole (its rows past ``rows`` as given: callers pass zeros, what
    the chunk pool writes there) and landed before this returns, so that rows set after it
    read-modify-write that chunk. Called by ``ZarrStorage.append_chunks`` under its lock (it
    keeps TorchRL's bookkeeping)."""
    check_bulk(storage)
    storage.guard.check_writable()
    if not isinstance(data, TensorDictBase) or data.batch_dims != 1:
        raise ValueError(f"{storage.where}: a bulk append takes a TensorDict of batch [rows]")
    td = data
    ensure_layout(storage, td)
    header, ring = storage.log.header, storage.ring
    leaves = validate(td, header)
    R, n = header.chunk_rows, td.shape[0]
    if n % R or ring.end % R:
        raise ValueError(
            f"{storage.where}: a bulk append takes whole chunks of {R} rows from a chunk "
            f"boundary; got {n} rows at physical row {ring.end}; nothing was written"
        )
    count = n if rows is None else int(rows)
    if not n - R < count <= n:
        raise ValueError(
            f"{storage.where}: a bulk append of {n} rows counts between {max(n - R + 1, 0)} "
            f"and {n} of them (those past the count fill out its last chunk), not {count}; "
            "nothing was written"
        )
    if n == 0:
        return 0
    writer, chunks = storage.chunk_writer, storage.chunks
    leaves = {p: on_host(v) for p, v in leaves.items()}
    arrays = {p: leaves[p].numpy() for p in chunks.arrays}
    first = ring.end // R
    fresh_from = writer.fresh_from
    if ring.end + n > storage.log.commit.extent:  # array metadata, fsynced at the next commit
        run_io(chunks.grow(ring.end + max(n, RESERVE_CHUNKS * R)))
    codecs = chunks.codecs()
    items, tags = [], []
    for i in range(n // R):
        for path, a in arrays.items():
            items.append((codecs[path], first + i, a[i * R : (i + 1) * R]))
            tags.append(path)
    writer.write_ahead.submit(items, fresh_from, fsync=storage.durability == "os", tags=tags)
    pos = ring.next_position()
    ring.advance(count)
    storage.hot.grow_for(ring.end - 1)
    storage.index.ensure_rows(pos + count)
    storage.index.write(slice(pos, pos + count), {p: v[:count] for p, v in leaves.items()})
    # back-pressure: at most BACKLOG batches hold their arrays; all landed after a partly
    # counted chunk (the pool reads a chunk from the store only once it has landed)
    writer.land(wait=True if count < n else BACKLOG)
    return n // R


class RowSource(Protocol):
    """Rows ``[len(source)]`` of a storage's schema that write themselves straight into the
    appender's chunk buffers (no intermediate arrays), e.g. rows derived from columns."""

    leaves: frozenset[str]
    """Every leaf path ``fill`` can write (a superset of the stored schema's)."""

    def __len__(self) -> int: ...

    def example(self) -> TensorDictBase:
        """One row as a TensorDict ``[1]``: the layout of a storage that has none (a storage
        that has one keeps its dtypes: ``fill`` writes into them)."""
        ...

    def fill(self, out: Mapping[str, np.ndarray], a: int, b: int) -> None:
        """Writes rows ``[a, b)`` into ``out`` (leaf path -> array ``[b - a, *shape]`` of the
        stored dtype; ``next/done`` for nested keys), every leaf of the schema."""
        ...


class TensorDictRows:
    """``RowSource`` of a TensorDict's rows: numpy copies for CPU leaves (no torch intra-op
    threads woken, which would spin on the cores the background encoding needs), torch's for
    the others."""

    def __init__(self, td: TensorDictBase) -> None:
        self.td = td
        self.leaves = frozenset(key_path(k) for k in td.keys(True, True))

    def __len__(self) -> int:
        return self.td.shape[0]

    def example(self) -> TensorDictBase:
        return self.td[:1]

    def fill(self, out: Mapping[str, np.ndarray], a: int, b: int) -> None:
        for key, leaf in self.td.items(include_nested=True, leaves_only=True):
            dest = out[key_path(key)]
            if leaf.device.type == "cpu":
                np.copyto(dest, leaf[a:b].detach().numpy())
            else:
                torch.from_numpy(dest).copy_(leaf[a:b])


class BulkAppender:
    """Appends rows given in pieces of any size to a growing ``ZarrStorage``: the rows before
    the first chunk boundary through ``set``, then every whole chunk in bulk
    (``ZarrStorage.append_chunks``) from a buffer the pieces are written into; ``finish()``
    appends the last, partly filled chunk the same way and commits the rows (``flush``);
    ``abandon()`` closes the storage without committing any of them.

    A piece is a TensorDict of the store's schema or a ``RowSource`` (rows that write
    themselves into the buffers). The chunk buffers (one chunk of every leaf each, made from
    the stored schema) are reused in turn, ``BACKLOG + 1`` of them: ``append_chunks`` returns
    with at most ``BACKLOG`` write-ahead batches in flight and batches land in order, so the
    buffer filled ``BACKLOG + 1`` chunks ago has been encoded. Each row is written once
    (piece -> buffer) into memory already faulted in, instead of concatenating the pieces of
    every chunk into fresh arrays."""

    def __init__(self, storage: Any) -> None:
        check_bulk(storage)
        self.storage = storage
        self.buffers: list[tuple[TensorDictBase, dict[str, np.ndarray]]] = []  # BACKLOG + 1
        self.turn = 0  # the buffer being filled
        self.filled = 0  # its rows
        self.appended = 0  # rows handed to the storage

    @property
    def held(self) -> int:
        """Rows written into the chunk buffer and not handed to the storage yet."""
        return self.filled

    def append(self, data: TensorDictBase | RowSource) -> None:
        """Appends the rows of ``data`` (``[N]``, the store's schema) after those before."""
        source = TensorDictRows(data) if isinstance(data, TensorDictBase) else data
        n = len(source)
        if n == 0:
            return
        example = source.example()
        ensure_layout(self.storage, example)
        header = self.storage.log.header
        # a clear error before anything is written: a TensorDict must match the stored schema,
        # a row source must name its leaves (it writes them in the stored dtypes)
        if isinstance(data, TensorDictBase):
            validate(example, header)
        elif not set(header.schema) <= set(source.leaves):
            raise ValueError(
                f"{self.storage.where}: the rows have no leaf "
                f"{sorted(set(header.schema) - set(source.leaves))} of the stored schema "
                f"{sorted(header.schema)}; nothing was written"
            )
        R = header.chunk_rows
        i = 0
        if not self.filled:  # the head chunk first, through the pool
            to_boundary = -self.storage.ring.end % R
            if to_boundary:
                i = min(to_boundary, n)
                head, arrays = self._new_rows(i)
                source.fill(arrays, 0, i)
                self._set(head)
        while i < n:
            buffer, arrays = self._buffer(R)
            k = min(R - self.filled, n - i)
            at = slice(self.filled, self.filled + k)
            source.fill({p: a[at] for p, a in arrays.items()}, i, i + k)
            self.filled += k
            i += k
            if self.filled == R:
                self.storage.append_chunks(buffer)
                self.appended += R
                self.filled = 0
                self.turn = (self.turn + 1) % (BACKLOG + 1)

    def reserve(self, rows: int) -> None:
        """Makes room for at least ``rows`` more rows (the store's layout must exist): grows
        the arrays (their metadata only) and the storage's index columns (memory the kernel
        zeroes on first touch), so that the appends that follow resize and copy nothing."""
        storage = self.storage
        with storage.guard.lock:
            end = storage.ring.end + rows
            if end > storage.log.commit.extent:
                run_io(storage.chunks.grow(end))
            storage.index.ensure_rows(storage.ring.next_position() + rows)

    def finish(self) -> None:
        """Appends the rows of the partly filled chunk (a whole chunk, zeros past them, in
        bulk), then commits (``flush``)."""
        if self.filled:
            buffer, arrays = self.buffers[self.turn]
            for a in arrays.values():
                a[self.filled :] = 0
            self.storage.append_chunks(buffer, rows=self.filled)
            self.appended += self.filled
            self.filled = 0
        self.storage.flush()

    def abandon(self) -> None:
        """Closes the storage without committing the rows appended (``ZarrStorage.abandon``)."""
        self.buffers, self.filled = [], 0
        self.storage.abandon()

    def _new_rows(self, rows: int) -> tuple[TensorDictBase, dict[str, np.ndarray]]:
        """Uninitialized rows ``[rows]`` of the stored schema: a TensorDict and its leaves'
        arrays by path (the same memory)."""
        arrays = {
            path: np.empty((rows, *spec.shape), dtype=spec.dtype)
            for path, spec in self.storage.log.header.schema.items()
        }
        td = TensorDict(
            {path_key(p): torch.from_numpy(a) for p, a in arrays.items()}, batch_size=[rows]
        )
        return td, arrays

    def _buffer(self, rows: int) -> tuple[TensorDictBase, dict[str, np.ndarray]]:
        """The chunk buffer being filled, made the first time its turn comes."""
        if self.turn == len(self.buffers):
            self.buffers.append(self._new_rows(rows))
        return self.buffers[self.turn]

    def _set(self, td: TensorDictBase) -> None:
        start = len(self.storage)
        self.storage.set(torch.arange(start, start + td.shape[0]), td)
        self.appended += td.shape[0]
