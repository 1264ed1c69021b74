"""Chunk I/O of one zarrl store: its arrays, whole-chunk codecs and seal table.

``ChunkStore`` reads and writes whole chunks of every leaf array (one concurrent event-loop
call per batch of chunks, ``buffers/chunk_codec.py``), checks each chunk read against its seal
entry (format version 3, ``buffers/seals.py``), stages seal entries before the chunks they
bind, grows the arrays and deletes dead chunks. Local-file fast paths stay behind the helpers of
``buffers/store_io.py`` and ``buffers/chunk_codec.py``; any other ``zarr.abc.store.Store`` (an
object store) goes through zarr's own store API, so nothing here assumes a local path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import zarr

from . import _compat_zarr as zarr_compat
from . import codecs as leaf_codecs
from . import xor_rows
from .array_layout import create_arrays
from .chunk_codec import ChunkCodec, drop_chunks, fetch_chunks, store_chunks
from .commit_log import CommitLog
from .format import CorruptChunkError, Header, StoreFormatError, check_array, codec_chain
from .ring import Ring
from .seals import (
    SEAL_CHUNK,
    SealTable,
    array_metadata_crc,
    chunk_problem,
    data_crc,
    open_table,
    seal_rows,
)
from .store_io import grow_array, put_objects, run_io
from .write_ahead import encode_group

Block = dict[str, np.ndarray]  # one chunk of every leaf: {path: [chunk_rows, *tail, *shape]}


class StaleRead(RuntimeError):
    """A reader loaded chunks the writer has recycled since the reader's last refresh."""


class ChunkStore:
    """The leaf arrays of one store and their whole-chunk reads and writes.

    Args:
        log: the store's commit log (group, header, the commit the checks refer to).
        ring: the store's ring (live start of a commit).
        read_only: a reader (a failed check after the writer moved on is a ``StaleRead``).
        compressors: bytes-to-bytes codecs for new arrays (``None``: per dtype).
    """

    def __init__(
        self, log: CommitLog, ring: Ring, read_only: bool, compressors: list | None = None
    ) -> None:
        self.log = log
        self.ring = ring
        self.read_only = read_only
        self.compressors = compressors
        self.arrays: dict[str, zarr.Array] = {}
        self.seals: SealTable | None = None  # format version 3 (``seals.py``)
        self._codecs: tuple | None = None

    @property
    def where(self) -> str:
        return self.log.where

    # ------------------------------------------------------------------ arrays
    def attach(self, header: Header, create: bool = False) -> None:
        """Opens (checked against ``header``) or, when ``create``, creates the leaf arrays and
        the seal table of ``header``."""
        if create:
            self.arrays = self._create_arrays(header)
        else:
            self.arrays = {}
            for path in header.schema:
                try:
                    self.arrays[path] = self.log.group[path]
                except KeyError:
                    raise StoreFormatError(
                        f"{self.where}: array {path!r} listed in the schema is missing"
                    ) from None
                except (ValueError, TypeError, UnicodeDecodeError) as err:  # JSON errors
                    raise StoreFormatError(
                        f"{self.where}/{path}/zarr.json is not valid array metadata: {err}"
                    ) from None
                check_array(self.where, path, self.arrays[path], header)
        self.seals = None
        if header.chunk_seals is not None:
            extent = self.log.commit.extent if create else None
            self.seals = open_table(self.log.group, header, self.where, extent)
            if create:  # bind each array's codecs and chunking into the header
                header.chunk_seals["arrays"] = {
                    p: array_metadata_crc(a) for p, a in self.arrays.items()
                }

    def reload(self) -> None:
        """Re-opens the arrays from the log's group (after the writer resized them)."""
        self.arrays = {path: self.log.group[path] for path in self.log.header.schema}

    def _create_arrays(self, header: Header) -> dict[str, zarr.Array]:
        """Creates one array per leaf, all in one event-loop call. A ring buffer's arrays are
        sized to its capacity (rounded up to whole chunks) at once, so the first pass over the
        ring never resizes them; ``commit.extent`` records that size."""
        R, tail = header.chunk_rows, header.tail
        options = {
            path: leaf_codecs.array_options(
                path,
                spec,
                1 + len(tail),
                self.compressors,
                xor_source=header.xor_previous.get(path),
            )
            for path, spec in header.schema.items()
        }
        for opts in options.values():
            opts["compressors"], _ = codec_chain(opts["compressors"])  # + crc32c
        extent = 0 if header.capacity is None else -(header.capacity // -R) * R
        extent = max(extent, self.log.commit.extent)
        specs = {
            path: dict(
                shape=(extent, *tail, *spec.shape),
                chunks=(R, *tail, *spec.shape),
                dtype=spec.dtype,
                fill_value=0,
                # flat chunk files (c.<row chunk>.0...): no directory per chunk
                chunk_key_encoding={"name": "default", "separator": "."},
                **options[path],  # filters, compressors, dimension_names (codecs.py)
            )
            for path, spec in header.schema.items()
        }
        created = create_arrays(self.log.group, specs)  # in one batch of writes
        self.log.commit.extent = extent
        return created

    def codecs(self) -> dict[str, ChunkCodec]:
        """Whole-chunk codecs of the current arrays (rebuilt when the arrays are reloaded)."""
        if self._codecs is None or self._codecs[0] is not self.arrays:
            self._codecs = (self.arrays, {p: ChunkCodec(a) for p, a in self.arrays.items()})
        return self._codecs[1]

    @property
    def sync_codecs(self) -> bool:
        """Whether every leaf has a synchronous whole-chunk codec (else zarr's own path)."""
        return all(c.supported for c in self.codecs().values())

    def grow(self, end_rows: int) -> list:
        """Resizes every array (metadata only, geometrically) to hold ``end_rows`` physical
        rows; returns coroutines for non-local stores."""
        io: list = []
        commit = self.log.commit
        if end_rows > commit.extent:
            extent = max(end_rows, 2 * commit.extent)
            for arr in self.arrays.values():  # metadata only: no chunk is touched
                io += grow_array(arr, extent)
            if self.seals is not None:
                io += grow_array(self.seals.array, seal_rows(extent, self.log.header.chunk_rows))
            commit.extent = extent
        return io

    # ------------------------------------------------------------------ reads
    def load(self, chunks: Sequence[int], paths=None, record: bool = True) -> list[Block]:
        """Decodes physical chunks of every leaf (or of ``paths``, none of them XORed) from the
        store, all reads concurrently (zeros past the extent); a chunk that fails its checksum
        or (version 3) is missing, misplaced or stale raises ``CorruptChunkError`` (a reader the
        writer moved past: ``StaleRead``). ``record``: a writer notes the versions it read
        (``False`` for reads that may be superseded before they are used: the refill)."""
        chunks = list(chunks)
        R = self.log.header.chunk_rows
        codecs = self.codecs()
        paths = list(self.arrays) if paths is None else list(paths)
        if not self.sync_codecs:
            return self._load_zarr(chunks, paths)
        reads = [(chunk, path) for chunk in chunks for path in paths]
        raws = fetch_chunks([(codecs[path], chunk) for chunk, path in reads], run_io)
        if self.seals is not None:  # entries checked once the chunks are read
            self._check_seals(chunks, reads, raws, record=record)
        out: dict[int, Block] = {c: {} for c in chunks}
        for (chunk, path), raw in zip(reads, raws):
            codec = codecs[path]
            if raw is None:  # never written, or deleted as all-zero: the fill value
                out[chunk][path] = np.zeros(codec.chunk_shape, codec.dtype)
                continue
            try:
                out[chunk][path] = codec.decode(raw)
            except Exception as err:  # zarr's codecs raise on corrupt bytes and bad checksums
                raise CorruptChunkError(
                    f"{self.where}: array {path!r}, chunk {chunk} (rows {chunk * R}:"
                    f"{(chunk + 1) * R}) could not be decoded or failed its crc32c checksum: "
                    f"{err!r}"
                ) from err
        pairs = self.log.header.xor_previous if len(paths) == len(self.arrays) else {}
        return [xor_rows.apply(out[c], pairs) for c in chunks]

    def _check_seals(self, chunks: list[int], reads: list, raws: list, record: bool) -> None:
        """Version 3: every chunk read must be the one its seal entry (or the commit record,
        for the head chunk) binds to its array and index (``seals.chunk_problem``); ``record``:
        the writer notes the versions it read (``SealTable.disk_crc``)."""
        R, reader, commit = self.log.header.chunk_rows, self.read_only, self.log.commit
        col, live_start = self.seals.col, self.ring.live_start(commit.base, commit.write_count)
        bound = 16 if reader else None
        rows = self.seals.rows(chunks, run_io, self.where, bound=bound)
        crcs = [None if raw is None else data_crc(raw) for raw in raws]
        for attempt in range(2):
            problem = None
            for (chunk, path), crc in zip(reads, crcs):
                entry = rows[chunk][col[path]]
                problem = chunk_problem(path, chunk, crc, entry, commit, R, live_start)
                if problem is not None:
                    break
            if problem is None or not reader or attempt:
                break
            # a reader's seal chunks may predate the chunks it read: read them again
            rows = self.seals.rows(chunks, run_io, self.where, fresh=True, bound=bound)
        if problem is not None:
            self._seal_failure(problem)
        if record and not reader:
            self.seals.record(
                [((chunk, path), crc) for (chunk, path), crc in zip(reads, crcs) if crc is not None]
            )

    def _seal_failure(self, problem: str) -> None:
        """Raises ``CorruptChunkError``, or ``StaleRead`` in a reader the writer has moved past
        (it may have rewritten or recycled the chunk since this reader's commit)."""
        if self.read_only and self.log.latest().revision != self.log.commit.revision:
            raise StaleRead(f"{self.where}: {problem} (the writer committed since)")
        raise CorruptChunkError(f"{self.where}: {problem}")

    def _load_zarr(self, chunks: list[int], paths: list[str]) -> list[Block]:
        """``load`` through zarr's own read path (codecs without a sync path)."""
        R = self.log.header.chunk_rows
        reads = []
        for chunk in chunks:
            start = chunk * R
            for path in paths:
                arr = self.arrays[path]
                stop = max(start, min(start + R, arr.shape[0]))
                reads.append((chunk, path, arr, slice(start, stop)))
        values = run_io(
            [zarr_compat.async_array(arr).getitem(sel) for _, _, arr, sel in reads],
            return_exceptions=True,
        )
        out: dict[int, Block] = {c: {} for c in chunks}
        for (chunk, path, _, sel), value in zip(reads, values):
            if isinstance(value, BaseException):  # zarr raises codec errors on corrupt bytes
                raise CorruptChunkError(
                    f"{self.where}: array {path!r}, chunk {chunk} (rows {sel.start}:{sel.stop}) "
                    f"could not be decoded or failed its crc32c checksum: {value!r}"
                ) from value
            out[chunk][path] = np.asarray(value)
        pairs = self.log.header.xor_previous if len(paths) == len(self.arrays) else {}
        return [xor_rows.apply(out[c], pairs) for c in chunks]

    def read_rows(self, paths: list[str], start: int, end: int) -> dict[str, torch.Tensor]:
        """Physical rows ``[start, end)`` of ``paths`` (not XORed) through ``load``, 64 chunks
        at a time: ``{path: [end - start, *tail, *shape]}``."""
        R = self.log.header.chunk_rows
        parts: dict[str, list[np.ndarray]] = {p: [] for p in paths}
        chunks = list(range(start // R, -(end // -R)))
        for i in range(0, len(chunks), 64):
            group = chunks[i : i + 64]
            for c, arrays in zip(group, self.load(group, paths)):
                lo, hi = max(start, c * R) - c * R, min(end, (c + 1) * R) - c * R
                for p in paths:
                    parts[p].append(arrays[p][lo:hi])
        return {p: torch.from_numpy(np.concatenate(v)) for p, v in parts.items()}

    # ------------------------------------------------------------------ writes
    def seal_entries(self, items: list[tuple[str, int, int]], defer: bool = False) -> list:
        """Stages the seal entries of chunks ``(leaf, chunk, crc)`` written for the next commit;
        returns the writes of the seal chunks they touch (none for an unsealed store).
        ``defer`` (chunks past the commit, already written): the seal chunks are written once,
        by :meth:`pending_seals` at the next commit, instead of once per call."""
        if self.seals is None:
            return []
        table = self.seals.stage(
            items, self.log.commit, self.log.header.chunk_rows, run_io, self.where, defer=defer
        )
        return put_objects(table)

    def pending_seals(self) -> list:
        """The writes of the seal chunks staged with ``defer`` since the last call; a commit
        runs them before its record (its chunks are bound before it counts them)."""
        if self.seals is None:
            return []
        return put_objects(self.seals.take_pending())

    def write(
        self,
        blocks: list[tuple[int, Block]],
        io: list,
        fresh_from: int,
        encode_all: Callable[[list], list] = encode_group,
    ) -> None:
        """Encodes and stores whole chunks ``(chunk, block)`` (already XORed) after the
        coroutines ``io`` (array resizes): seal entries first (crash-safe), then the chunks;
        chunks from ``fresh_from`` on hold no committed row (written in place). ``encode_all``
        encodes ``[(codec, chunk, array)]`` in order (default: one after the other, here;
        ``WriteAhead.encode_all``: on several threads)."""
        R = self.log.header.chunk_rows
        codecs = self.codecs()
        fallback, pending = [], []
        for c, block in blocks:
            for path, arr in self.arrays.items():
                codec = codecs[path]
                if codec.supported:
                    pending.append((path, (codec, c, block[path])))
                else:
                    fallback.append((arr, slice(c * R, (c + 1) * R), block[path]))
        items = [item for _, item in pending]
        blobs = encode_all(items)
        encoded = [(codec, c, blob) for (codec, c, _), blob in zip(items, blobs)]
        sealed = [(path, c, data_crc(blob)) for (path, (_, c, _)), blob in zip(pending, blobs)]
        if self.seals is not None and sealed:  # entries before their chunks (crash-safe)
            run_io(io + self.seal_entries(sealed))
            io = []
        io += store_chunks(encoded, fresh_from=fresh_from)
        io += [zarr_compat.async_array(arr).setitem(sel, value) for arr, sel, value in fallback]
        run_io(io)

    def settle(self, keep: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """After a commit: in-place rewrites it counted accept only their new version; the seal
        table forgets the chunks ``keep`` (int64 chunk ids -> bool) does not keep."""
        if self.seals is None:
            return
        run_io(put_objects(self.seals.settle()))
        self.seals.forget(keep)

    def drop(self, first: int, below: int) -> None:
        """Deletes data chunks ``[first, below)`` of every array (and the seal chunks whose
        data chunks are all gone); absent chunks read back as the fill value 0."""
        R = self.log.header.chunk_rows
        codecs = self.codecs()
        dead = []
        for c in range(first, below):
            dead += [(codecs[p], c) for p, arr in self.arrays.items() if c * R < arr.shape[0]]
        if self.seals is not None:
            gone = range(first // SEAL_CHUNK, below // SEAL_CHUNK)
            self.seals.discard(gone)
            dead += [(self.seals.codec, k) for k in gone]
        run_io(drop_chunks(dead))
