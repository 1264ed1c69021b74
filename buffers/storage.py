"""``ZarrStorage``: a durable, compressed TorchRL replay storage on a Zarr v3 group.

A drop-in for ``LazyMemmapStorage``: ``ReplayBuffer(storage=ZarrStorage(1_000_000, path=...))``.
Writes are staged in a RAM chunk pool and committed data-first, metadata-last (see
``buffers/format.py`` and ``docs/storage_format.md``); reads gather from the pool, which either
mirrors the whole buffer (``cache="ram"``, optionally on a GPU via ``cache_device``) or keeps a
bounded number of decoded chunks (``cache=<bytes>``). Small per-row columns (trajectory ids,
done flags, rewards: the *index columns*) are always mirrored in RAM by ring position.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from multiprocessing.context import get_spawning_popen
from typing import Any

import numpy as np
import torch
import zarr
import zarr.abc.store
import zarr.storage
from tensordict import TensorDict, TensorDictBase
from torchrl.data.replay_buffers.storages import TensorStorage
from torchrl.data.replay_buffers.writers import RoundRobinWriter

from . import object_store, pickling, pytrees, sampler_state
from ._compat_torchrl import (
    after_sampler_init,
    buffer_lock,
    buffer_sampler,
    buffer_writer,
    load_hooks,
    save_hooks,
    set_writer_position,
    wrap_writer_init,
    writer_position,
)
from .chunk_io import ChunkStore, StaleRead
from .chunk_writer import ChunkWriter
from .commit_log import CommitLog, open_group
from .format import (
    Commit,
    Header,
    ReadOnlyStorageError,
    StoreFormatError,
    key_path,
    read_attrs,
)
from .hot_tier import HotTier
from .index_columns import IndexColumns
from .indexing import apply_reindex, rows_and_reindex
from .lazy_view import lazy_tensordict, writable_view
from .reader import Reader
from .ring import Ring
from .row_data import (
    TENSOR_KEY,
    as_tensordict,
    flip_list,
    infer_header,
    nested_td,
    validate,
)
from .store_io import (
    check_local_writable,
    clear_store,
    copy_store,
    remove_partials,
    sync_log,
)
from .temp_store import make_temp_store, remove_on_release
from .worker_proxy import WriteChannel, new_proxy, rollback_writers

_log = logging.getLogger("zarrl.buffers")
_UNBOUNDED = 2**31 - 1  # TorchRL keeps len() in an int32 shared value


def _serialized(method: Callable) -> Callable:
    """Runs ``method`` under the storage's lock: the pump thread applying worker writes
    (``buffers/worker_proxy.py``) must not interleave with the owner's own calls. An
    ``OSError`` it raises names the store (``_naming_store``)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._io_lock, _naming_store(self._where):
            return method(self, *args, **kwargs)

    return locked


def _names_store(method: Callable) -> Callable:
    """``method``'s ``OSError``s (disk full, permission...) name the store."""

    @functools.wraps(method)
    def named(self, *args, **kwargs):
        with _naming_store(self._where):
            return method(self, *args, **kwargs)

    return named


@contextlib.contextmanager
def _naming_store(where: str):
    """Re-raises an ``OSError`` that does not name the store ``where`` as the same ``OSError``
    subclass (same ``errno`` and file name) whose message starts with the store."""
    try:
        yield
    except OSError as err:
        if where in str(err):
            raise
        message = f"zarrl store {where}: {err.strerror or err}"
        if err.errno is None:
            raise OSError(message) from err
        raise OSError(err.errno, message, err.filename) from err


class ZarrStorage(TensorStorage):
    """A TorchRL storage whose rows live in a Zarr v3 group (one array per TensorDict leaf).

    Args:
        max_size: capacity in elements (as ``LazyMemmapStorage``); ``None`` = grow without bound.

    Keyword Args:
        path: a filesystem path, a store URL (``s3://bucket/prefix/run.zarr``, ``memory://name``,
            ``file:///abs/path``: ``buffers/object_store.py``) or any ``zarr.abc.store.Store``;
            ``None`` (as ``LazyMemmapStorage``): a temporary directory, removed at ``close()``,
            garbage collection or interpreter exit (``buffers/temp_store.py``).
        ndim: number of batch dims counted by the capacity (``2`` for ``[time, envs]`` data).
        device: device of the tensors returned by ``get``.
        existsok: reopen an existing zarrl store at ``path`` instead of refusing it; the rows it
            already holds are logged, kept in ``rows_at_open`` and shown by ``repr``.
        chunk_rows: rows (along dim 0) per chunk; default targets ~4 MiB per chunk (a power of
            two between 1 and 65536: fewer, larger files make durable extends faster).
        compressors: zarr bytes-to-bytes codecs for every leaf; default per dtype
            (``buffers/codecs.py``: Blosc zstd for floats, after their row-delta filters, Blosc
            LZ4 otherwise); a crc32c checksum is always appended.
        cache: ``None`` (256 MiB of decoded chunks), ``"ram"`` (mirror every live row), or a
            budget in bytes. A buffer that fits in the budget is mirrored entirely.
        cache_device: where the decoded chunks live (default ``device``), e.g. ``"cuda"``.
        flush_every_rows / flush_every_seconds: extra commit triggers. By default a commit
            happens whenever appends complete a chunk, at ``flush()``, ``dumps`` and ``close()``.
        min_commit_interval: seconds; completed chunks trigger a commit at most this often, so
            a bulk load commits a few times per second instead of once per chunk (each commit
            rewrites the group's ``zarr.json``). ``0`` commits at every completed chunk.
        index_keys: leaves mirrored in RAM by position (default: leaves of at most 16 bytes
            per element, e.g. ``("collector", "traj_ids")``, ``("next", "done")``, rewards).
        refresh_every_seconds: read-only storages re-read the commit record this often.
        gc_grace_seconds: chunks overwritten by the ring are deleted this long after they died,
            so concurrent readers lagging less than this never lose a row they can see.
        dedupe_next: opt-in, **needs zarrl (or the documented XOR) to read**: store each leaf
            ``X`` that has an identical-spec ``("next", X)`` as the bitwise XOR with the
            previous row of ``("next", X)`` (lossless, see ``buffers/xor_rows.py``), so the
            duplicated observation costs almost no disk. Such stores are format version 2 and
            mark each XORed array in its attributes. The default ``False`` stores true values
            in every array (version 1): any Zarr client reads them.
        storage_options: options of a store URL's store (S3: ``endpoint_url``, ``region``,
            credentials, ``allow_http``; ``docs/scale-out.md``).
    """

    refill_ratio = 0.25
    """Larger-than-cache stores: rows decoded by the background refill per row sampled from the
    cache (each cached row is drawn about ``1 / refill_ratio`` times before it is swapped out)."""

    durability = "os"
    """Commits that ``flush()``, ``close()``, ``dumps()`` and checkpoints report: ``"os"`` fsyncs
    the chunk files, their directories and the commit record first (local stores: a power cut
    keeps every counted row); ``"process"`` leaves them to the OS page cache (survives a killed
    process, not a power cut). Settable per storage (``docs/storage_format.md``)."""
    commit_durability = "process"
    """The same choice for the automatic commits (completed chunks, ``flush_every_*``, cache
    pressure); the next ``"os"`` commit also fsyncs what they wrote."""

    def __init__(
        self,
        max_size: int | None,
        *,
        path: str | os.PathLike | zarr.abc.store.Store | None = None,
        ndim: int = 1,
        device: torch.device | str = "cpu",
        existsok: bool = False,
        chunk_rows: int | None = None,
        compressors: list | None = None,
        cache: None | str | int = None,
        cache_device: torch.device | str | None = None,
        flush_every_rows: int | None = None,
        flush_every_seconds: float | None = None,
        min_commit_interval: float = 0.1,
        index_keys: list | None = None,
        refresh_every_seconds: float | None = None,
        gc_grace_seconds: float = 10.0,
        dedupe_next: bool = False,
        storage_options: dict[str, Any] | None = None,
        shared_init: bool = False,
        _mode: str = "w",
    ) -> None:
        if shared_init:
            raise ValueError(
                "ZarrStorage does not support shared_init=True: processes do not initialize "
                "the store in turn. Build the storage in the process that owns it and hand it "
                "to collectors (replay_buffer=rb: workers write through the owner), or let "
                "other processes read it with ZarrStorage.open(path, mode='r')"
            )
        if max_size is not None and int(max_size) <= 0:
            raise ValueError(f"max_size must be a positive int or None, got {max_size!r}")
        if chunk_rows is not None and not (isinstance(chunk_rows, int) and chunk_rows > 0):
            raise ValueError(f"chunk_rows must be a positive int or None, got {chunk_rows!r}")
        if cache not in (None, "ram") and not (isinstance(cache, int) and cache > 0):
            raise ValueError(f"cache must be None, 'ram' or a positive byte count, got {cache!r}")
        super().__init__(
            storage=None,
            max_size=_UNBOUNDED if max_size is None else int(max_size),
            device=device,
            ndim=ndim,
        )
        self.ring = Ring(max_size)  # capacity, base and write count (``buffers/ring.py``)
        self.read_only = _mode == "r"
        self._init_options = {  # what a pickle or a deepcopy reopens the store with
            "ndim": ndim,
            "device": device,
            "chunk_rows": chunk_rows,
            "compressors": compressors,
            "cache": cache,
            "cache_device": cache_device,
            "flush_every_rows": flush_every_rows,
            "flush_every_seconds": flush_every_seconds,
            "min_commit_interval": min_commit_interval,
            "index_keys": index_keys,
            "refresh_every_seconds": refresh_every_seconds,
            "gc_grace_seconds": gc_grace_seconds,
            "dedupe_next": dedupe_next,
            "storage_options": storage_options,
        }
        self.existsok = existsok
        self._chunk_rows_arg = chunk_rows
        self._compressors_arg = compressors
        self.cache_device = torch.device(cache_device) if cache_device else self.device
        self.flush_every_rows = flush_every_rows
        self.flush_every_seconds = flush_every_seconds
        self.min_commit_interval = min_commit_interval
        self.refresh_every_seconds = refresh_every_seconds
        self.gc_grace_seconds = gc_grace_seconds
        self.dedupe_next = dedupe_next
        self.index_keys_arg = None if index_keys is None else [key_path(k) for k in index_keys]
        self._temp_release = None
        if path is None:
            if _mode != "w":
                raise ValueError("a path is needed to open an existing store")
            path = make_temp_store()
            self._temp_release = remove_on_release(self, path)
        self._path_arg = path
        self._where = str(path) if not isinstance(path, zarr.abc.store.Store) else repr(path)
        self.index = IndexColumns()  # small leaves mirrored in RAM (``index_columns.py``)
        self._closed = False
        self._io_lock = threading.RLock()
        self._owner_pid = os.getpid()
        self._channel: WriteChannel | None = None  # created when sent to a worker process
        self._samplers = sampler_state.SamplerStates()  # what was saved, under which lock
        self.rows_at_open = 0
        with _naming_store(self._where):
            # the group, layout and commit record (``buffers/commit_log.py``)
            self.log = CommitLog(
                open_group(path, _mode, storage_options), self._where, self.ring.max_size, ndim
            )
            # leaf arrays, codecs and seal table (``buffers/chunk_io.py``)
            self.chunks = ChunkStore(self.log, self.ring, self.read_only, compressors)
            # decoded chunks and their refill (``buffers/hot_tier.py``)
            self.hot = HotTier(self.ring, self.log, self.chunks, cache, self.cache_device)
            # staged chunks, write-ahead, dead chunks (``buffers/chunk_writer.py``)
            self.chunk_writer = ChunkWriter(self.ring, self.log, self.chunks, self.hot)
            # adopting commits, stale-read checks (``buffers/reader.py``)
            self.reader = Reader(
                self.ring, self.log, self.chunks, self.hot, self.chunk_writer, self.index
            )
            if not self.read_only:
                check_local_writable(self.log.store, self._where)
                remove_partials(self.log.store)  # torn temporaries of a killed writer
            self._attach_or_create()
            if not self.read_only:
                object_store.pin(self.log.group)  # the commit record version our commits replace
        if self.log.header is not None:
            self.rows_at_open = len(self)
            _log.info("zarrl: %s already holds %d rows (reopened)", self._where, len(self))
        if not self.read_only:
            pickling.register_writer(self)
            if self._temp_release is None:
                _register_exit_flush(weakref.ref(self))

    # ================================================================ opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike | zarr.abc.store.Store,
        mode: str = "r+",
        *,
        device: torch.device | str = "cpu",
        storage_options: dict[str, Any] | None = None,
        **cache_options: Any,
    ) -> ZarrStorage:
        """Reopens an existing store: committed rows, ring cursor and index columns.

        ``mode="r+"`` continues writing; ``mode="r"`` is a reader (``refresh()`` picks up new
        commits). ``cache_options``: ``cache``, ``cache_device``, ``flush_every_rows``,
        ``flush_every_seconds``, ``min_commit_interval``, ``refresh_every_seconds``.
        """
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        group = open_group(path, "r", storage_options)
        header, _ = read_attrs(group, str(path))
        meta = group.attrs.asdict()["zarrl"]
        capacity_elems = meta.get("max_size")
        ndim = header.ndim if header is not None else int(meta.get("ndim", 1))
        return cls(
            capacity_elems,
            path=path,
            ndim=ndim,
            device=device,
            existsok=True,
            _mode=mode,
            storage_options=storage_options,
            **cache_options,
        )

    def _attach_or_create(self) -> None:
        group = self.log.group
        attrs = group.attrs.asdict()
        has_content = bool(attrs) or any(True for _ in group.members())
        if "zarrl" not in attrs:
            if has_content or self.read_only:
                raise StoreFormatError(
                    f"{self._where} is a Zarr group but not a zarrl replay store "
                    "(no attributes['zarrl'])"
                )
            self.log.write()  # empty zarrl store, schema decided by the first write
            return
        header, commit = self.log.read()
        if not self.existsok and not self.read_only:
            raise FileExistsError(
                f"a zarrl store already exists at {self._where}; pass existsok=True or use "
                "ZarrStorage.open(path) to continue it"
            )
        meta = attrs["zarrl"]
        self.log.check_layout(meta)
        if header is not None:
            self.log.adopt_layout(meta, header)
            self._setup(header)
            self._adopt_fresh(commit)
            R, end = header.chunk_rows, commit.base + commit.write_count
            if self.chunks.seals is not None and not self.read_only and end % R:
                self.chunks.load([end // R])  # the head chunk on disk, checked: its crcs

    def _adopt_fresh(self, commit: Commit) -> None:
        """``_adopt_commit(commit, full=True)``, or the newest commit for a reader the writer
        moved past meanwhile (``Reader.adopt_fresh``)."""
        self._adopted(self.reader.adopt_fresh(commit))

    # ============================================================ identity
    @property
    def where(self) -> str:
        """The store as named in messages: its path, or the store object's ``repr``."""
        return self._where

    @property
    def store(self) -> zarr.abc.store.Store:
        """The zarr store holding the rows."""
        return self.log.store

    @property
    def location(self) -> str | os.PathLike | zarr.abc.store.Store:
        """The ``path`` this storage was built with (a temporary directory when none was)."""
        return self._path_arg

    @property
    def init_options(self) -> dict[str, Any]:
        """Keyword arguments a pickle or a deepcopy reopens the store with (a copy)."""
        return dict(self._init_options)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def worker_channel(self) -> WriteChannel | None:
        """The channel worker processes write through (``None`` until sent to one)."""
        return self._channel

    # ============================================================ layout/setup
    @property
    def _total_shape(self):
        if self.log.header is None:
            return None
        cap0 = self.ring.capacity
        return torch.Size([self._len0() if cap0 is None else cap0, *self.log.header.tail])

    def _setup(self, header: Header, create: bool = False) -> None:
        """Builds arrays (when ``create``), the chunk pool and the RAM index for ``header``."""
        self.log.header = header
        self.ring.tail = header.tail
        self.chunks.attach(header, create)
        self.hot.build(header)
        self.index.build(header)
        self.initialized = True

    @property
    def is_ram_mirror(self) -> bool:
        """Whether every live chunk fits in the pool (no eviction ever needed)."""
        return self.hot.is_mirror

    # ============================================================ index maths
    def _len0(self) -> int:
        """Live rows along dim 0."""
        return self.ring.rows_of(self._len)

    # ================================================================== reads
    def _gather(self, rows: torch.Tensor, keys=None) -> dict[str, torch.Tensor]:
        """Leaves at ring positions ``rows`` -> {path: [N, *tail, *shape]} on ``self.device``."""
        keys = list(self.log.header.schema) if keys is None else keys
        out = {}
        columns = self.index.columns
        big = [k for k in keys if k not in columns]
        if big:
            phys = self.ring.phys(rows)
            got, loaded = self.hot.gather(phys, big)
            if self.read_only and loaded:
                fresh = torch.isin(phys // self.log.header.chunk_rows, torch.tensor(loaded))
                self.reader.check_not_stale(int(phys[fresh].min()))
            out.update(got)
        for k in keys:
            if k in columns:
                out[k] = torch.index_select(columns[k], 0, rows)  # much faster than [rows]
        if all(out[k].device == self.device for k in keys):
            return {k: out[k] for k in keys}
        return {k: out[k].to(self.device, non_blocking=True) for k in keys}

    def _to_td(self, leaves: Mapping[str, torch.Tensor], batch) -> TensorDictBase | torch.Tensor:
        if self.log.header.tensor_root:
            return leaves[TENSOR_KEY]
        return nested_td(leaves, torch.Size(batch), self.device)

    @_serialized
    def get(self, index) -> TensorDictBase | torch.Tensor:
        if self.log.header is None:
            raise RuntimeError("Cannot get elements out of a non-initialized storage.")
        self._maybe_auto_refresh()
        if self._is_full_view(index):
            return self._full_view()
        rows, reindex = rows_and_reindex(index, self._len0())
        for attempt in range(4):
            try:
                leaves = self._gather(rows)
                break
            except StaleRead:  # readers only: adopt the newest commit, read the same positions
                if attempt == 3:
                    raise
                self.refresh()
        td = apply_reindex(self._to_td_any(leaves, self._batch_of(rows.numel())), reindex)
        if self.log.pytree is not None:  # the stored pytree, each leaf indexed as the TensorDict
            flat = {key_path(k): v for k, v in td.items(include_nested=True, leaves_only=True)}
            return pytrees.unflatten(flat, self.log.pytree)
        return td

    def _batch_of(self, n: int) -> list[int]:
        """Batch size of ``n`` rows as returned: ``[n, *tail, *item_batch]``."""
        return [n, *self.log.header.tail, *self.log.item_batch]

    @_serialized
    def __getitem__(self, index) -> TensorDictBase | torch.Tensor:
        """``storage[index]`` (what samplers use to read flags): the RAM index columns are
        gathered at once, other leaves only when first looked up (``get`` stays eager)."""
        if (
            self.log.header is None
            or self.log.header.tensor_root
            or self.log.pytree is not None
            or self.read_only
            or self._is_full_view(index)
            or not self.index
        ):
            return self.get(index)
        rows, reindex = rows_and_reindex(index, self._len0())
        if reindex is not None and not (isinstance(reindex[0], str) and len(reindex[1]) == 1):
            return self.get(index)
        eager = {k: self.index.gather(k, rows).to(self.device) for k in self.index}

        def loader(path):
            return lambda: self._gather(rows, [path])[path]

        lazy = {k: loader(k) for k in self.log.header.schema if k not in self.index}
        return lazy_tensordict(eager, lazy, self._batch_of(rows.numel()), self.device)

    def _to_td_any(self, leaves, batch):
        if self.log.header.tensor_root:
            return TensorDict({TENSOR_KEY: leaves[TENSOR_KEY]}, batch_size=batch)[TENSOR_KEY]
        return self._to_td(leaves, batch)

    def _is_full_view(self, index) -> bool:
        if isinstance(index, tuple) and 1 <= len(index) <= self.ndim:  # (:,) or (:, :)
            if any(not (isinstance(i, slice) and i == slice(None)) for i in index):
                return False
            index = index[0]
        return (
            isinstance(index, slice)
            and index == slice(None)
            and not self.log.header.tensor_root
            and self.log.pytree is None
        )

    def _full_view(self) -> TensorDictBase:
        """``storage[:]``: index columns are RAM views, other leaves load on first access."""
        n0 = self._len0()
        eager = {k: self.index.head(k, n0).to(self.device) for k in self.index}

        def loader(path):  # the row range is built only if a large column is looked up
            return lambda: self._gather(torch.arange(n0), [path])[path]

        lazy = {k: loader(k) for k in self.log.header.schema if k not in self.index}
        view = lazy_tensordict(eager, lazy, self._batch_of(n0), self.device)
        if not self.read_only:  # writes into the view reach the store (``rb[0, 3:4] = td``)
            return writable_view(view, self)
        return view

    def _rand_given_ndim(self, batch_size: int):
        """Uniform positions; when the buffer exceeds the cache, uniform over cached rows."""
        self._maybe_auto_refresh()
        if self.log.header is None or self.is_ram_mirror or not self.hot.pool.specs:
            return super()._rand_given_ndim(batch_size)
        self.request_refill(batch_size)  # residency changes here, before drawing
        pos = self.hot.sample(batch_size, self._len0(), self._rng)
        if self.ndim == 1:
            return pos.to(self.device)
        others = tuple(
            torch.randint(d, (batch_size,), generator=self._rng) for d in self.log.header.tail
        )
        return tuple(t.to(self.device) for t in (pos, *others))

    def resident_positions(self) -> torch.Tensor | None:
        """bool ``[len along dim 0]``: whether each ring position's chunk is cached; ``None``
        when the pool mirrors every live row (everything is cached). The same tensor object is
        returned until the residency or the live range changes (callers may cache on its
        identity and must not modify it)."""
        if self.log.header is None:
            return None
        return self.hot.resident_positions(self._len0())

    def request_refill(self, rows: int = 1) -> None:
        """Swaps the last background refill into the cache, then earns ``rows *
        refill_ratio`` rows of refill credit and schedules the next refill when it suffices.

        Samplers that draw from cached rows only call it, with their batch size, *before*
        reading ``resident_positions()``: residency changes nowhere else, so positions drawn from
        the cache stay cached until they are gathered."""
        if self.log.header is not None and not self.is_ram_mirror:
            self._commit_deferred()
            earned = rows * self.refill_ratio
            self.hot.refill(earned, self._len0(), self.chunk_writer.in_place_pending, self._rng)

    # ================================================================= writes
    def _check_owner_process(self) -> None:
        if os.getpid() != self._owner_pid:
            raise RuntimeError(
                f"{self._where} belongs to process {self._owner_pid} and reached process "
                f"{os.getpid()} without pickling (a 'fork' start method): writing from here would "
                "corrupt the store. Start worker processes with 'spawn' or 'forkserver' (the "
                "TorchRL default), where the storage becomes a proxy that writes through its owner"
            )

    def _check_writable(self) -> None:
        self._check_owner_process()
        if self.read_only:
            raise ReadOnlyStorageError(
                f"{self._where} was opened read-only (mode='r'); reopen with mode='r+' to write"
            )
        if self._closed:
            raise RuntimeError(f"{self._where}: the storage is closed")

    @_serialized
    def set(self, cursor, data, *, set_cursor: bool = True):
        self._set(cursor, data, set_cursor, rollback=True)

    @_serialized
    def apply_worker_write(self, cursor, data, set_cursor: bool) -> None:
        """A worker proxy's ``set`` (``buffers/worker_proxy.py``), run by the pump thread; the
        proxy rolls back its own writers if this raises (this process's writers did not
        move)."""
        self._set(cursor, data, set_cursor, rollback=False)

    def _set(self, cursor, data, set_cursor: bool, rollback: bool) -> None:
        self._check_writable()
        if isinstance(data, list):
            data = flip_list(data)
        is_int = isinstance(cursor, (int, np.integer)) or (
            isinstance(cursor, torch.Tensor) and cursor.ndim == 0
        )
        try:
            td = as_tensordict(data, not is_int, self.ndim, self.log)
        except ValueError:
            n = 1 if is_int else _rows_of_cursor(cursor)
            if rollback and set_cursor and n:  # the writer's cursor moves back: no hole
                rollback_writers(self._attached_entities, n, self.ring.capacity)
            raise
        if not is_int and td.batch_dims and td.shape[0] == 0:
            return  # an empty extend writes nothing (and initializes nothing)
        if is_int:
            td = td.unsqueeze(0)
            cursor = torch.tensor([int(cursor)])
        if self.log.header is None:
            try:
                header = infer_header(
                    td[0],
                    self.ndim,
                    self.ring.capacity_for,
                    self._chunk_rows_arg,
                    self.index_keys_arg,
                    self.chunks.compressors,
                    self.dedupe_next,
                )
            except ValueError:  # refused before anything exists: the writer moves back too
                if rollback and set_cursor and not isinstance(cursor, tuple):
                    rollback_writers(self._attached_entities, td.shape[0], self.ring.capacity)
                raise
            header.tensor_root = isinstance(data, torch.Tensor)
            self._setup(header, create=True)
            self.log.write()
        if isinstance(cursor, tuple) and len(cursor) > 1:  # checked as whole rows
            return self._set_partial(cursor, td, set_cursor)
        try:
            leaves = validate(td, self.log.header)
        except ValueError:
            if rollback and set_cursor and not isinstance(cursor, tuple):
                rollback_writers(self._attached_entities, td.shape[0], self.ring.capacity)
            raise
        if isinstance(cursor, tuple) and len(cursor) > 1:
            return self._set_partial(cursor, td, set_cursor)
        if isinstance(cursor, tuple):
            cursor = cursor[0]
        if isinstance(cursor, slice):
            cursor = torch.arange(*cursor.indices(self.log.header.capacity or _UNBOUNDED))
        rows = torch.as_tensor(cursor).reshape(-1).to("cpu", torch.long)
        if rows.numel() != td.shape[0]:
            raise ValueError(f"{rows.numel()} positions for {td.shape[0]} rows of data")
        if set_cursor:
            self._set_last_cursor(cursor)
        self._write_rows(rows, leaves, append=set_cursor)
        if set_cursor:
            self._get_new_len(td, rows)
        self._bump_mutation_revision()
        self._maybe_commit()

    def _set_partial(self, cursor: tuple, td: TensorDictBase, set_cursor: bool):
        """Writes a sub-row selection ``(dim0, *rest)``: read-modify-write of whole rows."""
        rows, reindex = rows_and_reindex(cursor, self._len0())
        uniq, inv = torch.unique(rows, return_inverse=True)
        block = self._to_td(self._gather(uniq), self._batch_of(uniq.numel())).to("cpu")
        block[(inv.reshape(-1), *cursor[1:])] = td.reshape(-1).to("cpu")
        if self.log.item_batch:
            block.batch_size = block.batch_size[: self.ndim]
        self._write_rows(uniq, validate(block, self.log.header), append=False)
        self._bump_mutation_revision()
        self._maybe_commit()

    def _write_rows(self, rows: torch.Tensor, leaves: dict[str, torch.Tensor], append: bool):
        cap0 = self.log.header.capacity
        n = rows.numel()
        leaves = {k: v.detach().to("cpu") for k, v in leaves.items()}
        expected = self.ring.write_count + torch.arange(n)
        if cap0 is not None:
            expected = expected % cap0
        run = append and torch.equal(rows, expected)  # an append: consecutive rows
        if run:
            phys = self.ring.base + self.ring.write_count + torch.arange(n)
            keep = n if cap0 is None else min(n, cap0)  # a batch larger than the ring
            phys, rows = phys[n - keep :], rows[n - keep :]
            leaves = {k: v[n - keep :] for k, v in leaves.items()}
            self.ring.advance(n)
            self.index.ensure_rows(int(rows.max()) + 1)
            ring_run = int(rows[-1]) - int(rows[0]) + 1 == rows.numel()  # no wrap-around
        else:
            ring_run = False
            self.index.ensure_rows(int(rows.max()) + 1)
            phys = self.ring.phys(rows)
            self.chunk_writer.before_rewrite(phys)
        self.chunk_writer.stage(phys, leaves, run)
        at = slice(int(rows[0]), int(rows[0]) + rows.numel()) if ring_run else rows
        self.index.write(at, leaves)

    def _get_new_len(self, data, cursor):
        """TorchRL's length update (``+ numel``), bounded by the rows actually live: rewriting
        rows already stored with ``set_cursor=True`` does not count them twice (the commit record
        must never claim more rows than the store holds)."""
        numel = data.shape[: self.ndim].numel()
        self._len = min(self._len + numel, self.max_size, self.ring.live_len(self.ring.write_count))

    # ============================================================ durability
    def _maybe_commit(self) -> None:
        self.chunk_writer.land(wait=False)
        committed_end = self.ring.base + self.log.commit.write_count
        staged_end = self.ring.base + self.ring.write_count
        since = time.monotonic() - self.log.last_publish
        explicit = (
            self.flush_every_rows is not None
            and staged_end - committed_end >= self.flush_every_rows
        ) or (self.flush_every_seconds is not None and since >= self.flush_every_seconds)
        due = explicit or self._completed_chunks_due()
        # staged chunks not being written ahead (those are pinned until they land, at most
        # half the pool: start_write_ahead waits for them beyond that)
        pressure = self.chunk_writer.pressure
        if due and not pressure and not self.chunk_writer.in_place_pending:
            # completed chunks (rate-limited by min_commit_interval > 0): commit what the
            # background has written, never waiting for encoding
            ahead = not explicit and self.min_commit_interval > 0
            self._commit_whole_chunks(write_ahead=ahead)
        elif due or pressure:
            self._flush(self.commit_durability)
        else:
            self._start_write_ahead()

    def _start_write_ahead(self) -> None:
        """Completed chunks are encoded and stored in the background (``ChunkWriter``)."""
        self.chunk_writer.start_write_ahead(fsync=self.durability == "os")

    def _commit_deferred(self) -> None:
        """Completed chunks whose commit ``min_commit_interval`` deferred are committed at the next
        sampling call once the interval has passed: a burst of appends followed only by sampling
        would otherwise stay uncommitted (not durable, and invisible to the background refill,
        which decodes committed chunks only). Under the storage's lock: a worker's writes may
        be applied by the pump thread meanwhile."""
        if self.read_only:
            return
        with self._io_lock:
            if not self._closed and self._completed_chunks_due():
                self._maybe_commit()

    def _completed_chunks_due(self) -> bool:
        """Appends completed a chunk since the last commit, and ``min_commit_interval`` has
        passed (bulk loads commit at most that often)."""
        R = self.log.header.chunk_rows
        pending = (self.ring.base + self.ring.write_count) // R > (
            self.ring.base + self.log.commit.write_count
        ) // R
        return pending and time.monotonic() - self.log.last_publish >= self.min_commit_interval

    def _commit_whole_chunks(self, write_ahead: bool = False) -> None:
        """Automatic commit up to the last completed chunk: the partly filled head chunk stays
        staged, so it is written once when full instead of at every commit. ``write_ahead``:
        commit only up to the first chunk not written yet, and start writing the completed
        ones in the background (their commit comes at a later call, once they have landed)."""
        R = self.log.header.chunk_rows
        staged_end = self.ring.base + self.ring.write_count
        head = staged_end // R
        if write_ahead:
            self._start_write_ahead()
            head = self.chunk_writer.first_staged(head)
            if head * R - self.ring.base <= self.log.commit.write_count:
                return
        elif staged_end % R == 0 or head * R - self.ring.base <= self.log.commit.write_count:
            self._flush(self.commit_durability)
            return
        wc = head * R - self.ring.base
        length = min(self._len, self.ring.live_len(wc))
        if not write_ahead:
            self.chunk_writer.write_dirty(skip=head)
        self._publish(wc, max(length, self.log.commit.length), self.commit_durability)

    def flush(self) -> None:
        """Writes every staged chunk, then publishes the commit record (the commit point),
        durable as ``durability`` says; then saves the state of the attached buffers'
        samplers with the store when it changed (``save_sampler_state``)."""
        with self._io_lock, _naming_store(self._where):
            self._flush(self.durability)
        self._save_attached_samplers()

    # ========================================================= sampler state
    def save_sampler_state(self, sampler: Any) -> bool:
        """Stores ``sampler.state_dict()`` in the store (``<store>/.zarrl_sampler``: arrays and
        attributes, see ``buffers/sampler_state.py``), e.g. the priorities of a
        ``PrioritizedSampler`` or the cursor of a ``SamplerWithoutReplacement``. ``flush()``,
        ``close()`` and checkpoints do it for the samplers of the attached buffers; a buffer
        built on the reopened store gets it back (``attach``). Returns whether it was saved
        (a state holding values other than tensors, trees and scalars is not)."""
        self._check_writable()
        with self._io_lock, _naming_store(self._where):
            self._flush(self.durability)  # the state describes committed rows
            commit = self.log.commit.to_json()
        with _naming_store(self._where):
            return self._samplers.save(self.log.group, sampler, commit)

    def load_sampler_state(self, sampler: Any) -> bool:
        """Restores ``sampler`` from the state stored with the store by a sampler of the same
        class; rows committed after that state was saved are announced to it
        (``sampler.extend``: new rows get the default priority). Returns whether a state was
        loaded."""
        if self.log.header is None:
            return False
        with _naming_store(self._where):
            meta = sampler_state.load(
                self.log.group, sampler, self._where, self.ring.capacity or self.ring.write_count
            )
        if meta is None:
            return False
        cap0 = self.log.header.capacity
        if meta["base"] == self.ring.base and meta["write_count"] < self.ring.write_count:
            start = self.ring.base + meta["write_count"]
            if cap0 is not None:
                start = max(start, self.ring.base + self.ring.write_count - cap0)
            missed = self.ring.position(torch.arange(start, self.ring.base + self.ring.write_count))
            if missed.numel() and hasattr(sampler, "extend"):
                sampler.extend(missed)
        self._samplers.loaded(sampler)
        return True

    def _save_attached_samplers(self) -> None:
        """``save_sampler_state`` for the attached buffers' samplers whose state changed since
        this storage last saved or loaded it (one sampler per store: the first buffer's)."""
        if self.read_only or self._closed or self.log.header is None:
            return
        buffers = list(self._attached_entities)
        self._samplers.save_changed(buffers, buffer_sampler, buffer_lock, self.save_sampler_state)

    def _flush(self, durability: str) -> None:
        if self.read_only or self._closed or self.log.header is None:
            return
        self._check_owner_process()
        if not (
            self.chunk_writer.staged
            or self.chunk_writer.in_place_pending
            or (self.ring.base, self.ring.write_count, self._len)
            != (self.log.commit.base, self.log.commit.write_count, self.log.commit.length)
            or (durability == "os" and _unsynced(self.log.store))  # an earlier cheap commit
        ):
            return
        self.chunk_writer.write_dirty()
        self._publish(self.ring.write_count, self._len, durability)

    def _publish(self, write_count: int, length: int, durability: str) -> None:
        """The commit point: one atomic rewrite of the group attributes; ``durability="os"``
        fsyncs every file written since the last such commit, then the record."""
        if durability not in ("os", "process"):
            raise ValueError(f"durability must be 'os' or 'process', got {durability!r}")
        gc_below = self.log.gc_threshold(self.gc_grace_seconds)
        old, base = self.log.commit, self.ring.base
        commit = Commit(
            revision=old.revision + 1,
            base=base,
            write_count=write_count,
            length=length,
            extent=old.extent,
            inplace_revision=old.inplace_revision + int(self.chunk_writer.in_place_pending),
            gc_below=gc_below,
            head=None
            if self.chunks.seals is None
            else self.chunks.seals.head(base + write_count, self.log.header.chunk_rows, old),
        )
        live_start = self.ring.live_start(base, write_count)
        self.log.publish(commit, durable=durability == "os", live_start=live_start)
        self.chunk_writer.committed(gc_below)

    @_names_store
    def close(self) -> None:
        """Flushes and releases the background threads; the storage cannot be used afterwards
        (worker proxies still waiting get an error)."""
        if self._closed:
            return
        if self._channel is not None:  # outside the lock: the pump may be applying a write
            self._channel.stop()
        if self._temp_release is None and not self.read_only:
            self._save_attached_samplers()  # before the storage lock (buffer lock first)
        with self._io_lock:
            self._close()

    def _close(self) -> None:
        if self._closed:
            return
        if self._temp_release is None:
            self._flush(self.durability)
        self.chunk_writer.close()
        self.hot.close()
        self._closed = True
        if not self.read_only:
            pickling.unregister_writer(self)
        if self._temp_release is not None:  # a temporary store (no path given): removed
            self._temp_release()

    def __enter__(self) -> ZarrStorage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ========================================================== concurrency
    @_serialized
    def refresh(self) -> bool:
        """Re-reads the commit record; returns whether new data became visible."""
        group, header, commit = self.reader.poll()
        if header is None:
            return False
        if self.log.header is None:
            self.log.reopen(group)
            self.log.adopt_layout(group.attrs.asdict()["zarrl"], header)
            self._setup(header)
            self._adopt_fresh(commit)
            return True
        if commit.revision == self.log.commit.revision:
            return False
        old, full = self.log.commit, self.reader.needs_full(commit)
        if commit.extent != old.extent:  # the writer resized the arrays: reload their metadata
            self.log.reopen(group)
            self.chunks.reload()
        try:
            self._adopt_commit(commit, full=full, since=old)
        except StaleRead:
            self._adopt_fresh(commit)
        return True

    def _maybe_auto_refresh(self) -> None:
        if self.read_only and self.reader.due(self.refresh_every_seconds):
            self.refresh()

    def _adopt_commit(self, commit: Commit, full: bool, since: Commit | None = None) -> None:
        """Makes ``commit`` the visible state (``Reader.adopt``), then TorchRL's length, cursor
        and mutation revision."""
        self.reader.adopt(commit, full, since)
        self._adopted(commit)

    def _adopted(self, commit: Commit) -> None:
        """TorchRL's bookkeeping of an adopted ``commit``: length, last cursor, revision."""
        self._len = commit.length
        if self.ring.write_count:
            self._set_last_cursor(self.ring.cursor())
        self._bump_mutation_revision()

    # ============================================================ TorchRL API
    def attach(self, buffer: Any) -> None:
        """Also hands the committed ring cursor to the buffer's round-robin writer, so a buffer
        built on a reopened storage keeps appending where the previous run stopped, and
        restores its sampler's state stored with the store (``load_sampler_state``)."""
        super().attach(buffer)
        if self.log.header is None or self.ring.write_count == 0:
            return
        writer = buffer_writer(buffer)
        if writer is not None:
            self._sync_writer(writer)
            return
        wrap_writer_init(buffer, self._sync_writer)
        after_sampler_init(buffer, self.load_sampler_state)  # the state stored with the store

    def _sync_writer(self, writer):
        if isinstance(writer, RoundRobinWriter) and writer_position(writer)[0] == 0:
            set_writer_position(writer, self.ring.write_count, self.ring.next_position())
        return writer

    @_serialized
    def _empty(self) -> None:
        self._check_writable()
        if self.log.header is not None:
            self.chunk_writer.discard_staged()
            R = self.log.header.chunk_rows
            self.ring.restart(R)
            self.index.clear()
            self.chunk_writer.in_place_pending = True
        self._len = 0
        self._bump_mutation_revision()
        if self.log.header is not None:
            self._flush(self.durability)

    @_names_store
    def state_dict(self) -> dict[str, Any]:
        """Metadata only: where the data is (``store``: a path or a store object) and which
        commit it is at; the rows stay in the store."""
        self.flush()
        return {
            "path": self._where,
            "store": pickling.reference(self)["store"],
            "initialized": self.log.header is not None,
            "_len": self._len,
            "commit": self.log.commit.to_json(),
        }

    @_names_store
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Loads a ``state_dict``: of this store, it checks the store is at the recorded
        commit; of another store (a freshly built storage), it replaces this storage's content
        with a copy of that store, which must still be at the recorded commit."""
        want = Commit.from_json(state_dict["commit"])
        source = state_dict.get("store", state_dict["path"])
        if isinstance(source, (str, os.PathLike)):
            source_key = pickling.store_key(zarr.storage.LocalStore(os.fspath(source)))
        else:
            source_key = pickling.store_key(source)
        if source_key != pickling.store_key(self.log.store):
            self._check_writable()
            src = open_group(source, "r")
            _, commit = read_attrs(src, str(source))
            if (commit.base, commit.write_count) != (want.base, want.write_count):
                raise ValueError(
                    f"{source} is at commit base={commit.base}, write_count={commit.write_count} "
                    f"but the state dict expects base={want.base}, write_count={want.write_count}:"
                    " the store moved on since the state dict was taken; nothing was loaded"
                )
            self._replace_content(src)
        elif self.read_only:
            self.refresh()
        if (want.base, want.write_count) != (self.log.commit.base, self.log.commit.write_count):
            raise ValueError(
                f"{self._where} is at commit base={self.log.commit.base}, "
                f"write_count={self.log.commit.write_count} but the state dict expects base="
                f"{want.base}, write_count={want.write_count}; zarr stores cannot roll back"
            )
        self._len = int(state_dict["_len"])
        self._bump_mutation_revision()

    @_names_store
    def dumps(self, path) -> None:
        """Checkpoint: flush, then copy the whole store (any zarr store) to ``path``. With save
        hooks (``rb.register_save_hook``), ``path`` gets a new store holding what the hooks
        return for the live rows (``[len along dim 0, ...]``, position order) instead."""
        self.flush()
        hooks = save_hooks(self)
        if not hooks:
            if object_store.is_url(path):
                dest = object_store.open_store(path, self.init_options["storage_options"])
            else:
                dest = zarr.storage.LocalStore(os.fspath(path))
            copy_store(self.log.store, dest)
            return
        if self.log.header is None:
            raise RuntimeError(f"{self._where}: cannot save a non-initialized storage")
        data = self.get(torch.arange(self._len0()))
        for hook in hooks:
            data = hook(data, path=path)
        _write_new_store(path, data, self.ndim)

    @_names_store
    def loads(self, path) -> None:
        """Replaces this storage's content with the store checkpointed at ``path``; with load
        hooks (``rb.register_load_hook``), with what they return for its rows."""
        self._check_writable()
        src = open_group(path, "r")
        read_attrs(src, str(path))
        hooks = load_hooks(self)
        if not hooks:
            self._replace_content(src)
            return
        saved = type(self).open(path, mode="r")
        data = saved.get(torch.arange(saved._len0())) if saved.log.header is not None else None
        saved.close()
        if data is None:
            raise RuntimeError(f"{path}: the checkpoint holds no rows to load")
        for hook in hooks:
            data = hook(data, out=None)
        self._empty()
        self.set(torch.arange(data.shape[0]), data)
        self._sync_attached_writers()

    def _replace_content(self, src: zarr.Group) -> None:
        """This store's content becomes a copy of the store of ``src``."""
        self._check_writable()
        if self.log.header is not None:
            self.chunk_writer.land(wait=True)
        clear_store(self.log.store)
        copy_store(src.store, self.log.store)
        self.chunk_writer.forget_written()  # nothing past the loaded commit is ours
        self.log.reopen()
        object_store.pin(self.log.group)  # the copied commit record is the one we replace next
        header, commit = self.log.read()
        self.log.header = None
        if header is not None:
            self.log.adopt_layout(self.log.meta(), header)
            self._setup(header)
            self._adopt_commit(commit, full=True)
        else:
            self.log.commit, self._len = commit, 0
            self.ring.adopt(0, 0)
            self.ring.tail = None
            self.initialized = False

    def _sync_attached_writers(self) -> None:
        """Round-robin writers of the attached buffers continue after the stored rows."""
        for buffer in self._attached_entities:
            writer = buffer_writer(buffer)
            if isinstance(writer, RoundRobinWriter):
                set_writer_position(writer, 0, writer_position(writer)[1])
                self._sync_writer(writer)

    def __reduce__(self):
        """Sent to a process that ``multiprocessing`` is starting (the workers of
        ``MultiSyncCollector``/``MultiAsyncCollector``), the storage becomes a
        ``ZarrWriterProxy`` there: its writes are applied by this process, which keeps the store
        (``buffers/worker_proxy.py``). Any other pickle is a reference to the store, reopened
        on load (``buffers/pickling.py``); a writable storage is flushed first."""
        if get_spawning_popen() is None:
            if not self.read_only and not self._closed:
                self.flush()
            state = {"_attached_entities_list": list(self._attached_entities)}
            return _unpickle_storage, (pickling.reference(self),), state
        if self.read_only:
            raise ReadOnlyStorageError(
                f"{self._where} was opened read-only (mode='r') and cannot become a writer in "
                "another process; reopen it with mode='r+' in the process that should own it"
            )
        self._check_writable()
        if self._channel is None:
            self._channel = WriteChannel(self)
        _ = self._len, self._mutation_revision, self._last_cursor_index  # create the shared values
        state = {
            "_channel": self._channel,
            "max_size": self.max_size,
            "ndim": self.ndim,
            "device": self.device,
            "_growing": self.ring.growing,
            "_tail": tuple(self.log.header.tail) if self.log.header is not None else None,
            "_compilable": False,
            "_rng": None,
            "_len_value": self._len_value,
            "_mutation_revision_value": self._mutation_revision_value,
            "_last_cursor_index_value": self._last_cursor_index_value,
            "_attached_entities_list": list(self._attached_entities),
        }
        return new_proxy, (), state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """The buffers the pickled storage was attached to (the store was reopened already)."""
        self._attached_entities_list = list(state.get("_attached_entities_list", ()))

    def __deepcopy__(self, memo: dict) -> ZarrStorage:
        """An independent copy (as ``LazyMemmapStorage``): a writable storage is copied into a
        new temporary store; a read-only one becomes another reader of its store."""
        ref = pickling.reference(self)
        if self.read_only:
            new = pickling.reopen(type(self), ref)
        else:
            self.flush()
            dest = make_temp_store()
            with _naming_store(self._where):
                copy_store(self.log.store, zarr.storage.LocalStore(str(dest)))
            ref["store"] = dest
            new = pickling.reopen(type(self), ref)
            new._temp_release = remove_on_release(new, dest)
        memo[id(self)] = new
        new._attached_entities_list = copy.deepcopy(self._attached_entities, memo)
        return new

    def __repr__(self) -> str:
        where = f"temporary {self._where}" if self._temp_release is not None else self._where
        reopened = f", reopened with {self.rows_at_open} rows" if self.rows_at_open else ""
        return (
            f"ZarrStorage(path={where}, len={len(self)}, max_size="
            f"{self.ring.max_size}, ndim={self.ndim}, "
            f"mode={'r' if self.read_only else 'r+'}{reopened})"
        )


def _unpickle_storage(ref: dict[str, Any]) -> ZarrStorage:
    return pickling.reopen(ZarrStorage, ref)


def _rows_of_cursor(cursor) -> int | None:
    """Rows a round-robin writer's ``set`` at ``cursor`` covers (``None`` if not a row list)."""
    if isinstance(cursor, torch.Tensor):
        return cursor.numel()
    if isinstance(cursor, (range, list)):
        return len(cursor)
    return None


def _register_exit_flush(ref: weakref.ref) -> None:
    """Flush staged rows at interpreter exit. zarr's I/O runs on executors that Python shuts down
    before ``atexit`` handlers, so hook in just before them when the interpreter allows it."""
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError
        register(_flush_at_exit, ref)
    except RuntimeError:  # threading already shutting down, or no hook: best effort
        atexit.register(_flush_at_exit, ref)


def _flush_at_exit(ref: weakref.ref) -> None:
    storage = ref()
    if (
        storage is None
        or storage.closed
        or storage.read_only
        or storage._owner_pid != os.getpid()  # a forked child: the store is its parent's
    ):
        return
    try:
        storage.flush()
    except Exception as err:  # the store may be gone (temporary directories) at exit
        print(f"zarrl: could not flush {storage.where} at exit: {err}", file=sys.stderr)


def _unsynced(store) -> bool:
    """Whether files written into a local ``store`` still wait for a durable commit's fsync."""
    log = sync_log(store)
    return bool(log)


def _write_new_store(path, data: TensorDictBase, ndim: int) -> None:
    """A new zarrl store at ``path`` holding the rows of ``data`` (``[rows, ...]``); an
    existing zarrl store there is replaced, anything else is refused."""
    path = os.fspath(path)
    if os.path.exists(path) and os.listdir(path):
        existing = open_group(path, "r")
        read_attrs(existing, path)  # refuses a directory that is not a zarrl store
        clear_store(zarr.storage.LocalStore(path))
    with ZarrStorage(None, path=path, ndim=ndim) as dest:
        dest.set(torch.arange(data.shape[0]), data)
