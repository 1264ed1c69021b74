"""``ZarrStorage``: a durable, compressed TorchRL replay storage on a Zarr v3 group.

A drop-in for ``LazyMemmapStorage``: ``ReplayBuffer(storage=ZarrStorage(1_000_000, path=...))``.
Writes are staged in a RAM chunk pool and committed data-first, metadata-last (see
``buffers/format.py`` and ``docs/storage_format.md``); reads gather from the pool, which either
mirrors the whole buffer (``cache="ram"``, optionally on a GPU via ``cache_device``) or keeps a
bounded number of decoded chunks (``cache=<bytes>``). Small per-row columns (trajectory ids,
done flags, rewards: the *index columns*) are always mirrored in RAM by ring position.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import copy
import functools
import logging
import math
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
from tensordict import LazyStackedTensorDict, TensorDict, TensorDictBase, is_tensor_collection
from tensordict.base import _is_leaf_nontensor
from torchrl.data.replay_buffers.storages import TensorStorage
from torchrl.data.replay_buffers.writers import RoundRobinWriter, Writer

from . import _compat_zarr as zarr_compat
from . import codecs as leaf_codecs
from . import object_store, pickling, pytrees, sampler_state, xor_rows
from ._compat_tensordict import td_from_leaves
from ._compat_torchrl import (
    after_sampler_init,
    buffer_lock,
    buffer_sampler,
    load_hooks,
    save_hooks,
)
from .chunk_codec import ChunkCodec, drop_chunks, fetch_chunks, store_chunks
from .chunk_pool import ChunkPool, load_group
from .format import (
    Commit,
    CorruptChunkError,
    Header,
    LeafSpec,
    ReadOnlyStorageError,
    StoreFormatError,
    check_array,
    codec_chain,
    describe_schema,
    key_path,
    numpy_dtype_name,
    read_attrs,
    torch_dtype,
    write_attrs,
)
from .lazy_view import lazy_tensordict, path_tree
from .seals import (
    SEAL_CHUNK,
    SealTable,
    array_metadata_crc,
    chunk_problem,
    data_crc,
    open_table,
    seal_rows,
    seal_spec,
)
from .store_io import check_local_writable, grow_array, put_objects, remove_partials, sync_log
from .temp_store import make_temp_store, remove_on_release
from .worker_proxy import WriteChannel, new_proxy, rollback_writers
from .write_ahead import WriteAhead

_log = logging.getLogger("zarrl.buffers")
_UNBOUNDED = 2**31 - 1  # TorchRL keeps len() in an int32 shared value


class _ThreadFlag(threading.local):
    active = False  # per thread; True in the thread that runs background refills


_REFILL_THREAD = _ThreadFlag()
_TENSOR_KEY = "_tensor"
_DEFAULT_CACHE_BYTES = 256 * 2**20
_TARGET_CHUNK_BYTES = 2**22
_RESERVED_NAMES = frozenset({"zarr.json", ".zattrs", ".zgroup", ".zarray"})
_INDEX_MAX_BYTES = 16  # leaves with at most this many bytes per element stay in RAM


class _StaleRead(RuntimeError):
    """A reader loaded chunks the writer has recycled since the reader's last refresh."""


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


def _flip_list(data: list):
    if is_tensor_collection(data[0]):
        return torch.stack(data)
    if pytrees.is_pytree(data[0]):
        return pytrees.stack(data)
    return torch.stack([torch.as_tensor(d) for d in data])


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
        self._growing = max_size is None
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
        self._cache = cache
        self.cache_device = torch.device(cache_device) if cache_device else self.device
        self.flush_every_rows = flush_every_rows
        self.flush_every_seconds = flush_every_seconds
        self.min_commit_interval = min_commit_interval
        self.refresh_every_seconds = refresh_every_seconds
        self.gc_grace_seconds = gc_grace_seconds
        self.dedupe_next = dedupe_next
        self._gc_history: collections.deque = collections.deque()
        self._index_keys_arg = None if index_keys is None else [key_path(k) for k in index_keys]
        self._temp_release = None
        if path is None:
            if _mode != "w":
                raise ValueError("a path is needed to open an existing store")
            path = make_temp_store()
            self._temp_release = remove_on_release(self, path)
        self._path_arg = path
        self._where = str(path) if not isinstance(path, zarr.abc.store.Store) else repr(path)
        self._header: Header | None = None
        self._pytree: pytrees.Structure = None  # structure of stored plain pytrees
        self._item_batch: tuple[int, ...] = ()  # batch dims of each element beyond ``ndim``
        self._commit = Commit()
        self._wc = 0  # rows appended since ``base`` (staged, may be ahead of the commit)
        self._written_chunks = 0  # chunk ids below this were stored by this process
        self._base = 0
        self._inplace_pending = False
        self._last_commit_time = time.monotonic()
        self._last_refresh = time.monotonic()
        self._pool: ChunkPool | None = None
        self._index: dict[str, torch.Tensor] = {}
        self._arrays: dict[str, zarr.Array] = {}
        self._seals: SealTable | None = None  # format version 3 (``seals.py``)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._write_ahead = WriteAhead(_run_io)  # completed chunks, written in the background
        self._refill: concurrent.futures.Future | None = None
        self._refill_credit = 0.0  # rows the background refill may decode
        self._next_refill = 0.0  # monotonic time before which no refill starts
        self._resident_cache: tuple | None = None
        self._resident_mask: tuple | None = None
        self._closed = False
        self._io_lock = threading.RLock()
        self._owner_pid = os.getpid()
        self._channel: WriteChannel | None = None  # created when sent to a worker process
        self._sampler_saved: dict[int, str] = {}  # id(sampler) -> fingerprint of its last save
        self._sampler_locks: dict[int, Any] = {}
        self.rows_at_open = 0
        with _naming_store(self._where):
            self._group = self._open_group(path, _mode, storage_options)
            if not self.read_only:
                check_local_writable(self._group.store, self._where)
                remove_partials(self._group.store)  # torn temporaries of a killed writer
            self._attach_or_create()
            if not self.read_only:
                object_store.pin(self._group)  # the commit record version our commits replace
        if self._header is not None:
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
        group = cls._open_group(path, "r", storage_options)
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

    @staticmethod
    def _open_group(path, mode: str, storage_options: dict | None = None) -> zarr.Group:
        where = str(path)
        if isinstance(path, zarr.abc.store.Store):
            store = path
        elif object_store.is_url(path):  # s3://, memory://, file:// (``object_store.py``)
            store = object_store.open_store(path, storage_options, read_only=mode == "r")
            if mode != "r" and object_store.is_object_store(store):
                object_store.create_group_if_absent(store)
        else:
            path = os.fspath(path)
            if mode == "r" and not os.path.exists(path):
                raise FileNotFoundError(f"no zarrl store at {where}")
            store = zarr.storage.LocalStore(path, read_only=mode == "r")
        try:
            return zarr.open_group(store, mode="r" if mode == "r" else "a", zarr_format=3)
        except (zarr.errors.GroupNotFoundError, FileNotFoundError) as err:
            raise StoreFormatError(f"{where} is not a zarrl store (no Zarr v3 group)") from err
        except (ValueError, zarr.errors.ContainsArrayError) as err:
            raise StoreFormatError(f"{where} is not a zarrl store: {err}") from err

    def _attach_or_create(self) -> None:
        group = self._group
        attrs = group.attrs.asdict()
        has_content = bool(attrs) or any(True for _ in group.members())
        if "zarrl" not in attrs:
            if has_content or self.read_only:
                raise StoreFormatError(
                    f"{self._where} is a Zarr group but not a zarrl replay store "
                    "(no attributes['zarrl'])"
                )
            self._write_meta()  # empty zarrl store, schema decided by the first write
            return
        header, commit = read_attrs(group, self._where)
        if not self.existsok and not self.read_only:
            raise FileExistsError(
                f"a zarrl store already exists at {self._where}; pass existsok=True or use "
                "ZarrStorage.open(path) to continue it"
            )
        meta = attrs["zarrl"]
        stored_max = meta.get("max_size")
        mine = None if self._growing else self.max_size
        if stored_max != mine or int(meta.get("ndim", 1)) != self.ndim:
            raise ValueError(
                f"{self._where} holds max_size={stored_max}, ndim={meta.get('ndim')}; "
                f"this storage was built with max_size={mine}, ndim={self.ndim}"
            )
        if header is not None:
            self._read_layout_extras(meta, header)
            self._setup(header)
            self._adopt_fresh(commit)
            R, end = header.chunk_rows, commit.base + commit.write_count
            if self._seals is not None and not self.read_only and end % R:
                self._load_chunks([end // R])  # the head chunk on disk, checked: its crcs

    def _adopt_fresh(self, commit: Commit) -> None:
        """``_adopt_commit(commit, full=True)``; a reader that the writer moved past while it
        read the index columns adopts the newest commit instead."""
        for attempt in range(4):
            try:
                self._adopt_commit(commit, full=True)
                return
            except _StaleRead:
                if attempt == 3:
                    raise
                self._group = self._group_fresh()
                self._arrays = {path: self._group[path] for path in self._header.schema}
                _, commit = read_attrs(self._group, self._where)

    def _read_layout_extras(self, meta: Mapping, header: Header) -> None:
        """The pytree structure and per-element batch dims recorded beside the header."""
        self._pytree = None
        if "pytree" in meta:
            self._pytree = pytrees.validate_structure(meta["pytree"], header.schema, self._where)
        item_batch = meta.get("item_batch", [])
        if (
            not isinstance(item_batch, list)
            or not all(type(d) is int and d > 0 for d in item_batch)
            or not all(
                s.shape[: len(item_batch)] == tuple(item_batch) for s in header.schema.values()
            )
        ):
            raise StoreFormatError(
                f"{self._where}/zarr.json: attributes['zarrl']['item_batch'] = {item_batch!r} is "
                "invalid: expected positive ints leading every leaf shape of the schema"
            )
        self._item_batch = tuple(item_batch)

    def _write_meta(self, durable: bool = False) -> None:
        static = {"max_size": None if self._growing else self.max_size, "ndim": self.ndim}
        if self._pytree is not None:
            static["pytree"] = self._pytree
        if self._item_batch:
            static["item_batch"] = list(self._item_batch)
        _run_io(write_attrs(self._group, self._header, self._commit, durable, **static))

    # ============================================================ layout/setup
    @property
    def _cap0(self) -> int | None:
        """Capacity along dim 0 (rows), ``None`` when growing."""
        if self._growing:
            return None
        tail = self._header.tail if self._header else ()
        return -(self.max_size // -max(1, math.prod(tail)))

    @property
    def _total_shape(self):
        if self._header is None:
            return None
        cap0 = self._cap0 if not self._growing else self._len_along_dim0_raw()
        return torch.Size([cap0, *self._header.tail])

    def _len_along_dim0_raw(self) -> int:
        tail = math.prod(self._header.tail) if self._header else 1
        return -(self._len // -max(1, tail))

    def _infer_header(self, element: TensorDictBase) -> Header:
        tail = tuple(element.batch_size)
        if len(tail) != self.ndim - 1:
            raise ValueError(
                f"expected one element to have {self.ndim - 1} batch dims for ndim={self.ndim}, "
                f"got batch_size={tuple(element.batch_size)}"
            )
        schema = {}
        for key, leaf in _stored_leaves(element):
            if not isinstance(leaf, torch.Tensor):
                raise ValueError(
                    f"key {key!r}: only tensors can be stored, got {type(leaf).__name__} "
                    "(non-tensor leaves such as td.set_non_tensor values are not stored by "
                    "ZarrStorage: encode them as tensors or td.exclude() them); nothing was written"
                )
            schema[key_path(key)] = LeafSpec(
                numpy_dtype_name(leaf.dtype, key), tuple(leaf.shape[len(tail) :])
            )
        if not schema:
            raise ValueError("cannot store a TensorDict without tensor leaves")
        tail_n = max(1, math.prod(tail))
        row_bytes = tail_n * sum(s.nbytes for s in schema.values())
        if self._chunk_rows_arg is not None:
            chunk_rows = int(self._chunk_rows_arg)
        else:
            chunk_rows = 2 ** int(math.log2(max(1, _TARGET_CHUNK_BYTES // max(1, row_bytes))))
            chunk_rows = int(min(chunk_rows, 65536))  # a huge row: one row per chunk
        if self._index_keys_arg is not None:
            missing = set(self._index_keys_arg) - set(schema)
            if missing:
                raise ValueError(f"index_keys {sorted(missing)} are not in the data")
            index_keys = list(self._index_keys_arg)
        else:
            index_keys = [k for k, s in schema.items() if s.nbytes <= _INDEX_MAX_BYTES]
        return Header(
            capacity=self._cap0_for(tail),
            ndim=self.ndim,
            tail=tail,
            chunk_rows=chunk_rows,
            schema=schema,
            index_keys=index_keys,
            tensor_root=False,
            codec={  # informative: each array's metadata holds its codecs
                "chains": {
                    path: leaf_codecs.describe(
                        leaf_codecs.array_options(path, spec, 1 + len(tail), self._compressors_arg)
                    )
                    for path, spec in schema.items()
                }
            },
            xor_previous=xor_rows.pairs_for(schema, set(index_keys)) if self.dedupe_next else {},
            chunk_seals=seal_spec(list(schema)),
        )

    def _cap0_for(self, tail) -> int | None:
        if self._growing:
            return None
        return -(self.max_size // -max(1, math.prod(tail)))

    def _setup(self, header: Header, create: bool = False) -> None:
        """Builds arrays (when ``create``), the chunk pool and the RAM index for ``header``."""
        self._header = header
        R, tail = header.chunk_rows, header.tail
        if create:
            self._arrays = self._create_arrays(header)
        else:
            self._arrays = {}
            for path in header.schema:
                try:
                    self._arrays[path] = self._group[path]
                except KeyError:
                    raise StoreFormatError(
                        f"{self._where}: array {path!r} listed in the schema is missing"
                    ) from None
                except (ValueError, TypeError, UnicodeDecodeError) as err:  # JSON errors
                    raise StoreFormatError(
                        f"{self._where}/{path}/zarr.json is not valid array metadata: {err}"
                    ) from None
                check_array(self._where, path, self._arrays[path], header)
        self._seals = None
        if header.chunk_seals is not None:
            extent = self._commit.extent if create else None
            self._seals = open_table(self._group, header, self._where, extent)
            if create:  # bind each array's codecs and chunking into the header
                header.chunk_seals["arrays"] = {
                    p: array_metadata_crc(a) for p, a in self._arrays.items()
                }
        cap0 = header.capacity
        live_chunks = None if cap0 is None else -(cap0 // -R) + 2
        pool_specs = header.schema
        chunk_bytes = R * max(1, math.prod(tail)) * sum(s.nbytes for s in pool_specs.values())
        if self._cache == "ram":
            max_slots = live_chunks if live_chunks is not None else 8
        else:
            budget = _DEFAULT_CACHE_BYTES if self._cache is None else int(self._cache)
            max_slots = max(4, budget // max(1, chunk_bytes))
            if live_chunks is not None and live_chunks <= max_slots:
                max_slots = live_chunks  # a mirror: nothing is ever decoded outside the pool
            else:  # the budget also holds a refill run and a group of misses being decoded
                max_slots = max(4, max_slots - 2 * load_group(max_slots))
        # a bounded store reserves its whole cache at once (untouched pages cost nothing); an
        # unbounded one grows on demand up to max_slots
        n_slots = max_slots if live_chunks is not None else min(max_slots, 16)
        map_size = live_chunks if live_chunks is not None else max(64, 2 * max_slots)
        self._pool = ChunkPool(
            pool_specs, tail, R, n_slots, map_size, self.cache_device, max_slots=max_slots
        )
        idx_rows = cap0 if cap0 is not None else 1024
        self._index = {
            k: torch.zeros(
                (idx_rows, *tail, *header.schema[k].shape),
                dtype=torch_dtype(header.schema[k].dtype),
            )
            for k in header.index_keys
        }
        self.initialized = True

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
                self._compressors_arg,
                xor_source=header.xor_previous.get(path),
            )
            for path, spec in header.schema.items()
        }
        for opts in options.values():
            opts["compressors"], _ = codec_chain(opts["compressors"])  # + crc32c
        extent = 0 if header.capacity is None else -(header.capacity // -R) * R
        extent = max(extent, self._commit.extent)
        root = zarr_compat.async_group(self._group)
        parents = sorted({p.rpartition("/")[0] for p in header.schema} - {""}, key=len)

        async def create() -> list:
            for parent in parents:  # nested keys: a sub-group per level, outermost first
                await root.require_group(parent)
            return await asyncio.gather(
                *(
                    root.create_array(
                        path,
                        shape=(extent, *tail, *spec.shape),
                        chunks=(R, *tail, *spec.shape),
                        dtype=spec.dtype,
                        fill_value=0,
                        # flat chunk files (c.<row chunk>.0...): no directory per chunk
                        chunk_key_encoding={"name": "default", "separator": "."},
                        overwrite=True,  # only leftovers of an uncommitted first write
                        **options[path],  # filters, compressors, dimension_names (codecs.py)
                    )
                    for path, spec in header.schema.items()
                )
            )

        (created,) = _run_io([create()])  # one event-loop round trip for the whole layout
        self._commit.extent = extent
        return {path: zarr.Array(a) for path, a in zip(header.schema, created)}

    @property
    def is_ram_mirror(self) -> bool:
        """Whether every live chunk fits in the pool (no eviction ever needed)."""
        cap0 = self._header.capacity if self._header else None
        if cap0 is None:
            return self._cache == "ram"
        return self._pool.max_slots >= -(cap0 // -self._header.chunk_rows) + 2

    # ============================================================ index maths
    def _phys(self, pos: torch.Tensor) -> torch.Tensor:
        """Physical row (write-order log) of each ring position ``pos`` (int64)."""
        cap0 = self._header.capacity
        if cap0 is None or self._wc <= cap0:  # not wrapped yet: one generation
            return pos + self._base
        gen = torch.div(self._wc - 1 - pos, cap0, rounding_mode="floor").clamp_min(0)
        return self._base + gen * cap0 + pos

    def _len0(self) -> int:
        return self._len_along_dim0_raw()

    def _rows_and_reindex(self, index):
        """dim-0 positions [N] to read + how to index the gathered ``[N, *tail]`` block."""
        if (  # what samplers pass: a CPU int64 vector
            isinstance(index, torch.Tensor)
            and index.ndim == 1
            and index.dtype == torch.long
            and index.device.type == "cpu"
        ):
            return self._checked_rows(index), None
        rest = ()
        if isinstance(index, tuple):
            if len(index) == 0:
                index = slice(None)
            else:
                index, rest = index[0], tuple(index[1:])
        n0 = self._len0()
        if index is Ellipsis:
            index = slice(None)
        if isinstance(index, (int, np.integer)) or (
            isinstance(index, torch.Tensor) and index.ndim == 0 and not index.is_floating_point()
        ):
            i = int(index)
            if i < -n0 or i >= n0:
                raise IndexError(f"index {i} out of range for a storage of {n0} rows")
            rows = torch.tensor([i % n0 if i < 0 else i])
            return rows, (0, *rest)
        if isinstance(index, slice):
            rows = torch.arange(*index.indices(n0))
            return rows, ((slice(None), *rest) if rest else None)
        idx = torch.as_tensor(np.asarray(index) if isinstance(index, list) else index)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().squeeze(-1)
        idx = self._checked_rows(idx.to("cpu", torch.long))
        flat = idx.reshape(-1)
        if rest:
            return flat, (torch.arange(flat.numel()).reshape(idx.shape), *rest)
        return flat, ("reshape", tuple(idx.shape))

    def _checked_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx`` (CPU int64, any shape) with negative positions wrapped; raises
        ``IndexError`` outside ``[-len0, len0)``."""
        if not idx.numel():
            return idx
        n0 = self._len0()
        lo, hi = (int(v) for v in torch.aminmax(idx))
        if hi >= n0 or lo < -n0:
            raise IndexError(f"index out of range for a storage of {n0} rows")
        return torch.where(idx < 0, idx + n0, idx) if lo < 0 else idx

    @staticmethod
    def _apply_reindex(td: TensorDictBase, reindex):
        if reindex is None:
            return td
        if isinstance(reindex, tuple) and reindex and isinstance(reindex[0], str):
            shape = reindex[1]
            return td if len(shape) == 1 else td.reshape(*shape, *td.batch_size[1:])
        return td[reindex]

    # ================================================================== reads
    def _load_chunk(self, chunk: int) -> dict[str, np.ndarray]:
        return self._load_chunks([chunk])[0]

    def _load_chunks(self, chunks: list[int], paths=None) -> list[dict[str, np.ndarray]]:
        """Decodes physical chunks of every leaf (or of ``paths``, none of them XORed) from the
        store, all reads concurrently (zeros past the extent); a chunk that fails its checksum
        or (version 3) is missing, misplaced or stale raises ``CorruptChunkError``."""
        R = self._header.chunk_rows
        codecs = self._chunk_codecs()
        paths = list(self._arrays) if paths is None else list(paths)
        if not all(c.supported for c in codecs.values()):
            return self._load_chunks_zarr(chunks, paths)
        reads = [(chunk, path) for chunk in chunks for path in paths]
        raws = fetch_chunks([(codecs[path], chunk) for chunk, path in reads], _run_io)
        if self._seals is not None:  # entries checked once the chunks are read
            # the refill thread's reads may be rewritten before they are used: not recorded
            self._check_seals(chunks, reads, raws, record=not _REFILL_THREAD.active)
        out: dict[int, dict[str, np.ndarray]] = {c: {} for c in chunks}
        for (chunk, path), raw in zip(reads, raws):
            codec = codecs[path]
            if raw is None:  # never written, or deleted as all-zero: the fill value
                out[chunk][path] = np.zeros(codec.chunk_shape, codec.dtype)
                continue
            try:
                out[chunk][path] = codec.decode(raw)
            except Exception as err:  # zarr's codecs raise on corrupt bytes and bad checksums
                raise CorruptChunkError(
                    f"{self._where}: array {path!r}, chunk {chunk} (rows {chunk * R}:"
                    f"{(chunk + 1) * R}) could not be decoded or failed its crc32c checksum: "
                    f"{err!r}"
                ) from err
        pairs = self._header.xor_previous if len(paths) == len(self._arrays) else {}
        return [xor_rows.apply(out[c], pairs) for c in chunks]

    def _check_seals(self, chunks: list[int], reads: list, raws: list, record: bool) -> None:
        """Version 3: every chunk read must be the one its seal entry (or the commit record,
        for the head chunk) binds to its array and index (``seals.chunk_problem``); ``record``:
        the writer notes the versions it read (``SealTable.disk_crc``)."""
        R, reader = self._header.chunk_rows, self.read_only
        col, live_start = self._seals.col, self._live_start_committed()
        bound = 16 if reader else None
        rows = self._seals.rows(chunks, _run_io, self._where, bound=bound)
        crcs = [None if raw is None else data_crc(raw) for raw in raws]
        for attempt in range(2):
            problem = None
            for (chunk, path), crc in zip(reads, crcs):
                entry = rows[chunk][col[path]]
                problem = chunk_problem(path, chunk, crc, entry, self._commit, R, live_start)
                if problem is not None:
                    break
            if problem is None or not reader or attempt:
                break
            # a reader's seal chunks may predate the chunks it read: read them again
            rows = self._seals.rows(chunks, _run_io, self._where, fresh=True, bound=bound)
        if problem is not None:
            self._seal_failure(problem)
        if record and not reader:
            self._seals.record(
                [((chunk, path), crc) for (chunk, path), crc in zip(reads, crcs) if crc is not None]
            )

    def _seal_failure(self, problem: str) -> None:
        """Raises ``CorruptChunkError``, or ``_StaleRead`` in a reader the writer has moved past
        (it may have rewritten or recycled the chunk since this reader's commit)."""
        if self.read_only:
            _, fresh = read_attrs(self._group_fresh(), self._where)
            if fresh.revision != self._commit.revision:
                raise _StaleRead(f"{self._where}: {problem} (the writer committed since)")
        raise CorruptChunkError(f"{self._where}: {problem}")

    def _load_chunks_zarr(self, chunks: list[int], paths=None) -> list[dict[str, np.ndarray]]:
        """``_load_chunks`` through zarr's own read path (codecs without a sync path)."""
        R = self._header.chunk_rows
        paths = list(self._arrays) if paths is None else list(paths)
        reads = []
        for chunk in chunks:
            start = chunk * R
            for path in paths:
                arr = self._arrays[path]
                stop = max(start, min(start + R, arr.shape[0]))
                reads.append((chunk, path, arr, slice(start, stop)))
        values = _run_io(
            [zarr_compat.async_array(arr).getitem(sel) for _, _, arr, sel in reads],
            return_exceptions=True,
        )
        out: dict[int, dict[str, np.ndarray]] = {c: {} for c in chunks}
        for (chunk, path, _, sel), value in zip(reads, values):
            if isinstance(value, BaseException):  # zarr raises codec errors on corrupt bytes
                raise CorruptChunkError(
                    f"{self._where}: array {path!r}, chunk {chunk} (rows {sel.start}:{sel.stop}) "
                    f"could not be decoded or failed its crc32c checksum: {value!r}"
                ) from value
            out[chunk][path] = np.asarray(value)
        pairs = self._header.xor_previous if len(paths) == len(self._arrays) else {}
        return [xor_rows.apply(out[c], pairs) for c in chunks]

    def _gather(self, rows: torch.Tensor, keys=None) -> dict[str, torch.Tensor]:
        """Leaves at ring positions ``rows`` -> {path: [N, *tail, *shape]} on ``self.device``."""
        keys = list(self._header.schema) if keys is None else keys
        out = {}
        big = [k for k in keys if k not in self._index]
        if big:
            phys = self._phys(rows)
            loaded: list[int] = []

            def load(chunks: list[int]):
                loaded.extend(chunks)
                return self._load_chunks(chunks)

            got = self._pool.gather(phys, load, big)
            if self.read_only and loaded:
                fresh = torch.isin(phys // self._header.chunk_rows, torch.tensor(loaded))
                self._check_not_stale(int(phys[fresh].min()))
            out.update(got)
        for k in keys:
            if k in self._index:
                out[k] = torch.index_select(self._index[k], 0, rows)  # much faster than [rows]
        if all(out[k].device == self.device for k in keys):
            return {k: out[k] for k in keys}
        return {k: out[k].to(self.device, non_blocking=True) for k in keys}

    def _check_not_stale(self, first_row: int) -> None:
        """Readers: chunks just loaded must still be live in the newest commit (the writer may
        have recycled them since this reader's last refresh); raises ``_StaleRead`` if not."""
        _, commit = read_attrs(self._group_fresh(), self._where)
        R = self._header.chunk_rows
        if first_row // R < commit.gc_below // R:  # its chunk may already be deleted
            with self._pool.lock:
                self._pool.drop_clean()
            raise _StaleRead(
                f"{self._where}: rows read by this reader were recycled by the writer; call "
                "refresh() more often (or set refresh_every_seconds)"
            )

    def _group_fresh(self) -> zarr.Group:
        return zarr.open_group(self._group.store, mode="r", zarr_format=3)

    def _to_td(self, leaves: Mapping[str, torch.Tensor], batch) -> TensorDictBase | torch.Tensor:
        if self._header.tensor_root:
            return leaves[_TENSOR_KEY]
        return _nested_td(leaves, torch.Size(batch), self.device)

    @_serialized
    def get(self, index) -> TensorDictBase | torch.Tensor:
        if self._header is None:
            raise RuntimeError("Cannot get elements out of a non-initialized storage.")
        self._maybe_auto_refresh()
        if self._is_full_view(index):
            return self._full_view()
        rows, reindex = self._rows_and_reindex(index)
        for attempt in range(4):
            try:
                leaves = self._gather(rows)
                break
            except _StaleRead:  # readers only: adopt the newest commit, read the same positions
                if attempt == 3:
                    raise
                self.refresh()
        td = self._apply_reindex(self._to_td_any(leaves, self._batch_of(rows.numel())), reindex)
        if self._pytree is not None:  # the stored pytree, each leaf indexed as the TensorDict
            flat = {key_path(k): v for k, v in td.items(include_nested=True, leaves_only=True)}
            return pytrees.unflatten(flat, self._pytree)
        return td

    def _batch_of(self, n: int) -> list[int]:
        """Batch size of ``n`` rows as returned: ``[n, *tail, *item_batch]``."""
        return [n, *self._header.tail, *self._item_batch]

    @_serialized
    def __getitem__(self, index) -> TensorDictBase | torch.Tensor:
        """``storage[index]`` (what samplers use to read flags): the RAM index columns are
        gathered at once, other leaves only when first looked up (``get`` stays eager)."""
        if (
            self._header is None
            or self._header.tensor_root
            or self._pytree is not None
            or self.read_only
            or self._is_full_view(index)
            or not self._index
        ):
            return self.get(index)
        rows, reindex = self._rows_and_reindex(index)
        if reindex is not None and not (isinstance(reindex[0], str) and len(reindex[1]) == 1):
            return self.get(index)
        eager = {k: torch.index_select(v, 0, rows).to(self.device) for k, v in self._index.items()}

        def loader(path):
            return lambda: self._gather(rows, [path])[path]

        lazy = {k: loader(k) for k in self._header.schema if k not in self._index}
        return lazy_tensordict(eager, lazy, self._batch_of(rows.numel()), self.device)

    def _to_td_any(self, leaves, batch):
        if self._header.tensor_root:
            return TensorDict({_TENSOR_KEY: leaves[_TENSOR_KEY]}, batch_size=batch)[_TENSOR_KEY]
        return self._to_td(leaves, batch)

    def _is_full_view(self, index) -> bool:
        if isinstance(index, tuple) and 1 <= len(index) <= self.ndim:  # (:,) or (:, :)
            if any(not (isinstance(i, slice) and i == slice(None)) for i in index):
                return False
            index = index[0]
        return (
            isinstance(index, slice)
            and index == slice(None)
            and not self._header.tensor_root
            and self._pytree is None
        )

    def _full_view(self) -> TensorDictBase:
        """``storage[:]``: index columns are RAM views, other leaves load on first access."""
        n0 = self._len0()
        eager = {k: v[:n0].to(self.device) for k, v in self._index.items()}

        def loader(path):  # the row range is built only if a large column is looked up
            return lambda: self._gather(torch.arange(n0), [path])[path]

        lazy = {k: loader(k) for k in self._header.schema if k not in self._index}
        view = lazy_tensordict(eager, lazy, self._batch_of(n0), self.device)
        if not self.read_only:  # writes into the view reach the store (``rb[0, 3:4] = td``)
            view.__class__ = _StorageView
            view._zarrl_storage = weakref.ref(self)
        return view

    def _rand_given_ndim(self, batch_size: int):
        """Uniform positions; when the buffer exceeds the cache, uniform over cached rows."""
        self._maybe_auto_refresh()
        if self._header is None or self.is_ram_mirror or not self._pool.specs:
            return super()._rand_given_ndim(batch_size)
        self.request_refill(batch_size)  # residency changes here, before drawing
        pos = self._sample_resident(batch_size)
        if self.ndim == 1:
            return pos.to(self.device)
        others = tuple(
            torch.randint(d, (batch_size,), generator=self._rng) for d in self._header.tail
        )
        return tuple(t.to(self.device) for t in (pos, *others))

    def resident_positions(self) -> torch.Tensor | None:
        """bool ``[len along dim 0]``: whether each ring position's chunk is cached; ``None``
        when the pool mirrors every live row (everything is cached). The same tensor object is
        returned until the residency or the live range changes (callers may cache on its
        identity and must not modify it)."""
        if self._header is None or self.is_ram_mirror:
            return None
        live = self._live_phys_range()
        key = (self._pool, self._pool.version, live, self._base, self._len0())
        if self._resident_mask is None or self._resident_mask[0] != key:
            R = self._header.chunk_rows
            first = live[0] // R
            cached = torch.zeros(max(0, -(live[1] // -R) - first), dtype=torch.bool)
            with self._pool.lock:
                chunks = self._pool.resident() - first
            cached[chunks[(chunks >= 0) & (chunks < cached.numel())]] = True
            phys = torch.arange(*live)
            mask = torch.zeros(self._len0(), dtype=torch.bool)
            mask[self._pos_of_phys(phys)] = cached[phys // R - first]
            self._resident_mask = (key, mask)
        return self._resident_mask[1]

    def request_refill(self, rows: int = 1) -> None:
        """Swaps the last background refill into the cache, then earns ``rows *
        refill_ratio`` rows of refill credit and schedules the next refill when it suffices.

        Samplers that draw from cached rows only call it, with their batch size, *before*
        reading ``resident_positions()``: residency changes nowhere else, so positions drawn from
        the cache stay cached until they are gathered."""
        if self._header is not None and not self.is_ram_mirror:
            self._commit_deferred()
            self._install_refill()
            self._refill_credit = min(
                self._refill_credit + rows * self.refill_ratio, 2 * self._refill_rows()
            )
            self._schedule_refill()

    def _live_phys_range(self) -> tuple[int, int]:
        cap0 = self._header.capacity
        n0 = self._len0()
        end = self._base + self._wc
        start = end - n0 if cap0 is None else self._base + max(0, self._wc - cap0)
        if cap0 is not None and n0 < min(self._wc, cap0):
            start = end - n0
        return start, max(start, end)

    def _resident_runs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached live rows as runs, int64 ``[n_cached_chunks]`` each: ``shift`` (physical row
        of a run minus the number of cached rows before it) and the cumulative row count, so
        the ``u``-th cached row is ``shift[k] + u`` with ``k = searchsorted(cum, u, right)``.
        Recomputed only when the pool's residency or the live range changed."""
        R = self._header.chunk_rows
        live = self._live_phys_range()
        key = (self._pool, self._pool.version, live)
        if self._resident_cache is None or self._resident_cache[0] != key:
            with self._pool.lock:
                chunks = self._pool.resident()
            lo = torch.clamp(chunks * R, min=live[0])
            counts = (torch.clamp((chunks + 1) * R, max=live[1]) - lo).clamp_min(0)
            lo, counts = lo[counts > 0], counts[counts > 0]
            cum = counts.cumsum(0)
            self._resident_cache = (key, lo - (cum - counts), cum)
        return self._resident_cache[1], self._resident_cache[2]

    def _sample_resident(self, batch_size: int) -> torch.Tensor:
        """``batch_size`` ring positions drawn uniformly from the cached live rows."""
        shift, cum = self._resident_runs()
        if cum.numel() == 0:  # nothing cached yet: load a few chunks synchronously
            R = self._header.chunk_rows
            start, end = self._live_phys_range()
            want = torch.randint(start // R, (end - 1) // R + 1, (min(4, self._pool.max_slots),))
            self._pool.ensure(torch.unique(want), self._load_chunks)
            return self._sample_resident(batch_size)
        u = torch.randint(int(cum[-1]), (batch_size,), generator=self._rng)
        phys = shift[torch.searchsorted(cum, u, right=True)] + u
        return self._pos_of_phys(phys)

    def _pos_of_phys(self, phys: torch.Tensor) -> torch.Tensor:
        cap0 = self._header.capacity
        rel = phys - self._base
        return rel if cap0 is None else rel % cap0

    def _refill_rows(self) -> int:
        """Rows one background refill decodes: a run of 1/16 of the cache's chunks."""
        return self._pool.load_group * self._header.chunk_rows

    def _schedule_refill(self) -> None:
        """Starts decoding a run of consecutive uncached, committed live chunks (1/16 of the
        cache) in the background once enough credit is earned and the refill thread has rested
        3x its last run (so it works at most ~1/4 of the time); ``_install_refill`` swaps them
        in at a later sampling call."""
        R = self._header.chunk_rows
        if (
            self._refill is not None
            or self._refill_credit < self._refill_rows()
            or time.monotonic() < self._next_refill
        ):
            return
        start, _ = self._live_phys_range()
        # whole committed chunks only: their bytes change only through in-place writes
        first, last = start // R, (self._base + self._commit.write_count) // R - 1
        if last < first:
            return
        n = self._refill_rows() // R
        run_start = int(
            torch.randint(first, max(first, last - n + 1) + 1, (1,), generator=self._rng)
        )
        want = torch.arange(run_start, min(last, run_start + n - 1) + 1)
        with self._pool.lock:
            missing = want[self._pool.slots_of(want) < 0].tolist()
        if not missing:
            return
        self._refill_credit -= len(missing) * R
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, "zarrl-refill")
        version, gc_chunk = self._refill_version(), self._commit.gc_below // R

        def refill():
            t0 = time.monotonic()
            try:
                _REFILL_THREAD.active = True
                decoded = list(zip(missing, self._load_chunks(missing)))
            except _StaleRead:  # a reader the writer moved past: refill after a refresh
                return None, []
            if self.read_only:  # the writer may have recycled (deleted) them since our refresh
                _, commit = read_attrs(self._group_fresh(), self._where)
                gc_chunk_now = max(gc_chunk, commit.gc_below // R)
                decoded = [(c, a) for c, a in decoded if c >= gc_chunk_now]
            self._next_refill = time.monotonic() + 3 * (time.monotonic() - t0)
            return version, decoded

        self._refill = self._executor.submit(refill)

    def _refill_version(self) -> tuple:
        """Changes whenever committed chunks may have changed bytes (in-place writes, a new
        base or a reader's full refresh), which makes a pending refill stale."""
        c = self._commit
        return c.inplace_revision, c.base, self._inplace_pending, self._base

    def _install_refill(self) -> None:
        """Installs the chunks of a finished refill that are still uncached and not stale."""
        if self._refill is None or not self._refill.done():
            return
        future, self._refill = self._refill, None
        version, decoded = future.result()  # a corrupt chunk raises here, in the sampler
        if version != self._refill_version() or self._inplace_pending:
            return
        start, _ = self._live_phys_range()
        R = self._header.chunk_rows
        with self._pool.lock:
            for c, arrays in decoded:
                if len(self._pool.dirty) >= self._pool.max_slots:
                    return  # every slot holds unflushed rows: nothing may be evicted
                if c >= start // R and int(self._pool.slots_of(torch.tensor([c]))[0]) < 0:
                    self._pool.install(c, arrays)

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

    def _as_td(self, data, batched: bool) -> TensorDictBase:
        """``data`` as a TensorDict with ``ndim`` batch dims (``ndim - 1`` for one element):
        tensors under ``_TENSOR_KEY``, pytrees by leaf path; a TensorDict's further batch dims
        (a ``[N, 4]`` batch in an ``ndim=1`` storage) become leading leaf dims
        (``item_batch``)."""
        nb = (1 if batched else 0) + self.ndim - 1
        if is_tensor_collection(data):
            if data.batch_dims <= nb:
                return data
            extra = tuple(data.batch_size[nb:])
            if self._header is not None and extra != self._item_batch:
                raise ValueError(
                    f"data batch dims {tuple(data.batch_size)}: the store holds elements of "
                    f"batch {list(self._item_batch)} beyond its ndim={self.ndim}; nothing was "
                    "written"
                )
            if isinstance(data, LazyStackedTensorDict):
                _stored_leaves(data)  # a ragged stack is refused by name
                data = data.contiguous()
            if type(data) is not TensorDict:
                data = data.to_tensordict()
            data = data.clone(recurse=False)
            data.batch_size = data.batch_size[:nb]
            self._item_batch = extra
            return data
        if isinstance(data, torch.Tensor):
            return TensorDict({_TENSOR_KEY: data}, batch_size=data.shape[:nb])
        if pytrees.is_pytree(data):
            leaves, structure = pytrees.flatten(data)
            if self._header is not None and structure != self._pytree:
                raise ValueError(
                    f"pytree structure {structure} does not match the stored {self._pytree}; "
                    "nothing was written"
                )
            self._pytree = structure
            first = next(iter(leaves.values()))
            td = TensorDict(batch_size=first.shape[:nb])
            for path, leaf in leaves.items():
                td.set(tuple(path.split("/")), leaf)
            return td
        raise TypeError(
            f"ZarrStorage stores TensorDicts, tensors and pytrees (dicts, lists and tuples of "
            f"tensors), got {type(data)}"
        )

    def _validate(self, td: TensorDictBase) -> dict[str, torch.Tensor]:
        """Leaves of ``td`` keyed by path, checked against the schema (raises, writes nothing)."""
        header = self._header
        leaves = {}
        for key, leaf in _stored_leaves(td):
            if not isinstance(leaf, torch.Tensor):
                raise ValueError(
                    f"key {key!r}: only tensors can be stored, got {type(leaf).__name__} "
                    "(non-tensor leaves such as td.set_non_tensor values are not stored by "
                    "ZarrStorage: encode them as tensors or td.exclude() them); nothing was written"
                )
            leaves[key_path(key)] = leaf
        got = {
            k: LeafSpec(numpy_dtype_name(v.dtype, k), tuple(v.shape[td.batch_dims :]))
            for k, v in leaves.items()
        }
        if got != header.schema:
            bad = sorted(set(got) ^ set(header.schema)) or sorted(
                k for k in got if got[k] != header.schema[k]
            )
            raise ValueError(
                f"data does not match the stored schema at key(s) {bad}: stored schema "
                f"{describe_schema(header.schema)}, data schema {describe_schema(got)}; "
                "nothing was written"
            )
        tail = tuple(td.batch_size[1:])
        if tail != header.tail:
            raise ValueError(
                f"data batch dims {tuple(td.batch_size)} do not match the stored "
                f"[rows, *{list(header.tail)}]; nothing was written"
            )
        return leaves

    @_serialized
    def set(self, cursor, data, *, set_cursor: bool = True):
        self._set(cursor, data, set_cursor, rollback=True)

    @_serialized
    def _apply_remote_write(self, cursor, data, set_cursor: bool) -> None:
        """A worker proxy's ``set``, run by the pump thread; the proxy rolls back its own
        writers if this raises (this process's writers did not move)."""
        self._set(cursor, data, set_cursor, rollback=False)

    def _set(self, cursor, data, set_cursor: bool, rollback: bool) -> None:
        self._check_writable()
        if isinstance(data, list):
            data = _flip_list(data)
        is_int = isinstance(cursor, (int, np.integer)) or (
            isinstance(cursor, torch.Tensor) and cursor.ndim == 0
        )
        try:
            td = self._as_td(data, batched=not is_int)
        except ValueError:
            n = 1 if is_int else _rows_of_cursor(cursor)
            if rollback and set_cursor and n:  # the writer's cursor moves back: no hole
                rollback_writers(self._attached_entities, n, self._ring_capacity())
            raise
        if not is_int and td.batch_dims and td.shape[0] == 0:
            return  # an empty extend writes nothing (and initializes nothing)
        if is_int:
            td = td.unsqueeze(0)
            cursor = torch.tensor([int(cursor)])
        if self._header is None:
            try:
                header = self._infer_header(td[0])
            except ValueError:  # refused before anything exists: the writer moves back too
                if rollback and set_cursor and not isinstance(cursor, tuple):
                    rollback_writers(self._attached_entities, td.shape[0], self._ring_capacity())
                raise
            header.tensor_root = isinstance(data, torch.Tensor)
            self._setup(header, create=True)
            self._write_meta()
        if isinstance(cursor, tuple) and len(cursor) > 1:  # checked as whole rows
            return self._set_partial(cursor, td, set_cursor)
        try:
            leaves = self._validate(td)
        except ValueError:
            if rollback and set_cursor and not isinstance(cursor, tuple):
                rollback_writers(self._attached_entities, td.shape[0], self._ring_capacity())
            raise
        if isinstance(cursor, tuple) and len(cursor) > 1:
            return self._set_partial(cursor, td, set_cursor)
        if isinstance(cursor, tuple):
            cursor = cursor[0]
        if isinstance(cursor, slice):
            cursor = torch.arange(*cursor.indices(self._header.capacity or _UNBOUNDED))
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
        rows, reindex = self._rows_and_reindex(cursor)
        uniq, inv = torch.unique(rows, return_inverse=True)
        block = self._to_td(self._gather(uniq), self._batch_of(uniq.numel())).to("cpu")
        block[(inv.reshape(-1), *cursor[1:])] = td.reshape(-1).to("cpu")
        if self._item_batch:
            block.batch_size = block.batch_size[: self.ndim]
        self._write_rows(uniq, self._validate(block), append=False)
        self._bump_mutation_revision()
        self._maybe_commit()

    def _write_rows(self, rows: torch.Tensor, leaves: dict[str, torch.Tensor], append: bool):
        cap0 = self._header.capacity
        n = rows.numel()
        leaves = {k: v.detach().to("cpu") for k, v in leaves.items()}
        expected = self._wc + torch.arange(n)
        if cap0 is not None:
            expected = expected % cap0
        run = append and torch.equal(rows, expected)  # an append: consecutive rows
        if run:
            phys = self._base + self._wc + torch.arange(n)
            keep = n if cap0 is None else min(n, cap0)  # a batch larger than the ring
            phys, rows = phys[n - keep :], rows[n - keep :]
            leaves = {k: v[n - keep :] for k, v in leaves.items()}
            self._wc += n
            self._ensure_index_rows(int(rows.max()) + 1)
            ring_run = int(rows[-1]) - int(rows[0]) + 1 == rows.numel()  # no wrap-around
        else:
            ring_run = False
            self._land_writes(wait=True)  # rows of chunks being written ahead may change
            self._ensure_index_rows(int(rows.max()) + 1)
            phys = self._phys(rows)
            if int(phys.min()) < self._base + self._commit.write_count:
                self._inplace_pending = True
        self._grow_map_for(int(phys.max()))
        committed_end = self._base + self._commit.write_count
        R = self._header.chunk_rows
        # chunks that may hold data: committed rows, or rows this process already stored
        # past the commit; anything later is absent or a torn leftover of a crash: zeros
        stored_chunks = max(-(committed_end // -R), self._written_chunks)

        def loader(chunks: list[int]):
            stored = [c for c in chunks if c < stored_chunks]
            decoded = dict(zip(stored, self._load_chunks(stored)))
            return [decoded.get(c) for c in chunks]

        chunks = phys // R
        uniq = torch.unique(chunks)
        room = max(1, self._pool.max_slots // 2)
        if uniq.numel() + len(self._pool.dirty - self._write_ahead.in_flight) <= room:
            self._pool.write(phys, leaves, loader, run=run)
        else:  # more chunks than the cache holds: stage and write them group by group
            self._write_dirty()
            for group in uniq.split(room):
                mask = torch.isin(chunks, group)
                self._pool.write(phys[mask], {k: v[mask] for k, v in leaves.items()}, loader)
                self._write_dirty()
        at = slice(int(rows[0]), int(rows[0]) + rows.numel()) if ring_run else rows
        for k, t in self._index.items():
            t[at] = leaves[k]

    def _ensure_index_rows(self, n: int) -> None:
        for k, t in list(self._index.items()):
            if t.shape[0] < n:
                new = torch.zeros((max(n, 2 * t.shape[0]), *t.shape[1:]), dtype=t.dtype)
                new[: t.shape[0]] = t
                self._index[k] = new

    def _grow_map_for(self, max_phys: int) -> None:
        """Growing buffers: widen the chunk map (and the pool, for ``cache='ram'``)."""
        if self._header.capacity is not None:
            return
        R = self._header.chunk_rows
        span = max_phys // R - self._base // R + 2
        if self._cache == "ram" and span > self._pool.max_slots:
            self._pool.max_slots = max(span, 2 * self._pool.max_slots)
        if span > self._pool.map_size or self._pool.max_slots > self._pool.map_size:
            self._pool.remap(max(span, self._pool.max_slots, 2 * self._pool.map_size))

    def _ring_capacity(self) -> int | None:
        """Rows of the ring (``None`` for a growing store), known before the first write too."""
        if self._header is not None:
            return self._header.capacity
        return None if self._growing else self.max_size

    def _get_new_len(self, data, cursor):
        """TorchRL's length update (``+ numel``), bounded by the rows actually live: rewriting
        rows already stored with ``set_cursor=True`` does not count them twice (the commit record
        must never claim more rows than the store holds)."""
        numel = data.shape[: self.ndim].numel()
        self._len = min(self._len + numel, self.max_size, self._live_len(self._wc))

    def _live_len(self, wc: int) -> int:
        """Elements (rows × ``prod(tail)``) live after ``wc`` rows were written."""
        cap0 = self._header.capacity
        tail_n = max(1, math.prod(self._header.tail))
        return (wc if cap0 is None else min(wc, cap0)) * tail_n

    # ============================================================ durability
    def _maybe_commit(self) -> None:
        self._land_writes(wait=False)
        committed_end = self._base + self._commit.write_count
        staged_end = self._base + self._wc
        since = time.monotonic() - self._last_commit_time
        explicit = (
            self.flush_every_rows is not None
            and staged_end - committed_end >= self.flush_every_rows
        ) or (self.flush_every_seconds is not None and since >= self.flush_every_seconds)
        due = explicit or self._completed_chunks_due()
        # staged chunks not being written ahead (those are pinned until they land, at most
        # half the pool: _start_write_ahead waits for them beyond that)
        waiting = self._pool.dirty - self._write_ahead.in_flight
        pressure = len(waiting) >= max(1, self._pool.max_slots // 2)
        if due and not pressure and not self._inplace_pending:
            # completed chunks (rate-limited by min_commit_interval > 0): commit what the
            # background has written, never waiting for encoding
            ahead = not explicit and self.min_commit_interval > 0
            self._commit_whole_chunks(write_ahead=ahead)
        elif due or pressure:
            self._flush(self.commit_durability)
        else:
            self._start_write_ahead()

    def _start_write_ahead(self) -> None:
        """Starts encoding and storing the completed, staged chunks in the background
        (``buffers/write_ahead.py``): the next commit then finds them written (and, for
        ``durability="os"``, fsynced). No commit record is written here."""
        if self._inplace_pending:
            return
        R = self._header.chunk_rows
        head = (self._base + self._wc) // R
        codecs = self._chunk_codecs()
        if not all(codec.supported for codec in codecs.values()):
            return
        ahead = self._write_ahead.in_flight
        with self._pool.lock:
            chunks = sorted(c for c in self._pool.dirty - ahead if c < head)
        if not chunks:
            return
        _run_io(self._grow_arrays((chunks[-1] + 1) * R))
        half = max(1, self._pool.max_slots // 2)
        while self._write_ahead.in_flight and len(self._write_ahead.in_flight) + len(chunks) > half:
            self._land_writes(wait=self._write_ahead.batches - 1)  # back-pressure: the oldest
        committed_end = self._commit.base + self._commit.write_count
        fresh_from = -(committed_end // -R)
        # only chunks that hold no committed row: their seal entries are staged when they land
        # (before the commit that covers them); a rewrite of committed rows is written by the
        # commit itself, entries first
        chunks = [c for c in chunks if c >= fresh_from]
        if not chunks:
            return
        with self._pool.lock:
            items, tags = [], []
            for c in chunks:
                block = xor_rows.apply(self._pool.chunk_arrays(c), self._header.xor_previous)
                items += [(codecs[path], c, block[path]) for path in self._arrays]
                tags += list(self._arrays)
        self._write_ahead.submit(items, fresh_from, fsync=self.durability == "os", tags=tags)

    def _seal_entries(self, items: list[tuple[str, int, int]]) -> list:
        """Stages the seal entries of chunks ``(leaf, chunk, crc)`` written for the next commit;
        returns the writes of the seal chunks they touch (none for an unsealed store)."""
        if self._seals is None:
            return []
        table = self._seals.stage(
            items, self._commit, self._header.chunk_rows, _run_io, self._where
        )
        return put_objects(table)

    def _land_writes(self, wait: bool | int) -> None:
        """Marks the chunks of finished write-ahead batches clean (``wait``: see
        ``WriteAhead.land``); their unsynced files go to the store's log for the next durable
        commit."""
        landed: list[tuple[str, int, int]] = []
        try:
            written = self._write_ahead.land(wait, sync_log(self._group.store), landed)
        finally:
            if landed:  # entries before the commit covering them
                _run_io(self._seal_entries(landed))
        if written:
            self._written_chunks = max(self._written_chunks, written[-1] + 1)
            self._pool.mark_clean(written)

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
        R = self._header.chunk_rows
        pending = (self._base + self._wc) // R > (self._base + self._commit.write_count) // R
        return pending and time.monotonic() - self._last_commit_time >= self.min_commit_interval

    def _commit_whole_chunks(self, write_ahead: bool = False) -> None:
        """Automatic commit up to the last completed chunk: the partly filled head chunk stays
        staged, so it is written once when full instead of at every commit. ``write_ahead``:
        commit only up to the first chunk not written yet, and start writing the completed
        ones in the background (their commit comes at a later call, once they have landed)."""
        R = self._header.chunk_rows
        staged_end = self._base + self._wc
        head = staged_end // R
        if write_ahead:
            self._start_write_ahead()
            with self._pool.lock:
                head = min(head, *self._pool.dirty) if self._pool.dirty else head
            if head * R - self._base <= self._commit.write_count:
                return
        elif staged_end % R == 0 or head * R - self._base <= self._commit.write_count:
            self._flush(self.commit_durability)
            return
        wc = head * R - self._base
        length = min(self._len, self._live_len(wc))
        if not write_ahead:
            self._write_dirty(skip=head)
        self._publish(wc, max(length, self._commit.length), self.commit_durability)

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
            commit = self._commit.to_json()
        lock = self._sampler_locks.get(id(sampler))
        with lock or contextlib.nullcontext(), _naming_store(self._where):
            saved = sampler_state.save(self._group, sampler, commit)
        if saved is not None:
            self._sampler_saved[id(sampler)] = saved
        return saved is not None

    def load_sampler_state(self, sampler: Any) -> bool:
        """Restores ``sampler`` from the state stored with the store by a sampler of the same
        class; rows committed after that state was saved are announced to it
        (``sampler.extend``: new rows get the default priority). Returns whether a state was
        loaded."""
        if self._header is None:
            return False
        with _naming_store(self._where):
            meta = sampler_state.load(self._group, sampler, self._where, self._cap0 or self._wc)
        if meta is None:
            return False
        cap0 = self._header.capacity
        if meta["base"] == self._base and meta["write_count"] < self._wc:
            start = self._base + meta["write_count"]
            if cap0 is not None:
                start = max(start, self._base + self._wc - cap0)
            missed = self._pos_of_phys(torch.arange(start, self._base + self._wc))
            if missed.numel() and hasattr(sampler, "extend"):
                sampler.extend(missed)
        arrays: dict = {}
        doc = sampler_state.encode(sampler.state_dict(), arrays)
        self._sampler_saved[id(sampler)] = sampler_state.fingerprint(doc, arrays)
        return True

    def _save_attached_samplers(self) -> None:
        """``save_sampler_state`` for the attached buffers' samplers whose state changed since
        this storage last saved or loaded it (one sampler per store: the first buffer's)."""
        if self.read_only or self._closed or self._header is None:
            return
        for buffer in list(self._attached_entities):
            sampler = buffer_sampler(buffer)
            if sampler is None:
                continue
            with buffer_lock(buffer) or contextlib.nullcontext():
                arrays: dict = {}
                try:
                    doc = sampler_state.encode(sampler.state_dict(), arrays)
                except TypeError:
                    continue
                if self._sampler_saved.get(id(sampler)) == sampler_state.fingerprint(doc, arrays):
                    return
                self._sampler_locks[id(sampler)] = buffer_lock(buffer)
                self.save_sampler_state(sampler)
            return

    def _flush(self, durability: str) -> None:
        if self.read_only or self._closed or self._header is None:
            return
        self._check_owner_process()
        if not (
            self._pool.dirty
            or self._inplace_pending
            or (self._base, self._wc, self._len)
            != (self._commit.base, self._commit.write_count, self._commit.length)
            or (durability == "os" and _unsynced(self._group.store))  # an earlier cheap commit
        ):
            return
        self._write_dirty()
        self._publish(self._wc, self._len, durability)

    def _publish(self, write_count: int, length: int, durability: str) -> None:
        """The commit point: one atomic rewrite of the group attributes; ``durability="os"``
        fsyncs every file written since the last such commit, then the record."""
        if durability not in ("os", "process"):
            raise ValueError(f"durability must be 'os' or 'process', got {durability!r}")
        gc_below = self._gc_threshold()
        self._commit = Commit(
            revision=self._commit.revision + 1,
            base=self._base,
            write_count=write_count,
            length=length,
            extent=self._commit.extent,
            inplace_revision=self._commit.inplace_revision + int(self._inplace_pending),
            gc_below=gc_below,
            head=None
            if self._seals is None
            else self._seals.head(self._base + write_count, self._header.chunk_rows, self._commit),
        )
        self._write_meta(durable=durability == "os")
        if self._seals is not None:
            self._settle_seals()
        self._gc_history.append((time.monotonic(), self._live_start_committed()))
        self._inplace_pending = False
        self._last_commit_time = time.monotonic()
        self._collect_garbage(gc_below)

    def _settle_seals(self) -> None:
        """After a commit: in-place rewrites it counted accept only their new version; the
        writer forgets what it no longer caches (bounded memory)."""
        _run_io(put_objects(self._seals.settle()))
        R = self._header.chunk_rows
        head = (self._commit.base + self._commit.write_count) // R

        def keep(chunks: torch.Tensor) -> torch.Tensor:
            return (self._pool.slots_of(chunks) >= 0) | (chunks >= head - 1)

        self._seals.forget(keep)

    def _gc_threshold(self) -> int:
        """Physical row below which chunks may be deleted: the live start of the newest commit
        at least ``gc_grace_seconds`` old, so readers that lag less than that never miss a row."""
        horizon = time.monotonic() - self.gc_grace_seconds
        below = self._commit.gc_below
        while self._gc_history and self._gc_history[0][0] <= horizon:
            below = max(below, self._gc_history.popleft()[1])
        return below

    def _write_dirty(self, skip: int | None = None) -> None:
        """Data half of a commit: encodes every staged chunk but ``skip`` (whole chunks, the
        arrays' own codec chain) and stores them, with any array resize, in one concurrent
        event-loop call (no commit record); chunks being written ahead in the background are
        left to it, and waited for."""
        ahead = self._write_ahead.in_flight  # the background writes them meanwhile
        try:
            self._write_staged(skip, ahead)
        finally:
            self._land_writes(wait=True)

    def _write_staged(self, skip: int | None, ahead: frozenset[int]) -> None:
        """``_write_dirty`` of the staged chunks not in ``ahead``."""
        R = self._header.chunk_rows
        with self._pool.lock:
            dirty = sorted(c for c in self._pool.dirty if c != skip and c not in ahead)
            if not dirty:
                return
            io = self._grow_arrays((dirty[-1] + 1) * R)
            codecs = self._chunk_codecs()
            fallback = []
            encoded = []
            sealed = []
            for c in dirty:
                block = xor_rows.apply(self._pool.chunk_arrays(c), self._header.xor_previous)
                for path, arr in self._arrays.items():
                    codec = codecs[path]
                    if codec.supported:
                        encoded.append((codec, c, codec.encode(block[path])))
                        sealed.append((path, c, data_crc(encoded[-1][2])))
                    else:
                        fallback.append((arr, slice(c * R, (c + 1) * R), block[path]))
            if self._seals is not None and sealed:  # entries before their chunks (crash-safe)
                _run_io(io + self._seal_entries(sealed))
                io = []
            committed_end = self._commit.base + self._commit.write_count  # as published
            io += store_chunks(encoded, fresh_from=-(committed_end // -R))
            io += [zarr_compat.async_array(arr).setitem(sel, value) for arr, sel, value in fallback]
            _run_io(io)
            self._written_chunks = max(self._written_chunks, dirty[-1] + 1)
            self._pool.mark_clean(dirty)

    def _grow_arrays(self, end_rows: int) -> list:
        """Resizes every array (metadata only, geometrically) to hold ``end_rows`` physical
        rows; returns coroutines for non-local stores."""
        io: list = []
        if end_rows > self._commit.extent:
            extent = max(end_rows, 2 * self._commit.extent)
            for arr in self._arrays.values():  # metadata only: no chunk is touched
                io += grow_array(arr, extent)
            if self._seals is not None:
                io += grow_array(self._seals.array, seal_rows(extent, self._header.chunk_rows))
            self._commit.extent = extent
        return io

    def _chunk_codecs(self) -> dict[str, ChunkCodec]:
        """Whole-chunk codecs of the current arrays (rebuilt when the arrays are reloaded)."""
        cached = getattr(self, "_codecs", None)
        if cached is None or cached[0] is not self._arrays:
            cached = (self._arrays, {p: ChunkCodec(a) for p, a in self._arrays.items()})
            self._codecs = cached
        return cached[1]

    def _live_start_committed(self) -> int:
        cap0 = self._header.capacity
        c = self._commit
        if cap0 is None:
            return c.base
        return c.base + max(0, c.write_count - cap0)

    def _collect_garbage(self, gc_below: int) -> None:
        """Deletes the chunks wholly below ``gc_below`` (published in the commit record)."""
        R = self._header.chunk_rows
        dead_below = gc_below // R
        first = getattr(self, "_gc_done", 0)
        if dead_below <= first:
            return
        codecs = self._chunk_codecs()
        dead = []
        for c in range(first, dead_below):
            self._pool.evict(c)
            dead += [(codecs[p], c) for p, arr in self._arrays.items() if c * R < arr.shape[0]]
        if self._seals is not None:  # seal chunks whose data chunks are all dead
            gone = range(first // SEAL_CHUNK, dead_below // SEAL_CHUNK)
            self._seals.discard(gone)
            dead += [(self._seals.codec, k) for k in gone]
        _run_io(drop_chunks(dead))  # absent chunks read back as the fill value 0
        self._gc_done = dead_below

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
        self._write_ahead.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
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
        self._last_refresh = time.monotonic()
        group = self._group_fresh()
        header, commit = read_attrs(group, self._where)
        if header is None:
            return False
        if self._header is None:
            self._group = group
            self._read_layout_extras(group.attrs.asdict()["zarrl"], header)
            self._setup(header)
            self._adopt_fresh(commit)
            return True
        if commit.revision == self._commit.revision:
            return False
        old = self._commit
        full = (
            commit.inplace_revision != old.inplace_revision
            or commit.base != old.base
            or (
                header.capacity is not None
                and commit.write_count - old.write_count >= header.capacity
            )
        )
        if commit.extent != old.extent:  # the writer resized the arrays: reload their metadata
            self._group = group
            self._arrays = {path: group[path] for path in self._header.schema}
        try:
            self._adopt_commit(commit, full=full, since=old)
        except _StaleRead:
            self._adopt_fresh(commit)
        return True

    def _maybe_auto_refresh(self) -> None:
        if (
            self.read_only
            and self.refresh_every_seconds is not None
            and time.monotonic() - self._last_refresh >= self.refresh_every_seconds
        ):
            self.refresh()

    def _adopt_commit(self, commit: Commit, full: bool, since: Commit | None = None) -> None:
        """Makes ``commit`` the visible state: lengths, cursor, RAM index columns."""
        R = self._header.chunk_rows
        with self._pool.lock:
            if full:
                self._pool.drop_clean()
            elif since is not None:
                self._pool.evict((since.base + since.write_count) // R)  # old head chunk
        self._commit = commit
        self._base, self._wc = commit.base, commit.write_count
        self._len = commit.length
        self._gc_done = commit.gc_below // R
        self._grow_map_for(self._base + self._wc)
        cap0 = self._header.capacity
        if self._wc:
            self._set_last_cursor((self._wc - 1) % cap0 if cap0 else self._wc - 1)
        start, end = self._live_phys_range()
        if since is not None and not full:
            start = max(start, since.base + since.write_count)
        if self._index and end > start:
            self._ensure_index_rows(self._len0())
            pos = self._pos_of_phys(torch.arange(start, end))
            if self._seals is not None:  # through the chunk checks (seals)
                for path, values in self._read_rows(list(self._index), start, end).items():
                    self._index[path][pos] = values
            else:
                for path in self._index:
                    try:
                        rows = self._arrays[path][start:end]
                    except Exception as err:
                        raise CorruptChunkError(
                            f"{self._where}: array {path!r}, rows {start}:{end} could not be "
                            f"decoded or failed its crc32c checksum: {err}"
                        ) from err
                    self._index[path][pos] = torch.from_numpy(np.ascontiguousarray(rows))
        self._bump_mutation_revision()

    def _read_rows(self, paths: list[str], start: int, end: int) -> dict[str, torch.Tensor]:
        """Physical rows ``[start, end)`` of ``paths`` (not XORed) through ``_load_chunks``,
        64 chunks at a time: ``{path: [end - start, *tail, *shape]}``."""
        R = self._header.chunk_rows
        parts: dict[str, list[np.ndarray]] = {p: [] for p in paths}
        chunks = list(range(start // R, -(end // -R)))
        for i in range(0, len(chunks), 64):
            group = chunks[i : i + 64]
            for c, arrays in zip(group, self._load_chunks(group, paths)):
                lo, hi = max(start, c * R) - c * R, min(end, (c + 1) * R) - c * R
                for p in paths:
                    parts[p].append(arrays[p][lo:hi])
        return {p: torch.from_numpy(np.concatenate(v)) for p, v in parts.items()}

    # ============================================================ TorchRL API
    def attach(self, buffer: Any) -> None:
        """Also hands the committed ring cursor to the buffer's round-robin writer, so a buffer
        built on a reopened storage keeps appending where the previous run stopped, and
        restores its sampler's state stored with the store (``load_sampler_state``)."""
        super().attach(buffer)
        if self._header is None or self._wc == 0:
            return
        writer = buffer.__dict__.get("_writer")
        if writer is not None:
            self._sync_writer(writer)
            return
        init = getattr(buffer, "_init_writer", None) or RoundRobinWriter
        if isinstance(init, Writer):
            self._sync_writer(init)
        elif callable(init) and hasattr(buffer, "_init_writer"):
            buffer._init_writer = lambda: self._sync_writer(init())
        after_sampler_init(buffer, self.load_sampler_state)  # the state stored with the store

    def _sync_writer(self, writer):
        if isinstance(writer, RoundRobinWriter) and writer._write_count == 0:
            cap0 = self._header.capacity
            writer._cursor = self._wc % cap0 if cap0 else self._wc
            writer._write_count = self._wc
        return writer

    @_serialized
    def _empty(self) -> None:
        self._check_writable()
        if self._header is not None:
            self._land_writes(wait=True)
            R = self._header.chunk_rows
            with self._pool.lock:
                self._pool.dirty.clear()
                self._pool.drop_clean()
            self._base = -(-(self._base + self._wc) // R) * R
            self._wc = 0
            for t in self._index.values():
                t.zero_()
            self._inplace_pending = True
        self._len = 0
        self._bump_mutation_revision()
        if self._header is not None:
            self._flush(self.durability)

    @_names_store
    def state_dict(self) -> dict[str, Any]:
        """Metadata only: where the data is (``store``: a path or a store object) and which
        commit it is at; the rows stay in the store."""
        self.flush()
        return {
            "path": self._where,
            "store": pickling.reference(self)["store"],
            "initialized": self._header is not None,
            "_len": self._len,
            "commit": self._commit.to_json(),
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
        if source_key != pickling.store_key(self._group.store):
            self._check_writable()
            src = self._open_group(source, "r")
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
        if (want.base, want.write_count) != (self._commit.base, self._commit.write_count):
            raise ValueError(
                f"{self._where} is at commit base={self._commit.base}, "
                f"write_count={self._commit.write_count} but the state dict expects base="
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
                dest = object_store.open_store(path, self._init_options["storage_options"])
            else:
                dest = zarr.storage.LocalStore(os.fspath(path))
            _copy_store(self._group.store, dest)
            return
        if self._header is None:
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
        src = self._open_group(path, "r")
        read_attrs(src, str(path))
        hooks = load_hooks(self)
        if not hooks:
            self._replace_content(src)
            return
        saved = type(self).open(path, mode="r")
        data = saved.get(torch.arange(saved._len0())) if saved._header is not None else None
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
        if self._header is not None:
            self._land_writes(wait=True)
        _clear_store(self._group.store)
        _copy_store(src.store, self._group.store)
        self._written_chunks = 0  # nothing past the loaded commit is ours
        self._group = zarr.open_group(self._group.store, mode="a", zarr_format=3)
        object_store.pin(self._group)  # the copied commit record is the one we replace next
        header, commit = read_attrs(self._group, self._where)
        self._header = None
        if header is not None:
            self._read_layout_extras(self._group.attrs.asdict()["zarrl"], header)
            self._setup(header)
            self._adopt_commit(commit, full=True)
        else:
            self._commit, self._base, self._wc, self._len = commit, 0, 0, 0
            self.initialized = False

    def _sync_attached_writers(self) -> None:
        """Round-robin writers of the attached buffers continue after the stored rows."""
        for buffer in self._attached_entities:
            writer = buffer.__dict__.get("_writer")
            if isinstance(writer, RoundRobinWriter):
                writer._write_count = 0
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
            "_growing": self._growing,
            "_tail": tuple(self._header.tail) if self._header is not None else None,
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
                _copy_store(self._group.store, zarr.storage.LocalStore(str(dest)))
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
            f"{None if self._growing else self.max_size}, ndim={self.ndim}, "
            f"mode={'r' if self.read_only else 'r+'}{reopened})"
        )


class _StorageView(TensorDict):
    """``storage[:]`` of a writable ``ZarrStorage``: ``view[index] = td`` writes the rows into
    the storage (TorchRL routes ``rb[i, j] = td`` through ``storage[:][i, j] = td``); assigning a
    whole key is refused instead of changing a copy."""

    def __setitem__(self, index, value) -> None:
        ref = self.__dict__.get("_zarrl_storage")
        storage = ref() if ref is not None else None
        if storage is None:
            return super().__setitem__(index, value)
        if isinstance(index, str) or (
            isinstance(index, tuple) and index and all(isinstance(i, str) for i in index)
        ):
            raise TypeError(
                f"{storage._where}: assigning the key {index!r} of storage[:] would only change "
                "a copy; write rows instead (rb[index] = td with every stored key)"
            )
        if self.__dict__.get("_zarrl_swapped"):  # a transposed view (buffers with dim_extend=1)
            if isinstance(index, tuple) and len(index) == 2:
                index = index[::-1]
            elif not isinstance(index, tuple):
                index = (slice(None), index)
            if is_tensor_collection(value) and value.batch_dims >= 2:
                value = value.transpose(0, 1)
        storage.set(index, value, set_cursor=False)

    def transpose(self, dim0: int, dim1: int) -> TensorDictBase:
        out = super().transpose(dim0, dim1)
        ref = self.__dict__.get("_zarrl_storage")
        if ref is None or self.batch_dims != 2 or {dim0 % 2, dim1 % 2} != {0, 1}:
            return out
        out.__class__ = _StorageView
        out._zarrl_storage = ref
        out._zarrl_swapped = not self.__dict__.get("_zarrl_swapped", False)
        return out


def _stored_leaves(td: TensorDictBase) -> list[tuple[Any, Any]]:
    """``(key, leaf)`` of every leaf of ``td``, non-tensor leaves included (so they are refused
    by name instead of dropped); raises for a ragged lazy stack or a reserved leaf name."""
    try:
        items = list(td.items(include_nested=True, leaves_only=True, is_leaf=_is_leaf_nontensor))
    except RuntimeError as err:
        if isinstance(td, LazyStackedTensorDict):
            raise ValueError(
                "ZarrStorage cannot store a ragged lazy stack (its elements' leaves differ in "
                "shape): pad them to one shape first with zarrl.buffers.pad_sequences (and "
                "unpad after sampling), or use torchrl's LazyStackStorage; "
                f"stacking failed with: {err}"
            ) from err
        raise
    for key, _ in items:
        parts = (key,) if isinstance(key, str) else tuple(key)
        if any(part in _RESERVED_NAMES for part in parts):
            raise ValueError(
                f"key {key!r}: {sorted(_RESERVED_NAMES)} are zarr metadata names and cannot be "
                "leaf names; rename the leaf"
            )
    return items


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
        or storage._closed
        or storage.read_only
        or storage._owner_pid != os.getpid()  # a forked child: the store is its parent's
    ):
        return
    try:
        storage.flush()
    except Exception as err:  # the store may be gone (temporary directories) at exit
        print(f"zarrl: could not flush {storage._where} at exit: {err}", file=sys.stderr)


def _nested_td(leaves: Mapping[str, torch.Tensor], batch: torch.Size, device) -> TensorDict:
    """TensorDict from ``{"next/obs": tensor}`` leaves, without per-key validation (the leaves
    come from the store's own schema, already checked)."""
    return _build_td(path_tree(tuple(leaves)), leaves, batch, device)


def _build_td(node: dict, leaves: Mapping[str, torch.Tensor], batch, device) -> TensorDict:
    """One level of ``_nested_td``. A module function, not a recursive closure: such a closure
    is a reference cycle holding ``leaves`` (a whole batch) until the cyclic GC runs."""
    source = {
        k: _build_td(v, leaves, batch, device) if isinstance(v, dict) else leaves[v]
        for k, v in node.items()
    }
    return td_from_leaves(source, batch, device)


def _unsynced(store) -> bool:
    """Whether files written into a local ``store`` still wait for a durable commit's fsync."""
    log = sync_log(store)
    return bool(log)


def _run_io(coroutines: list, return_exceptions: bool = False) -> list:
    """Runs zarr array coroutines concurrently on zarr's event loop (one round trip)."""
    from zarr.core.sync import sync

    async def gather():
        return await asyncio.gather(*coroutines, return_exceptions=return_exceptions)

    return sync(gather()) if coroutines else []


def _copy_store(src, dst) -> None:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    async def copy():
        proto = default_buffer_prototype()
        async for key in src.list():
            buf = await src.get(key, prototype=proto)
            if buf is not None:
                await dst.set(key, buf)

    sync(copy())


def _write_new_store(path, data: TensorDictBase, ndim: int) -> None:
    """A new zarrl store at ``path`` holding the rows of ``data`` (``[rows, ...]``); an
    existing zarrl store there is replaced, anything else is refused."""
    path = os.fspath(path)
    if os.path.exists(path) and os.listdir(path):
        existing = ZarrStorage._open_group(path, "r")
        read_attrs(existing, path)  # refuses a directory that is not a zarrl store
        _clear_store(zarr.storage.LocalStore(path))
    with ZarrStorage(None, path=path, ndim=ndim) as dest:
        dest.set(torch.arange(data.shape[0]), data)


def _clear_store(store) -> None:
    from zarr.core.sync import sync

    sync(store.clear())
