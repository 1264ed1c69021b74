"""Format version 3: chunks bound to their place, metadata bound to its checksums.

**Chunk seals.** Every chunk zarrl writes ends with the crc32c of its encoded bytes (zarr's
``crc32c`` codec), which says nothing about *where* the chunk belongs. Version 3 stores keep a
small uint64 zarr array, the *seal table* (``.zarrl/seals``, shape
``[data chunks, leaves, 4]``, chunked ``[SEAL_CHUNK, leaves, 4]``), one entry per chunk and leaf:

    [crc_prev, crc, revision, seal]

``crc``: the crc32c the chunk ends with; ``crc_prev``: the crc of the version it replaces while
an in-place rewrite is being committed (equal to ``crc`` otherwise); ``revision``: the commit
that wrote it; ``seal``: ``2**32 + crc32c(leaf path, chunk index, revision, crc_prev, crc)``
(``0``: no entry). An entry is written *before* its chunk, in the same commit, and a seal chunk
covers ``SEAL_CHUNK`` data chunks, so a commit rewrites only the seal chunks of the chunks it
writes (no table grows in the group's ``zarr.json``). The partly filled head chunk, which appends
rewrite, is bound by the commit record itself (``commit["head"]``: ``{leaf: crc}``).

A chunk read is accepted when its crc is one its entry allows (see :func:`chunk_problem`), so a
chunk moved to another index, copied from another leaf, restored from an earlier commit or
deleted is reported by array and chunk. Entries are per segment of the physical log: a future
writer with its own segment carries its own table next to its own commit record.

**Metadata checksums.** ``attributes["zarrl"]["checksums"]`` holds ``{attribute: crc32c}`` of
every other zarrl attribute (canonical JSON, bound to its name) and ``"*"``: the crc32c of that
mapping. An attribute edited within its valid range, removed or added is reported by name.

Checksums detect accidents and careless edits; a hostile writer can recompute every one of them
(there is no secret key), so they do not authenticate a store.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Mapping
from typing import Any

import google_crc32c
import numpy as np
import torch

from .errors import StoreFormatError

SEAL_ARRAY = ".zarrl/seals"  # a name no leaf can take (leaf names never start with ".")
SEAL_CHUNK = 256  # data chunks per seal chunk
PREV, CRC, REV, SEAL = range(4)
_ABSENT = 0
_PRESENT = 2**32


def data_crc(raw) -> int:
    """The crc32c an encoded chunk ends with (zarr's ``crc32c`` codec, little-endian)."""
    tail = raw.as_numpy_array()[-4:] if hasattr(raw, "as_numpy_array") else raw[-4:]
    return int.from_bytes(bytes(tail), "little")


def seal_of(path: str, chunk: int, revision: int, crc_prev: int, crc: int) -> int:
    """The binding of an entry to its leaf and chunk (``2**32 + crc32c``, never 0)."""
    data = path.encode() + b"\0" + struct.pack("<4Q", chunk, revision, crc_prev, crc)
    return _PRESENT + google_crc32c.value(data)


def entry(path: str, chunk: int, revision: int, crc_prev: int, crc: int) -> np.ndarray:
    return np.array(
        [crc_prev, crc, revision, seal_of(path, chunk, revision, crc_prev, crc)], np.uint64
    )


def chunk_problem(
    path: str,
    chunk: int,
    crc: int | None,
    row: np.ndarray | None,
    commit,
    chunk_rows: int,
    live_start: int,
) -> str | None:
    """Why chunk ``chunk`` of leaf ``path`` may not be read at ``commit`` (None: it may).

    ``crc``: the crc its stored bytes end with (None: absent); ``row``: its seal entry
    ``[4] uint64`` (None or all zero: no entry); ``live_start``: first live physical row.
    Rules: chunks holding live committed rows must be present; the committed head chunk must
    match ``commit.head`` or an entry newer than ``commit`` (being rewritten); every other
    chunk must match its entry (``crc_prev`` or ``crc``), which must be present for committed
    chunks; chunks past the commit with no entry are not checked."""
    R = chunk_rows
    end = commit.base + commit.write_count
    rows = f"rows {chunk * R}:{(chunk + 1) * R}"
    required = chunk * R < end and (chunk + 1) * R > live_start
    has = row is not None and int(row[SEAL]) != _ABSENT
    if has and int(row[SEAL]) != seal_of(path, chunk, *(int(row[i]) for i in (REV, PREV, CRC))):
        return (
            f"array {path!r}, chunk {chunk} ({rows}): its seal table entry is damaged or was "
            "moved (it does not bind this array and chunk)"
        )
    if crc is None:
        if required:
            return f"array {path!r}, chunk {chunk} ({rows}) is missing (a committed chunk)"
        return None
    head = end % R != 0 and chunk == end // R
    if head:
        allowed = {int((commit.head or {}).get(path, -1))}
        if has and int(row[REV]) > commit.revision:
            allowed.add(int(row[CRC]))
        what = f"the committed head chunk (revision {commit.revision})"
    elif has:
        allowed = {int(row[PREV]), int(row[CRC])}
        what = f"the one written by revision {int(row[REV])}"
    elif chunk * R < end:
        return (
            f"array {path!r}, chunk {chunk} ({rows}): no seal table entry for a committed "
            "chunk (the table was damaged or the chunk was added)"
        )
    else:
        return None
    if crc in allowed:
        return None
    return (
        f"array {path!r}, chunk {chunk} ({rows}): stored chunk (crc32c {crc:08x}) is not "
        f"{what}: moved from another chunk, copied from another array, or left from an "
        "earlier commit"
    )


# ---------------------------------------------------------------- metadata checksums
def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def _attr_crc(name: str, value: Any) -> int:
    return google_crc32c.value(name.encode() + b"=" + _canonical(value))


def attribute_checksums(meta: Mapping[str, Any]) -> dict[str, int]:
    """``{attribute: crc32c}`` of every zarrl attribute but ``checksums``, plus ``"*"``."""
    out = {name: _attr_crc(name, value) for name, value in meta.items() if name != "checksums"}
    out["*"] = google_crc32c.value(_canonical(out))
    return out


def check_attribute_checksums(meta: Mapping[str, Any], where: str) -> None:
    """Raises ``StoreFormatError`` naming the attribute whose checksum does not match."""

    def bad(attr: str, why: str) -> StoreFormatError:
        return StoreFormatError(f"{where}/zarr.json: attributes['zarrl'][{attr!r}] {why}")

    sums = meta.get("checksums")
    if not isinstance(sums, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in sums.items()
    ):
        raise bad("checksums", "is missing or invalid (a version 3 store records them)")
    for name in sorted(set(meta) - {"checksums"} - set(sums)):
        raise bad(name, "has no checksum: added outside zarrl")
    for name in sorted(set(sums) - set(meta) - {"*"}):
        raise bad(name, "was removed outside zarrl (its checksum is recorded)")
    for name in sorted(set(meta) - {"checksums"}):
        if _attr_crc(name, meta[name]) != sums[name]:
            raise bad(name, "does not match its checksum: edited outside zarrl, or damaged")
    if google_crc32c.value(_canonical({k: v for k, v in sums.items() if k != "*"})) != sums.get(
        "*"
    ):
        raise bad("checksums", "does not match its own checksum: edited outside zarrl")


# ---------------------------------------------------------------- header part
def seal_spec(leaves: list[str]) -> dict[str, Any]:
    """The header's ``chunk_seals`` record for a new version 3 store (``arrays`` is filled in
    once the arrays exist: :func:`array_metadata_crc` of each)."""
    return {
        "array": SEAL_ARRAY,
        "leaves": sorted(leaves),
        "chunks_per_seal_chunk": SEAL_CHUNK,
        "arrays": {},
    }


def array_metadata_crc(array) -> int:
    """crc32c of an array's metadata but its shape (which grows) and attributes: data type,
    chunking, chunk keys, fill value and the whole codec chain."""
    meta = array.metadata.to_dict()
    meta.pop("shape", None)
    meta.pop("attributes", None)
    return google_crc32c.value(
        json.dumps(meta, sort_keys=True, separators=(",", ":"), default=str).encode()
    )


def validate_seal_spec(spec: Any, schema: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The header's ``chunk_seals`` checked against the schema (raises naming it)."""
    arrays = spec.get("arrays") if isinstance(spec, Mapping) else None
    ok = (
        isinstance(spec, Mapping)
        and spec.get("array") == SEAL_ARRAY
        and spec.get("leaves") == sorted(schema)
        and spec.get("chunks_per_seal_chunk") == SEAL_CHUNK
        and isinstance(arrays, Mapping)
        and set(arrays) == set(schema)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in arrays.values())
    )
    if not ok:
        raise StoreFormatError(
            f"{where}/zarr.json: attributes['zarrl']['chunk_seals'] = {spec!r} is invalid: "
            f"expected {{'array': {SEAL_ARRAY!r}, 'leaves': {sorted(schema)!r}, "
            f"'chunks_per_seal_chunk': {SEAL_CHUNK}, 'arrays': {{leaf: crc32c}}}}"
        )
    return dict(spec)


def check_seal_array(where: str, array, n_leaves: int) -> None:
    """The seal table's own ``zarr.json`` must be the uint64 ``[chunks, leaves, 4]`` table."""
    problems = []
    if str(np.dtype(array.dtype)) != "uint64":
        problems.append(f"data_type {np.dtype(array.dtype)}, expected uint64")
    if tuple(array.shape[1:]) != (n_leaves, 4):
        problems.append(f"shape {list(array.shape)}, expected [chunks, {n_leaves}, 4]")
    if tuple(array.chunks) != (SEAL_CHUNK, n_leaves, 4):
        problems.append(f"chunks {list(array.chunks)}, expected [{SEAL_CHUNK}, {n_leaves}, 4]")
    if problems:
        raise StoreFormatError(f"{where}/{SEAL_ARRAY}/zarr.json: " + "; ".join(problems))


def seal_rows(extent_rows: int, chunk_rows: int) -> int:
    """Rows of the seal table for arrays of ``extent_rows`` rows (one per data chunk)."""
    return -(extent_rows // -chunk_rows)


class SealTable:
    """The seal table of one store: reads its entries and, in the writer, stages new ones.

    The writer keeps the seal chunks it touched (``cache``) and the crc of each chunk version
    it knows to be on disk (``disk_crc``: chunks it wrote or read), which becomes ``crc_prev``
    when a committed chunk is rewritten in place. Thread-safe (``lock``): the background refill
    reads entries while the owner stages new ones."""

    def __init__(self, array, leaves: list[str]) -> None:
        from .chunk_codec import ChunkCodec

        self.array = array
        self.codec = ChunkCodec(array)
        self.leaves = list(leaves)
        self.col = {p: i for i, p in enumerate(self.leaves)}
        self.cache: dict[int, np.ndarray] = {}
        self.disk_crc: dict[tuple[int, str], int] = {}
        self.unsettled: set[tuple[int, str]] = set()
        self.pending: set[int] = set()  # seal chunks staged with ``defer``, not written yet
        self.lock = threading.RLock()

    def fetch(self, seal_chunks: list[int], run, where: str) -> dict[int, np.ndarray]:
        """Seal chunks ``{k: [SEAL_CHUNK, leaves, 4] uint64}`` read from the store (zeros where
        absent); a seal chunk that fails its checksum raises ``CorruptChunkError``."""
        from .chunk_codec import fetch_chunks
        from .errors import CorruptChunkError

        raws = fetch_chunks([(self.codec, k) for k in seal_chunks], run)
        out = {}
        for k, raw in zip(seal_chunks, raws):
            if raw is None:
                out[k] = np.zeros(self.codec.chunk_shape, np.uint64)
                continue
            try:
                out[k] = self.codec.decode(raw)
            except Exception as err:
                raise CorruptChunkError(
                    f"{where}: seal table {SEAL_ARRAY!r}, chunk {k} (entries of data chunks "
                    f"{k * SEAL_CHUNK}:{(k + 1) * SEAL_CHUNK}) failed its checksum: {err!r}"
                ) from err
        return out

    def rows(
        self, chunks: list[int], run, where: str, fresh: bool = False, bound: int | None = None
    ) -> dict[int, np.ndarray]:
        """``{data chunk: [leaves, 4] entries}`` from the seal chunks read earlier, or from the
        store (``fresh``, or not read yet). ``bound``: keep at most this many seal chunks
        (readers; the writer keeps what it staged until :meth:`forget`). Returns copies."""
        ks = sorted({c // SEAL_CHUNK for c in chunks})
        with self.lock:
            missing = ks if fresh else [k for k in ks if k not in self.cache]
            if missing:
                if bound is not None and len(self.cache) + len(missing) > bound:
                    self.cache = {k: self.cache[k] for k in ks if k in self.cache}
                for k, table in self.fetch(missing, run, where).items():
                    if fresh or k not in self.cache:  # never undo what the writer staged
                        self.cache[k] = table
            return {c: self.cache[c // SEAL_CHUNK][c % SEAL_CHUNK].copy() for c in chunks}

    def record(self, crcs) -> None:
        """The writer read or wrote these chunk versions: ``[((chunk, leaf), crc)]``."""
        with self.lock:
            self.disk_crc.update(crcs)

    def stage(
        self,
        items: list[tuple[str, int, int]],
        commit,
        chunk_rows: int,
        run,
        where: str,
        defer: bool = False,
    ) -> list:
        """Entries for chunks ``(leaf, chunk, crc)`` about to be written by commit
        ``commit.revision + 1``; returns the seal chunk objects ``[(key, bytes)]`` to write
        before the chunks. A rewrite of a fully committed chunk keeps the crc on disk as
        ``crc_prev`` until :meth:`settle` runs after the commit. ``defer`` (chunks past the
        commit, already written): nothing is returned, the touched seal chunks wait for
        :meth:`take_pending`, which the next commit calls before its record."""
        if not items:
            return []
        with self.lock:
            objects = self._stage(items, commit, chunk_rows, run, where)
            if defer:
                self.pending |= objects
                return []
            self.pending -= objects
            return self._objects(objects)

    def take_pending(self) -> list:
        """The seal chunk objects ``[(key, bytes)]`` staged with ``defer`` and not written
        since; they are no longer pending once returned."""
        with self.lock:
            pending, self.pending = self.pending, set()
            return self._objects(pending)

    def _stage(self, items, commit, chunk_rows: int, run, where: str) -> set[int]:
        revision = commit.revision + 1
        full = (commit.base + commit.write_count) // chunk_rows
        self.rows([c for _, c, _ in items], run, where)
        touched = set()
        for path, c, crc in items:
            table = self.cache[c // SEAL_CHUNK]
            row = table[c % SEAL_CHUNK, self.col[path]]
            prev = crc
            if c < full:  # committed rows rewritten in place: the old version stays valid
                prev = self.disk_crc.get((c, path), int(row[CRC]))
                if prev != crc:
                    self.unsettled.add((c, path))
            row[:] = entry(path, c, revision, prev, crc)
            self.disk_crc[(c, path)] = crc
            touched.add(c // SEAL_CHUNK)
        return touched

    def settle(self) -> list:
        """After the commit that wrote them: in-place rewrites accept only their new version
        (returns the seal chunk objects to write)."""
        with self.lock:
            return self._settle()

    def _settle(self) -> list:
        touched = set()
        for c, path in self.unsettled:
            table = self.cache.get(c // SEAL_CHUNK)
            if table is None:
                continue
            row = table[c % SEAL_CHUNK, self.col[path]]
            row[:] = entry(path, c, int(row[REV]), int(row[CRC]), int(row[CRC]))
            touched.add(c // SEAL_CHUNK)
        self.unsettled.clear()
        return self._objects(touched)

    def _objects(self, seal_chunks) -> list:
        return [(self.codec.key(k), self.codec.encode(self.cache[k])) for k in sorted(seal_chunks)]

    def head(self, commit_end: int, chunk_rows: int, previous) -> dict[str, int] | None:
        """``commit["head"]``: the crc on disk of each leaf's partly filled head chunk."""
        if commit_end % chunk_rows == 0:
            return {}
        h = commit_end // chunk_rows
        old = previous.head or {}
        same = (previous.base + previous.write_count) // chunk_rows == h
        return {p: self.disk_crc.get((h, p), old.get(p, 0) if same else 0) for p in self.leaves}

    def forget(self, keep) -> None:
        """Drops what the writer remembers about chunks for which ``keep(chunks)`` (a bool
        tensor) is False, and seal chunks not holding the newest entries (bounded memory)."""
        with self.lock:
            if len(self.disk_crc) > 4096:
                keys = list(self.disk_crc)
                mask = keep(torch.tensor([c for c, _ in keys], dtype=torch.long)).tolist()
                self.disk_crc = {k: self.disk_crc[k] for k, m in zip(keys, mask) if m}
            if len(self.cache) > 8:
                keep_chunks = self.pending | {max(self.cache)}
                self.cache = {k: t for k, t in self.cache.items() if k in keep_chunks}

    def discard(self, seal_chunks) -> None:
        """Forgets seal chunks deleted from the store (garbage collection)."""
        with self.lock:
            for k in seal_chunks:
                self.cache.pop(k, None)
                self.pending.discard(k)


def open_table(group, header, where: str, extent: int | None) -> SealTable:
    """The seal table of a version 3 store: created (``extent``: rows of the data arrays) or
    opened and checked (``extent=None``); raises ``StoreFormatError`` naming its file."""
    import zarr

    from .format import codec_chain, default_compressors

    leaves = header.chunk_seals["leaves"]
    if extent is not None:
        array = group.create_array(
            SEAL_ARRAY,
            shape=(seal_rows(extent, header.chunk_rows), len(leaves), 4),
            chunks=(SEAL_CHUNK, len(leaves), 4),
            dtype="uint64",
            fill_value=0,
            chunk_key_encoding={"name": "default", "separator": "."},
            compressors=codec_chain(default_compressors())[0],
            dimension_names=["chunk", "leaf", "field"],
            attributes={"zarrl": {"note": "chunk seals: see zarrl docs/storage_format.md"}},
            overwrite=True,
        )
        return SealTable(array, leaves)
    try:
        array = group[SEAL_ARRAY]
    except KeyError:
        raise StoreFormatError(f"{where}: the seal table {SEAL_ARRAY!r} is missing") from None
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise StoreFormatError(
            f"{where}/{SEAL_ARRAY}/zarr.json is not valid array metadata: {err}"
        ) from None
    if not isinstance(array, zarr.Array):
        raise StoreFormatError(f"{where}/{SEAL_ARRAY} is not an array")
    check_seal_array(where, array, len(leaves))
    return SealTable(array, leaves)
