"""The write path of a ``ZarrStorage``: what TorchRL's writers pass to ``set`` becomes rows
staged in the chunk writer.

``RowWriter.write`` takes the data (a TensorDict, a tensor, a pytree or a list of rows) at a
cursor (an int, a slice, a tensor or list of positions, or a ``(dim0, *rest)`` tuple for a
sub-row selection), checks it against the store's layout, and stages whole rows at ring
positions; the first write infers the layout (``Header``) and creates the store's arrays. The
storage keeps TorchRL's bookkeeping (length, last cursor, mutation revision) and applies the
returned ``Written``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase

from ._compat_torchrl import MAX_SIZE_UNBOUNDED
from .chunk_io import ChunkStore
from .chunk_writer import ChunkWriter
from .commit_log import CommitLog
from .format import Header
from .gathering import Gatherer
from .guard import StoreGuard
from .index_columns import IndexColumns
from .indexing import rows_and_reindex
from .ring import Ring
from .row_data import as_tensordict, flip_list, infer_header, validate


@dataclass(frozen=True)
class Layout:
    """The constructor arguments the first write's layout is inferred with: batch dims counted
    by the capacity, rows per chunk (``None``: 4 to 8 MiB), the index leaves (``None``: the
    small ones), and whether ``("next", X)`` duplicates are stored XORed."""

    ndim: int
    chunk_rows: int | None
    index_keys: list | None
    dedupe_next: bool


@dataclass(frozen=True)
class Written:
    """What one ``write`` staged. ``cursor``: the positions as given (an int cursor as a
    one-element tensor, a slice as its positions), ``None`` for a sub-row write (the cursor of
    TorchRL's writers does not move); ``elements``: elements along the batch dims counted by the
    capacity (0 for a sub-row write)."""

    cursor: Any
    elements: int


class RowWriter:
    """Stages the rows given to ``ZarrStorage.set`` in the chunk writer.

    Args:
        ring, log, chunks, chunk_writer, index, gatherer, guard: the storage's parts.
        layout: what the first write's layout is inferred with.
        setup: makes a new layout the parts' one (``Reader.setup``, then TorchRL's
            ``initialized``); called with ``create=True`` before the arrays exist.
    """

    def __init__(
        self,
        ring: Ring,
        log: CommitLog,
        chunks: ChunkStore,
        chunk_writer: ChunkWriter,
        index: IndexColumns,
        gatherer: Gatherer,
        guard: StoreGuard,
        layout: Layout,
        setup: Callable[..., None],
    ) -> None:
        self.ring, self.log, self.chunks, self.chunk_writer = ring, log, chunks, chunk_writer
        self.index = index
        self.gatherer, self.guard, self.layout, self.setup = gatherer, guard, layout, setup

    def clear(self) -> None:
        """Forgets every row (``empty``): staged chunks dropped, the ring restarted at the next
        chunk, the index columns cleared; the chunks still stored are rewritten in place."""
        if self.log.header is None:
            return
        self.chunk_writer.discard_staged()
        self.ring.restart(self.log.header.chunk_rows)
        self.index.clear()
        self.chunk_writer.in_place_pending = True

    def write(
        self,
        cursor: Any,
        data: Any,
        *,
        append: bool,
        length: int,
        on_refusal: Callable[[int], None] | None = None,
    ) -> Written | None:
        """Stages ``data`` at ``cursor``; ``append``: the rows are new (TorchRL's
        ``set_cursor``), else they overwrite rows in place; ``length``: the storage's length in
        elements. Returns ``None`` for an empty extend (nothing written, nothing initialized).
        Data that does not fit the layout is refused with ``ValueError`` before anything is
        written, after ``on_refusal(rows)`` (the writers' cursor moves back: no hole)."""
        self.guard.check_writable()
        if isinstance(data, list):
            data = flip_list(data)
        is_int = isinstance(cursor, (int, np.integer)) or (
            isinstance(cursor, torch.Tensor) and cursor.ndim == 0
        )
        n = 1 if is_int else rows_of_cursor(cursor)

        def refuse() -> None:
            if on_refusal is not None and n:
                on_refusal(n)

        ndim = self.layout.ndim
        try:
            td = as_tensordict(data, not is_int, ndim, self.log)
        except ValueError:
            refuse()
            raise
        if not is_int and td.batch_dims and td.shape[0] == 0:
            return None
        if is_int:
            td = td.unsqueeze(0)
            cursor = torch.tensor([int(cursor)])
        n = td.shape[0] if not isinstance(cursor, tuple) else 0
        if self.log.header is None:
            try:
                header = self.infer_layout(td[0])
            except ValueError:  # refused before anything exists: the writer moves back too
                refuse()
                raise
            self.create_layout(header, tensor_root=isinstance(data, torch.Tensor))
        if isinstance(cursor, tuple) and len(cursor) > 1:  # checked as whole rows
            self.write_partial(cursor, td, length)
            return Written(None, 0)
        try:
            leaves = validate(td, self.log.header)
        except ValueError:
            refuse()
            raise
        if isinstance(cursor, tuple):
            cursor = cursor[0]
        if isinstance(cursor, slice):
            cursor = torch.arange(*cursor.indices(self.log.header.capacity or MAX_SIZE_UNBOUNDED))
        rows = torch.as_tensor(cursor).reshape(-1).to("cpu", torch.long)
        if rows.numel() != td.shape[0]:
            raise ValueError(f"{rows.numel()} positions for {td.shape[0]} rows of data")
        self.chunk_writer.write_rows(rows, leaves, append=append)
        return Written(cursor, td.shape[:ndim].numel())

    def infer_layout(self, element: TensorDictBase) -> Header:
        """The header a first write of ``element`` (one row) gives the store, from the
        storage's layout arguments; raises ``ValueError`` for data it cannot store."""
        return infer_header(
            element,
            self.layout.ndim,
            self.ring.capacity_for,
            self.layout.chunk_rows,
            self.layout.index_keys,
            self.chunks.compressors,
            self.layout.dedupe_next,
        )

    def create_layout(self, header: Header, tensor_root: bool = False) -> None:
        """Creates the store's arrays and seal table for ``header`` and writes it (the layout
        of the first write; ``tensor_root``: the rows are plain tensors, not TensorDicts)."""
        header.tensor_root = tensor_root
        self.setup(header, create=True)
        self.log.write()

    def write_partial(self, cursor: tuple, td: TensorDictBase, length: int) -> None:
        """Writes a sub-row selection ``cursor = (dim0, *rest)`` of the live rows (``length``
        elements) to ``td``: read-modify-write of whole rows."""
        rows, _ = rows_and_reindex(cursor, self.ring.rows_of(length))
        uniq, inv = torch.unique(rows, return_inverse=True)
        gathered = self.gatherer.gather(uniq)
        block = self.gatherer.to_td(gathered, self.gatherer.batch_of(uniq.numel())).to("cpu")
        block[(inv.reshape(-1), *cursor[1:])] = td.reshape(-1).to("cpu")
        if self.log.item_batch:
            block.batch_size = block.batch_size[: self.layout.ndim]
        leaves = validate(block, self.log.header)
        self.chunk_writer.write_rows(uniq, leaves, append=False)


def rows_of_cursor(cursor: Any) -> int | None:
    """Rows a round-robin writer's ``set`` at ``cursor`` covers (``None`` if not a row list)."""
    if isinstance(cursor, torch.Tensor):
        return cursor.numel()
    if isinstance(cursor, (range, list)):
        return len(cursor)
    return None
