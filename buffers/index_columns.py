"""The index columns of a ``ZarrStorage``: small per-row leaves (trajectory ids, done flags,
rewards: at most 16 bytes per element by default) mirrored in RAM by ring position, so samplers
read them without touching the chunk cache; the same rows are also stored in the arrays."""

from __future__ import annotations

from collections.abc import Iterator

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
        self.columns: dict[str, torch.Tensor] = {}
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
        return path in self.columns

    def __bool__(self) -> bool:
        return bool(self.columns)

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def gather(self, path: str, rows: torch.Tensor) -> torch.Tensor:
        """Column ``path`` at ring positions ``rows`` (int64 ``[N]``)."""
        return torch.index_select(self.columns[path], 0, rows)  # much faster than [rows]

    def head(self, path: str, n: int) -> torch.Tensor:
        """The first ``n`` ring positions of column ``path`` (a view)."""
        return self.columns[path][:n]

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
