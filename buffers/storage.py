"""``ZarrStorage``: a durable, compressed TorchRL replay storage on a Zarr v3 group.

A drop-in for ``LazyMemmapStorage``: ``ReplayBuffer(storage=ZarrStorage(1_000_000, path=...))``.
Writes are staged in a RAM chunk pool and committed data-first, metadata-last (see
``buffers/format.py`` and ``docs/storage_format.md``); reads gather from the pool, which either
mirrors the whole buffer (``cache="ram"``, optionally on a GPU via ``cache_device``) or keeps a
bounded number of decoded chunks (``cache=<bytes>``). Small per-row columns (trajectory ids,
done flags, rewards: the *index columns*) are always mirrored in RAM by ring position.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
import zarr
import zarr.abc.store
from tensordict import TensorDictBase
from torchrl.data.replay_buffers.storages import TensorStorage

from . import bulk_append, checkpointer, pickling
from ._compat_torchrl import (
    MAX_SIZE_UNBOUNDED,
    attached_buffers,
    set_attached_buffers,
)
from .assembly import assemble, check_arguments, stored_shape
from .format import Commit, Header, key_path
from .guard import names_store, register_exit_flush, serialized
from .lazy_view import writable_view
from .ring import Ring
from .round_robin import attach_buffer, restart_writers, rollback_writers
from .row_writer import Layout
from .worker_proxy import WriteChannel, new_proxy, proxy_state

_log = logging.getLogger("zarrl.buffers")


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
        chunk_rows: rows (along dim 0) per chunk; default: the power of two between 1 and 65536
            that makes a chunk of all leaves 4 to 8 MiB (fewer, larger files make durable
            extends faster).
        compressors: zarr bytes-to-bytes codecs for every leaf; default per dtype
            (``buffers/codecs.py``: Blosc zstd for floats, after their row-delta filters, Blosc
            LZ4 otherwise); or ``{leaf path: codecs}``: those leaves' whole chain (no filter),
            the others' default; a crc32c checksum is always appended.
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
        mirror_index: ``False`` keeps no RAM mirror of the index keys in this storage object:
            for a writer that only appends (an import), which then neither reloads the
            stored index columns when it opens nor copies every appended row into RAM;
            samplers still work, reading those leaves through the chunk cache instead. The
            stored ``index_keys`` (what readers mirror) are unchanged.
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
        compressors: list | Mapping[str, list] | None = None,
        cache: None | str | int = None,
        cache_device: torch.device | str | None = None,
        flush_every_rows: int | None = None,
        flush_every_seconds: float | None = None,
        min_commit_interval: float = 0.1,
        index_keys: list | None = None,
        mirror_index: bool = True,
        refresh_every_seconds: float | None = None,
        gc_grace_seconds: float = 10.0,
        dedupe_next: bool = False,
        storage_options: dict[str, Any] | None = None,
        shared_init: bool = False,
        _mode: str = "w",
    ) -> None:
        check_arguments(max_size, chunk_rows, cache, shared_init)
        super().__init__(
            storage=None,
            max_size=MAX_SIZE_UNBOUNDED if max_size is None else int(max_size),
            device=device,
            ndim=ndim,
        )
        self.read_only = _mode == "r"
        self.existsok = existsok
        self.cache_device = torch.device(cache_device) if cache_device else self.device
        self.flush_every_rows = flush_every_rows
        self.flush_every_seconds = flush_every_seconds
        self.min_commit_interval = min_commit_interval
        self.refresh_every_seconds = refresh_every_seconds
        self.gc_grace_seconds = gc_grace_seconds
        self.dedupe_next = dedupe_next
        self.index_keys_arg = None if index_keys is None else [key_path(k) for k in index_keys]
        # the path (a temporary store for none) and the options a pickle reopens it with
        self.origin = pickling.Origin.of(self, path, _mode, locals())
        path = self.origin.location
        self._channel: WriteChannel | None = None  # created when sent to a worker process
        self.rows_at_open = 0
        self.ring = Ring(max_size)  # capacity, base and write count (``buffers/ring.py``)
        parts, commit = assemble(  # the parts, each owning its state (``buffers/assembly.py``)
            self,
            self.ring,
            path,
            _mode,
            storage_options=storage_options,
            layout=Layout(ndim, chunk_rows, self.index_keys_arg, dedupe_next),
            compressors=compressors,
            cache=cache,
            cache_device=self.cache_device,
            device=self.device,
            existsok=existsok,
            setup=self._setup,
            mirror_index=mirror_index,
        )
        for name, part in vars(parts).items():
            setattr(self, name, part)
        if commit is not None:
            self.initialized = True
            self._adopted(commit)
        if self.log.header is not None:
            self.rows_at_open = len(self)
            _log.info("zarrl: %s already holds %d rows (reopened)", self.where, len(self))
        if not self.read_only:
            pickling.register_writer(self)
            if not self.origin.temporary:
                register_exit_flush(self)

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
        ``flush_every_seconds``, ``min_commit_interval``, ``refresh_every_seconds``,
        ``mirror_index``.
        """
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        max_size, ndim = stored_shape(path, storage_options)
        return cls(
            max_size,
            path=path,
            ndim=ndim,
            device=device,
            existsok=True,
            _mode=mode,
            storage_options=storage_options,
            **cache_options,
        )

    # ============================================================ identity
    @property
    def where(self) -> str:
        """The store as named in messages: its path, or the store object's ``repr``."""
        return self.origin.where

    @property
    def store(self) -> zarr.abc.store.Store:
        """The zarr store holding the rows."""
        return self.log.store

    @property
    def location(self) -> str | os.PathLike | zarr.abc.store.Store:
        """The ``path`` this storage was built with (a temporary directory when none was)."""
        return self.origin.location

    @property
    def init_options(self) -> dict[str, Any]:
        """Keyword arguments a pickle or a deepcopy reopens the store with (a copy)."""
        return dict(self.origin.init_options)

    @property
    def closed(self) -> bool:
        return self.guard.closed

    @property
    def worker_channel(self) -> WriteChannel | None:
        """The channel worker processes write through (``None`` until sent to one)."""
        return self._channel

    @property
    def is_ram_mirror(self) -> bool:
        """Whether every live chunk fits in the pool (no eviction ever needed)."""
        return self.hot.is_mirror

    @property
    def _total_shape(self):
        if self.log.header is None:
            return None
        cap0 = self.ring.capacity
        return torch.Size([self._len0() if cap0 is None else cap0, *self.log.header.tail])

    def _setup(self, header: Header, create: bool = False) -> None:
        """Builds arrays (when ``create``), the chunk pool and the RAM index for ``header``."""
        self.reader.setup(header, create)
        self.initialized = True

    def _len0(self) -> int:
        """Live rows along dim 0."""
        return self.ring.rows_of(self._len)

    # ================================================================== reads
    def read(self, rows: torch.Tensor, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Leaves ``keys`` (paths such as ``"next/obs"``; default: all) at ring positions
        ``rows`` (int64 ``[N]``, not checked against the length) as ``{path: [N, *tail,
        *shape]}`` on ``device``: the narrow read under ``get``, without building a
        TensorDict. Raises ``StaleRead`` when a reader should ``refresh()`` first."""
        with self.guard.lock, self.guard.naming():
            if self.log.header is None:
                raise RuntimeError("Cannot get elements out of a non-initialized storage.")
            return self.gatherer.gather(rows, keys)

    def attach_columns(
        self, columns: Mapping[Any, torch.Tensor | Callable[[], torch.Tensor]]
    ) -> None:
        """Serves RAM leaves that are not stored (``{key: [rows, ...]}`` by ring position,
        e.g. values the owner derives from its own tables) with the stored ones in every read
        (``get``, ``storage[:]``, ``read``), so TorchRL's samplers find them as stored keys. A
        value may be a callable returning the column, called when the column is first read
        (nothing is computed for a reader that never reads it). Read-only storages only; each
        column covers the live rows; a later call replaces them all (after a ``refresh`` that
        adds rows, attach longer ones)."""
        with self.guard.lock, self.guard.naming():
            if not self.read_only:
                raise ValueError(f"{self.where}: only a read-only storage takes attached columns")
            if self.log.header is None:
                raise RuntimeError(f"{self.where}: no layout yet (no row was ever written)")
            n = self._len0()
            attached = {}
            for key, column in columns.items():
                path = key_path(key)
                if path in self.log.header.schema:
                    raise ValueError(f"{self.where}: {path!r} is a stored leaf, not attachable")
                if not callable(column) and (
                    not isinstance(column, torch.Tensor) or column.ndim < 1 or len(column) < n
                ):
                    raise ValueError(
                        f"{self.where}: the attached column {path!r} must be a tensor of at "
                        f"least {n} rows (the live rows), or a callable returning one"
                    )
                attached[path] = column
            self.index.attach(attached, n)
            self._bump_mutation_revision()

    @serialized
    def get(self, index) -> TensorDictBase | torch.Tensor:
        if self.log.header is None:
            raise RuntimeError("Cannot get elements out of a non-initialized storage.")
        self._maybe_auto_refresh()
        if self.gatherer.is_full_view(index, self.ndim):
            view = self.gatherer.lazy(None, self._len0(), self.read)  # index columns: RAM views
            # writes into a writer's view reach the store (``rb[0, 3:4] = td``)
            return view if self.read_only else writable_view(view, self)
        return self.gatherer.get(index, self._len0(), self.refresh)

    @serialized
    def __getitem__(self, index) -> TensorDictBase | torch.Tensor:
        """``storage[index]`` (what samplers use to read flags): the RAM index columns are
        gathered at once, other leaves only when first looked up (``get`` stays eager)."""
        view = self.gatherer.lookup(index, self._len0(), self.ndim, self.read)
        return self.get(index) if view is None else view

    def _rand_given_ndim(self, batch_size: int):
        return self.draw_positions(batch_size)

    def draw_positions(self, batch_size: int) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``batch_size`` uniform positions (int64 ``[batch_size]``, one per batch dim when
        ``ndim > 1``) on ``device``: what TorchRL's samplers draw; when the buffer exceeds the
        cache, uniform over the cached rows (requesting the next refill first)."""
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
            self.committer.commit_deferred(self._len)
            earned = rows * self.refill_ratio
            self.hot.refill(earned, self._len0(), self.chunk_writer.in_place_pending, self._rng)

    # ================================================================= writes
    @serialized
    def set(self, cursor, data, *, set_cursor: bool = True):
        self._set(cursor, data, set_cursor, rollback=True)

    @serialized
    def apply_worker_write(self, cursor, data, set_cursor: bool) -> None:
        """A worker proxy's ``set`` (``buffers/worker_proxy.py``), run by the pump thread; the
        proxy rolls back its own writers if this raises (this process's writers did not
        move)."""
        self._set(cursor, data, set_cursor, rollback=False)

    def _set(self, cursor, data, set_cursor: bool, rollback: bool) -> None:
        def refused(rows: int) -> None:  # the writers' cursor moves back: no hole
            rollback_writers(attached_buffers(self), rows, self.ring.capacity)

        written = self.rows.write(
            cursor,
            data,
            append=set_cursor,
            length=self._len,
            on_refusal=refused if rollback and set_cursor else None,
        )
        if written is None:
            return
        if set_cursor and written.cursor is not None:  # bounded by the live rows: rewriting
            # rows already stored with set_cursor=True does not count them twice
            self._set_last_cursor(written.cursor)
            self._len = min(self._len + written.elements, self.max_size, self.ring.live_len())
        self._bump_mutation_revision()
        self.committer.after_write(self._len)

    @serialized
    def append_chunks(self, data: TensorDictBase, rows: int | None = None) -> None:
        """Bulk append of a growing storage (``max_size=None``): the rows of ``data`` (a
        TensorDict ``[k * chunk_rows]`` of the stored schema) become ``k`` whole chunks at the
        end, whose ring end must be a chunk boundary. The chunks are encoded, written and
        fsynced in the background straight from ``data`` (no staging in the chunk pool); the
        rows count from the next commit (``flush``) on, as those of ``set``
        (``buffers/bulk_append.py``; ``BulkAppender`` takes rows in pieces of any size).
        ``rows``: only the first ``rows`` count (the last chunk partly filled, zeros after)."""
        if bulk_append.append_chunks(self, data, rows):
            self._set_last_cursor(self.ring.cursor())
            self._len = self.ring.live_len()
            self._bump_mutation_revision()

    # ============================================================ durability
    def flush(self) -> None:
        """Writes every staged chunk, then publishes the commit record (the commit point),
        durable as ``durability`` says; then saves the state of the attached buffers'
        samplers with the store when it changed (``save_sampler_state``)."""
        with self.guard.lock, self.guard.naming():
            self.committer.flush(self.durability, self._len)
        self.samplers.save_attached(attached_buffers(self))

    # ========================================================= sampler state
    def save_sampler_state(self, sampler: Any) -> bool:
        """Stores ``sampler.state_dict()`` in the store (``<store>/.zarrl_sampler``: arrays and
        attributes, see ``buffers/sampler_state.py``), e.g. the priorities of a
        ``PrioritizedSampler`` or the cursor of a ``SamplerWithoutReplacement``. ``flush()``,
        ``close()`` and checkpoints do it for the samplers of the attached buffers; a buffer
        built on the reopened store gets it back (``attach``). Returns whether it was saved
        (a state holding values other than tensors, trees and scalars is not)."""
        return self.samplers.save(sampler)

    @names_store
    def load_sampler_state(self, sampler: Any) -> bool:
        """Restores ``sampler`` from the state stored with the store by a sampler of the same
        class; rows committed after that state was saved are announced to it
        (``sampler.extend``: new rows get the default priority). Returns whether a state was
        loaded."""
        return self.samplers.load(sampler)

    @names_store
    def close(self) -> None:
        """Flushes and releases the background threads; the storage cannot be used afterwards
        (worker proxies still waiting get an error)."""
        self._shut(commit=True)

    @names_store
    def abandon(self) -> None:
        """Closes without committing: the rows appended since the last commit are dropped,
        as if the process had been killed (chunk files already written past the commit stay
        uncounted; the next appends overwrite them). The store keeps its last commit."""
        self._shut(commit=False)

    def _shut(self, commit: bool) -> None:
        """``close`` (``commit``: the attached samplers' state saved, then a flush) or
        ``abandon``: the background threads released, the storage unusable afterwards."""
        if self.closed:
            return
        if self._channel is not None:  # outside the lock: the pump may be applying a write
            self._channel.stop()
        persistent = not self.origin.temporary
        if commit and persistent and not self.read_only:  # buffer locks before ours
            self.samplers.save_attached(attached_buffers(self))
        with self.guard.lock:
            if self.closed:
                return
            if commit and persistent:
                self.committer.flush(self.durability, self._len)
            self.chunk_writer.close()
            self.hot.close()
            self.guard.closed = True
            if not self.read_only:
                pickling.unregister_writer(self)
            if not persistent:  # a temporary store (no path given): removed
                self.origin.release()

    def __enter__(self) -> ZarrStorage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ========================================================== concurrency
    @serialized
    def refresh(self) -> bool:
        """Re-reads the commit record; returns whether new data became visible."""
        commit = self.reader.refresh()
        if commit is not None:
            self.initialized = True
            self._adopted(commit)
        return commit is not None

    def _maybe_auto_refresh(self) -> None:
        if self.read_only and self.reader.due(self.refresh_every_seconds):
            self.refresh()

    def _adopted(self, commit: Commit) -> None:
        """TorchRL's bookkeeping of an adopted ``commit``: length, last cursor, revision."""
        self._len = commit.length
        if self.ring.write_count:
            self._set_last_cursor(self.ring.cursor())
        self._bump_mutation_revision()

    def _adopt_content(self, header: Header | None, commit: Commit) -> None:
        """The store's content was replaced (``checkpointer.replace_content``): its commit
        becomes the visible state (no rows when ``header`` is ``None``)."""
        if header is None:
            self._len, self.initialized = 0, False
            return
        self._setup(header)
        self.reader.adopt(commit, full=True)
        self._adopted(commit)

    # ============================================================ TorchRL API
    def attach(self, buffer: Any) -> None:
        """Also hands the committed ring cursor to the buffer's round-robin writer, so a buffer
        built on a reopened storage keeps appending where the previous run stopped, and
        restores its sampler's state stored with the store (``load_sampler_state``)."""
        super().attach(buffer)
        if self.log.header is not None:
            attach_buffer(buffer, self.ring, self.load_sampler_state)

    @serialized
    def _empty(self) -> None:
        self.guard.check_writable()
        self.rows.clear()
        self._len = 0
        self._bump_mutation_revision()
        if self.log.header is not None:
            self.committer.flush(self.durability, self._len)

    @names_store
    def state_dict(self) -> dict[str, Any]:
        """Metadata only: where the data is (``store``: a path or a store object) and which
        commit it is at; the rows stay in the store (``buffers/checkpointer.py``)."""
        return checkpointer.state_dict(self)

    @names_store
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Loads a ``state_dict``: of this store, it checks the store is at the recorded
        commit; of another store (a freshly built storage), it replaces this storage's content
        with a copy of that store, which must still be at the recorded commit."""
        self._len = checkpointer.load_state_dict(self, state_dict, self._adopt_content)
        self._bump_mutation_revision()

    @names_store
    def dumps(self, path) -> None:
        """Checkpoint: flush, then copy the whole store (any zarr store) to ``path``. With save
        hooks (``rb.register_save_hook``), ``path`` gets a new store holding what the hooks
        return for the live rows (``[len along dim 0, ...]``, position order) instead."""
        checkpointer.dumps(self, path)

    @names_store
    def loads(self, path) -> None:
        """Replaces this storage's content with the store checkpointed at ``path``; with load
        hooks (``rb.register_load_hook``), with what they return for its rows."""
        data = checkpointer.loads(self, path, self._adopt_content)
        if data is None:
            return
        self._empty()
        self.set(torch.arange(data.shape[0]), data)
        restart_writers(attached_buffers(self), self.ring)  # continue after the rows

    # ============================================================ pickling
    def __reduce__(self):
        """Sent to a process that ``multiprocessing`` is starting (the workers of
        ``MultiSyncCollector``/``MultiAsyncCollector``), the storage becomes a
        ``ZarrWriterProxy`` there: its writes are applied by this process, which keeps the store
        (``buffers/worker_proxy.py``). Any other pickle is a reference to the store, reopened
        on load (``buffers/pickling.py``); a writable storage is flushed first."""
        if not pickling.spawning():
            return pickling.reduce(self, _unpickle_storage)
        pickling.check_sendable(self)
        if self._channel is None:
            self._channel = WriteChannel(self)
        return new_proxy, (), proxy_state(self, self._channel)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """The buffers the pickled storage was attached to (the store was reopened already)."""
        set_attached_buffers(self, state.get("attached", ()))

    def __deepcopy__(self, memo: dict) -> ZarrStorage:
        """An independent copy (as ``LazyMemmapStorage``): a writable storage is copied into a
        new temporary store; a read-only one becomes another reader of its store."""
        new, _ = pickling.copy_of(self)
        memo[id(self)] = new
        set_attached_buffers(new, copy.deepcopy(attached_buffers(self), memo))
        return new

    def __repr__(self) -> str:
        where = f"temporary {self.where}" if self.origin.temporary else self.where
        reopened = f", reopened with {self.rows_at_open} rows" if self.rows_at_open else ""
        return (
            f"ZarrStorage(path={where}, len={len(self)}, max_size="
            f"{self.ring.max_size}, ndim={self.ndim}, "
            f"mode={'r' if self.read_only else 'r+'}{reopened})"
        )


def _unpickle_storage(ref: dict[str, Any]) -> ZarrStorage:
    return pickling.reopen(ZarrStorage, ref)
