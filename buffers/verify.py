"""``verify_store``: read every committed chunk of a zarrl store and report what is wrong.

Checks, in order: the group's zarrl attributes (types, ranges, schema; version 3: their
checksums), each array's metadata against the schema, the seal table (version 3), then every
chunk holding live committed rows of every leaf: present, decodable with its crc32c, and
(version 3) the chunk its seal entry or the commit record binds to that array and index. Nothing
is written. Problems are collected, not raised, so one run lists them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import zarr
import zarr.abc.store
import zarr.storage

from .chunk_codec import ChunkCodec, fetch_chunks
from .errors import CorruptChunkError, StoreFormatError
from .format import check_array, read_attrs
from .seals import SEAL_CHUNK, chunk_problem, data_crc, open_table

__all__ = ["Problem", "Report", "check_store", "verify_store"]

BATCH_CHUNKS = 16  # chunks (of every leaf) read per step: bounds memory to a few chunks


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store; ``array``/``chunk`` are ``None`` for store-wide problems.
    ``message`` names the file or the array and chunk."""

    message: str
    array: str | None = None
    chunk: int | None = None

    def __str__(self) -> str:
        return self.message


@dataclass
class Report:
    """What ``check_store`` looked at: the store, its format version, live committed rows,
    chunks per leaf and leaves checked, and the problems found (empty: the store is sound)."""

    where: str
    version: int | None = None
    rows: int = 0
    chunks: int = 0
    arrays: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(target: str | os.PathLike | zarr.abc.store.Store) -> list[Problem]:
    """Every problem of the zarrl store at ``target`` (a path or any zarr store); ``[]`` when
    every committed chunk and all metadata check out."""
    return check_store(target).problems


def _run(coroutines: list) -> list:
    import asyncio

    from zarr.core.sync import sync

    async def gather():
        return await asyncio.gather(*coroutines)

    return sync(gather()) if coroutines else []


def _open(target) -> tuple[zarr.Group, str]:
    if isinstance(target, zarr.abc.store.Store):
        return zarr.open_group(target, mode="r", zarr_format=3), repr(target)
    where = os.fspath(target)
    if not os.path.isdir(where):
        raise StoreFormatError(f"{where}: no such store (not a directory)")
    store = zarr.storage.LocalStore(where, read_only=True)
    try:
        return zarr.open_group(store, mode="r", zarr_format=3), where
    except (zarr.errors.GroupNotFoundError, FileNotFoundError) as err:
        raise StoreFormatError(f"{where} is not a zarrl store (no Zarr v3 group)") from err
    except (ValueError, TypeError, UnicodeDecodeError, zarr.errors.ContainsArrayError) as err:
        raise StoreFormatError(f"{where}/zarr.json is not valid group metadata: {err}") from err


def check_store(target: str | os.PathLike | zarr.abc.store.Store) -> Report:
    """``verify_store`` with what was checked (:class:`Report`)."""
    report = Report(str(target) if not isinstance(target, zarr.abc.store.Store) else repr(target))
    try:
        group, where = _open(target)
        report.where = where
        header, commit = read_attrs(group, where)
        report.version = group.attrs["zarrl"]["format_version"]
    except StoreFormatError as err:
        report.problems.append(Problem(str(err)))
        return report
    if header is None:  # an empty store: nothing committed yet
        return report
    arrays = {}
    for path in header.schema:
        try:
            arrays[path] = group[path]
            check_array(where, path, arrays[path], header)
        except KeyError:
            report.problems.append(Problem(f"{where}: array {path!r} is missing", path))
            arrays.pop(path, None)
        except StoreFormatError as err:
            report.problems.append(Problem(str(err), path))
            arrays.pop(path, None)
        except (ValueError, TypeError, UnicodeDecodeError) as err:
            report.problems.append(
                Problem(f"{where}/{path}/zarr.json is not valid array metadata: {err}", path)
            )
    table = None
    if header.chunk_seals is not None:
        try:
            table = open_table(group, header, where, None)
        except StoreFormatError as err:
            report.problems.append(Problem(str(err)))
    R, cap = header.chunk_rows, header.capacity
    end = commit.base + commit.write_count
    live = commit.write_count if cap is None else min(commit.write_count, cap)
    live_start = end - live
    chunks = list(range(live_start // R, -(end // -R)))
    report.rows, report.chunks, report.arrays = live, len(chunks), len(arrays)
    codecs = {p: ChunkCodec(a) for p, a in arrays.items()}
    for i in range(0, len(chunks), BATCH_CHUNKS):
        batch = chunks[i : i + BATCH_CHUNKS]
        _check_batch(report, where, batch, codecs, arrays, table, commit, R, live_start)
    return report


_UNREADABLE = object()


def _fetch(report, where, reads, codecs) -> list:
    """Raw chunks of ``reads`` [(chunk, leaf)]; one that cannot be read (a directory at its
    name, a permission) is a problem and comes back as ``_UNREADABLE``."""
    try:
        return fetch_chunks([(codecs[p], c) for c, p in reads], _run)
    except OSError:
        pass
    out = []
    for c, p in reads:
        try:
            out.append(fetch_chunks([(codecs[p], c)], _run)[0])
        except OSError as err:
            report.problems.append(
                Problem(f"{where}: array {p!r}, chunk {c} could not be read: {err}", p, c)
            )
            out.append(_UNREADABLE)
    return out


def _check_batch(report, where, batch, codecs, arrays, table, commit, R, live_start) -> None:
    fast = [p for p in codecs if codecs[p].supported]
    reads = [(c, p) for c in batch for p in fast]
    raws = _fetch(report, where, reads, codecs)
    rows = None
    if table is not None:
        try:
            tables = table.fetch(sorted({c // SEAL_CHUNK for c in batch}), _run, where)
            rows = {c: tables[c // SEAL_CHUNK][c % SEAL_CHUNK] for c in batch}
        except (CorruptChunkError, OSError) as err:
            report.problems.append(Problem(f"{where}: seal table: {err}"))
    for (c, p), raw in zip(reads, raws):
        if raw is _UNREADABLE:
            continue
        crc = None if raw is None else data_crc(raw)
        if rows is not None:
            problem = chunk_problem(p, c, crc, rows[c][table.col[p]], commit, R, live_start)
            if problem is not None:
                report.problems.append(Problem(f"{where}: {problem}", p, c))
                continue
        if raw is None:
            continue  # versions 1 and 2 do not record which chunks were written
        try:
            codecs[p].decode(raw)
        except Exception as err:
            report.problems.append(
                Problem(
                    f"{where}: array {p!r}, chunk {c} (rows {c * R}:{(c + 1) * R}) could not be "
                    f"decoded or failed its crc32c checksum: {err!r}",
                    p,
                    c,
                )
            )
    for p in (p for p in codecs if not codecs[p].supported):  # zarr's own read path
        arr = arrays[p]
        for c in batch:
            try:
                np.asarray(arr[c * R : min((c + 1) * R, arr.shape[0])])
            except Exception as err:
                report.problems.append(
                    Problem(f"{where}: array {p!r}, chunk {c} could not be decoded: {err!r}", p, c)
                )
