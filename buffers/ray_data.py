"""A Ray Data datasource over a zarrl store: ``read_ray_dataset(path_or_url)``.

(``ray.data.read_zarr`` of ray 2.60 supports zarr-python 2 only.) The dataset holds the rows
counted by the commit record at the time the dataset is planned, oldest first (write order):
physical rows ``[base + max(0, write_count - capacity), base + write_count)``. Each read task
reads whole chunks (chunk-aligned row ranges, so no chunk is fetched by two tasks), decodes the
de-duplicated leaves (``xor_rows.py``) and returns one block whose columns are the store's array
paths (``"obs"``, ``"next/obs"``, ...; a leaf of shape ``[*tail, *shape]`` per row becomes a
tensor column). zarr's crc32c codec checks every chunk it decodes (``CorruptChunkError`` names
the array and chunk). A ring buffer that overwrites rows a task has not read yet (the writer went
on past the capacity meanwhile) makes that task fail with ``StaleRowsError`` instead of
returning newer rows under older ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from . import object_store, xor_rows
from .errors import CorruptChunkError, StoreFormatError
from .format import Commit, Header, read_attrs

__all__ = ["StaleRowsError", "datasource", "read_ray_dataset"]


class StaleRowsError(RuntimeError):
    """Rows a read task was planned to read were overwritten by the ring since."""


def _open_group(target: Any, storage_options: dict | None) -> zarr.Group:
    if isinstance(target, zarr.abc.store.Store):
        store = target
    elif object_store.is_url(target):
        store = object_store.open_store(target, storage_options, read_only=True)
    else:
        store = zarr.storage.LocalStore(str(target), read_only=True)
    try:
        return zarr.open_group(store, mode="r", zarr_format=3)
    except (zarr.errors.GroupNotFoundError, FileNotFoundError) as err:
        raise StoreFormatError(f"{target} is not a zarrl store (no Zarr v3 group)") from err


def live_rows(header: Header, commit: Commit) -> tuple[int, int]:
    """Physical rows ``[start, end)`` the commit counts (oldest first)."""
    end = commit.base + commit.write_count
    keep = (
        commit.write_count if header.capacity is None else min(commit.write_count, header.capacity)
    )
    return end - keep, end


def datasource(
    target: Any,
    storage_options: dict | None = None,
    columns: list[str] | None = None,
    chunks_per_task: int | None = None,
):
    """The ``ray.data.Datasource`` of the zarrl store at ``target`` (path, URL or zarr store);
    the class is made here so that Ray is imported only when a dataset is."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    where = str(target)
    group = _open_group(target, storage_options)
    header, commit = read_attrs(group, where)
    if header is None:
        raise StoreFormatError(f"{where}: the store holds no rows yet (no schema)")
    paths = list(header.schema) if columns is None else list(columns)
    unknown = [p for p in paths if p not in header.schema]
    if unknown:
        raise ValueError(f"{where}: no array {unknown[0]!r}; arrays: {sorted(header.schema)}")
    start, end = live_rows(header, commit)
    R = header.chunk_rows
    row_bytes = int(np.prod(header.tail, dtype=np.int64)) * sum(
        header.schema[p].nbytes for p in paths
    )

    class _Source(Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return (end - start) * row_bytes

        def get_name(self) -> str:
            return f"zarrl({where})"

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
            first, last = start // R, -(-end // R)  # chunks touching [start, end)
            n_chunks = last - first
            if n_chunks <= 0:
                return []
            per = chunks_per_task or max(1, -(-n_chunks // max(1, parallelism)))
            tasks = []
            for c in range(first, last, per):
                lo, hi = max(start, c * R), min(end, (c + per) * R)
                meta = BlockMetadata(
                    num_rows=hi - lo,
                    size_bytes=(hi - lo) * row_bytes,
                    input_files=None,
                    exec_stats=None,
                )
                tasks.append(
                    ReadTask(_Reader(target, storage_options, header, paths, lo, hi, where), meta)
                )
            return tasks

    return _Source()


class _Reader:
    """One read task: rows ``[lo, hi)`` (whole chunks read) as a dict of numpy columns."""

    def __init__(self, target, storage_options, header: Header, paths, lo: int, hi: int, where):
        self.target, self.storage_options, self.header = target, storage_options, header
        self.paths, self.lo, self.hi, self.where = paths, lo, hi, where

    def __call__(self):
        from ray.data.block import BlockAccessor

        R = self.header.chunk_rows
        c0, c1 = self.lo // R, -(-self.hi // R)
        group = _open_group(self.target, self.storage_options)
        pairs = {
            d: s
            for d, s in self.header.xor_previous.items()
            if d in self.paths  # a derived leaf needs its source to decode
        }
        needed = list(dict.fromkeys([*self.paths, *pairs.values()]))
        raw = {}
        for path in needed:
            array = group[path]
            try:
                raw[path] = array[c0 * R : min(c1 * R, array.shape[0])]
            except Exception as err:  # zarr's crc32c check or a codec error
                raise CorruptChunkError(
                    f"{self.where}: array {path!r}, chunks {c0}..{c1 - 1}: cannot be read: {err}"
                ) from err
        if pairs:
            rows = next(iter(raw.values())).shape[0]
            decoded = [
                xor_rows.apply({p: raw[p][i : i + R] for p in needed}, pairs)
                for i in range(0, rows, R)  # one step per chunk
            ]
            raw = {p: np.concatenate([d[p] for d in decoded]) for p in needed}
        _, now = read_attrs(group, self.where)
        start_now, _ = live_rows(self.header, now)
        if start_now > self.lo:
            raise StaleRowsError(
                f"{self.where}: rows {self.lo}..{self.hi - 1} (physical) were overwritten by the "
                f"writer while the dataset read them (the ring now starts at row {start_now}); "
                "read the dataset again"
            )
        off = self.lo - c0 * R
        block = {p: raw[p][off : off + self.hi - self.lo] for p in self.paths}
        yield BlockAccessor.batch_to_block(block)


def read_ray_dataset(
    path_or_url: Any,
    *,
    storage_options: dict | None = None,
    columns: list[str] | None = None,
    chunks_per_task: int | None = None,
    override_num_blocks: int | None = None,
):
    """A ``ray.data.Dataset`` of the committed rows of the zarrl store at ``path_or_url`` (a
    path, a store URL such as ``s3://bucket/run.zarr`` with ``storage_options``, or a zarr
    store), oldest first; for a segmented buffer (``segments.py``) the union of its segments; ``columns``: array paths to read (default all); ``chunks_per_task``:
    chunks per read task (default: spread over Ray's parallelism)."""
    import ray.data

    from .segments import list_segments, segment_path

    writers = [] if isinstance(path_or_url, zarr.abc.store.Store) else None
    if writers is None:
        writers = list_segments(path_or_url, storage_options)
    if writers:  # a segmented buffer: the union of its segments, in writer-name order
        parts = [
            datasource(segment_path(path_or_url, w), storage_options, columns, chunks_per_task)
            for w in writers
        ]
        source = _union(parts)
    else:
        source = datasource(path_or_url, storage_options, columns, chunks_per_task)
    return ray.data.read_datasource(source, override_num_blocks=override_num_blocks)


def _union(parts: list):
    """One datasource of the read tasks of ``parts``, in order."""
    from ray.data.datasource import Datasource

    class _Union(Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return sum(p.estimate_inmemory_data_size() for p in parts)

        def get_name(self) -> str:
            return "zarrl(segments)"

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
            share = max(1, parallelism // len(parts))
            return [task for p in parts for task in p.get_read_tasks(share)]

    return _Union()
