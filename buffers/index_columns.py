"""The index columns of a ``ZarrStorage``: small per-row leaves (trajectory ids, done flags,
rewards: at most 16 bytes per element by default) mirrored in RAM by ring position, so samplers
read them without touching the chunk cache; the same rows are also stored in the arrays. A
reader may also be given attached columns: RAM leaves that are not stored (values its owner
derives from other tables), served by position as the mirrored ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from .chunk_io import ChunkStore
from .format import CorruptChunkError, Header, numpy_dtype_name, torch_dtype


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed CPU tensor whose pages the kernel zeroes on first touch (numpy's ``calloc``),
    instead of ``torch.zeros``' fill of every byte up front: growing a column of hundreds of
    MB would otherwise write it twice (the fill, then the rows)."""
    return torch.from_numpy(np.zeros(shape, dtype=numpy_dtype_name(dtype, "index column")))


class IndexColumns:
    """``{path: [rows, *tail, *shape]}`` tensors by ring position (grown on demand)."""

    def __init__(self, enabled: bool = True) -> None:
        self.columns: dict[str, torch.Tensor] = {}  # mirrors of stored index keys
        self.attached: dict[str, torch.Tensor | Callable[[], torch.Tensor]] = {}  # ``attach``
        self.attached_rows = 0
        self.enabled = enabled

    def build(self, header: Header) -> None:
        """Zeroed columns for the ``header``'s index keys (the ring's rows, or 1024 to grow);
        none when the mirror is disabled: every leaf is then read through the chunk cache."""
        if not self.enabled:
            self.columns = {}
            return
        rows = header.capacity if header.capacity is not None else 1024
        self.columns = {
            k: lazy_zeros(
                (rows, *header.tail, *header.schema[k].shape),
                torch_dtype(header.schema[k].dtype),
            )
            for k in header.index_keys
        }

    def __contains__(self, path: str) -> bool:
        """Whether ``path`` is read from RAM (mirrored or attached)."""
        return path in self.columns or path in self.attached

    def __bool__(self) -> bool:
        """Whether stored index keys are mirrored (what a refresh reloads)."""
        return bool(self.columns)

    def __iter__(self) -> Iterator[str]:
        """The paths read from RAM: mirrored, then attached."""
        return iter([*self.columns, *self.attached])

    def attach(
        self, columns: dict[str, torch.Tensor | Callable[[], torch.Tensor]], rows: int
    ) -> None:
        """Replaces the attached columns: ``{path: [rows, ...]}`` by ring position, or a
        callable returning it when first read (checked then to hold at least ``rows``)."""
        self.attached = dict(columns)
        self.attached_rows = rows

    def gather(self, path: str, rows: torch.Tensor) -> torch.Tensor:
        """Column ``path`` at ring positions ``rows`` (int64 ``[N]``)."""
        column = self._column(path)
        if path in self.attached and rows.numel() and int(rows.max()) >= column.shape[0]:
            raise self._short(path, int(rows.max()) + 1)
        return torch.index_select(column, 0, rows)  # much faster than [rows]

    def head(self, path: str, n: int) -> torch.Tensor:
        """The first ``n`` ring positions of column ``path`` (a view)."""
        column = self._column(path)
        if path in self.attached and n > column.shape[0]:
            raise self._short(path, n)
        return column[:n]

    def _column(self, path: str) -> torch.Tensor:
        """A mirrored column, or an attached one (computed at its first read)."""
        if path in self.columns:
            return self.columns[path]
        column = self.attached[path]
        if callable(column):
            column = column()
            if not isinstance(column, torch.Tensor) or column.ndim < 1:
                raise TypeError(f"the attached column {path!r} is not a tensor [rows, ...]")
            if column.shape[0] < self.attached_rows:
                raise self._short(path, self.attached_rows, column.shape[0])
            self.attached[path] = column
        return column

    def _short(self, path: str, n: int, held: int | None = None) -> RuntimeError:
        held = self.attached[path].shape[0] if held is None else held
        return RuntimeError(
            f"the attached column {path!r} holds {held} rows, {n} were read: the storage grew "
            "(a refresh) since its owner attached it"
        )

    def ensure_rows(self, n: int) -> None:
        """Grows every column (geometrically) to hold ``n`` ring positions."""
        for k, t in list(self.columns.items()):
            if t.shape[0] < n:
                new = lazy_zeros((max(n, 2 * t.shape[0]), *t.shape[1:]), t.dtype)
                new[: t.shape[0]] = t
                self.columns[k] = new

    def write(self, at: slice | torch.Tensor, leaves: dict[str, torch.Tensor]) -> None:
        """Sets positions ``at`` of every column from ``leaves`` (``{path: [N, ...]}``)."""
        for k, t in self.columns.items():
            t[at] = leaves[k]

    def clear(self) -> None:
        for t in self.columns.values():
            t.zero_()

    def reload(self, chunks: ChunkStore, start: int, end: int, pos: torch.Tensor) -> None:
        """Reads physical rows ``[start, end)`` of every column from the store into ring
        positions ``pos`` (checked against the seals on a version-3 store)."""
        if chunks.seals is not None:  # through the chunk checks (seals)
            for path, values in chunks.read_rows(list(self.columns), start, end).items():
                self.columns[path][pos] = values
            return
        for path in self.columns:
            try:
                rows = chunks.arrays[path][start:end]
            except Exception as err:
                raise CorruptChunkError(
                    f"{chunks.where}: array {path!r}, rows {start}:{end} could not be "
                    f"decoded or failed its crc32c checksum: {err}"
                ) from err
            self.columns[path][pos] = torch.from_numpy(np.ascontiguousarray(rows))
