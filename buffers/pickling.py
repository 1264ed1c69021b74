"""Pickling and ``copy.deepcopy`` of a ``ZarrStorage`` outside the start of a process.

A storage pickles as a *reference*: its store (a local path, or the ``zarr.abc.store.Store``
object), its constructor options and whether it was read-only; unpickling reopens the store
(after the pickling side flushed, so the reference holds every row it had). One store has one
writer: unpickling a writable storage whose store already has an open writer in this process
raises ``RuntimeError`` naming the alternatives, instead of making a second writer. (Across
processes, that is the caller's promise: unpickle a writer only once its original is closed.)

``copy.deepcopy`` makes an independent copy, as for ``LazyMemmapStorage``: a writable storage is
copied into a new temporary store (removed when the copy is closed or collected, or at exit); a
read-only storage becomes another reader of the same store.

(Pickled to a process that ``multiprocessing`` is starting, a writable storage becomes a
``ZarrWriterProxy`` instead: ``buffers/worker_proxy.py``.)
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import get_spawning_popen
from typing import Any

import zarr.storage

from . import object_store
from ._compat_torchrl import attached_buffers
from .assembly import store_name
from .format import ReadOnlyStorageError
from .store_io import copy_store
from .temp_store import make_temp_store, remove_on_release

_WRITERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
REOPEN_OPTIONS = (  # constructor arguments that ``init_options`` reports
    "ndim", "device", "chunk_rows", "compressors", "cache", "cache_device", "flush_every_rows",
    "flush_every_seconds", "min_commit_interval", "index_keys", "mirror_index",
    "refresh_every_seconds", "gc_grace_seconds", "dedupe_next", "storage_options",
)  # fmt: skip


@dataclass
class Origin:
    """Where a storage's rows are and what it was built with: ``location`` the ``path`` given
    (the temporary store made when none was), ``where`` its name in messages, ``init_options``
    the constructor options a pickle or a deepcopy reopens it with (``REOPEN_OPTIONS``), and
    ``release`` the removal of a temporary store (``None`` for a store the caller named)."""

    location: Any
    where: str
    init_options: dict[str, Any]
    release: Callable[[], Any] | None = None

    @classmethod
    def of(cls, storage: Any, path: Any, mode: str, arguments: dict[str, Any]) -> Origin:
        """The origin of ``storage`` built on ``path`` (``None``: a new temporary store, removed
        at ``close()``, garbage collection or exit) in ``mode``, from its constructor's
        ``arguments``."""
        release = None
        if path is None:
            if mode != "w":
                raise ValueError("a path is needed to open an existing store")
            path = make_temp_store()
            release = remove_on_release(storage, path)
        options = {name: arguments[name] for name in REOPEN_OPTIONS}
        return cls(path, store_name(path), options, release)

    @property
    def temporary(self) -> bool:
        """Whether the store is a temporary one (no path was given)."""
        return self.release is not None


def store_key(store: Any) -> str:
    """Identity of a store within this process: the real path of a local store, else the
    object's identity."""
    if isinstance(store, zarr.storage.LocalStore):
        return "file:" + os.path.realpath(str(store.root))
    return f"object:{id(store)}"


def register_writer(storage: Any) -> None:
    _WRITERS[store_key(storage.store)] = storage


def unregister_writer(storage: Any) -> None:
    key = store_key(storage.store)
    if _WRITERS.get(key) is storage:
        del _WRITERS[key]


def open_writer(store: Any) -> Any | None:
    """The open (not closed) writable storage of ``store`` in this process, if any."""
    if isinstance(store, (str, os.PathLike)):
        store = zarr.storage.LocalStore(os.fspath(store))
    writer = _WRITERS.get(store_key(store))
    return None if writer is None or writer.closed else writer


def reference(storage: Any) -> dict[str, Any]:
    """What a pickle holds: the store, the constructor options, the mode."""
    store = storage.location
    if isinstance(store, zarr.storage.LocalStore):
        store = str(store.root)
    if isinstance(store, (str, os.PathLike)) and not object_store.is_url(store):
        store = os.path.abspath(os.fspath(store))
    return {
        "store": store,
        "max_size": storage.ring.max_size,
        "read_only": storage.read_only,
        "options": storage.init_options,
    }


def reopen(cls: type, ref: dict[str, Any]) -> Any:
    """Unpickling: the referenced store reopened (``mode='r'`` for a pickled reader)."""
    store = ref["store"]
    if not ref["read_only"]:
        writer = open_writer(store)
        if writer is not None:
            raise RuntimeError(
                f"cannot unpickle a writable ZarrStorage of {writer.where}: this process "
                "already has a writer open on that store, and a store has one writer. Close the "
                "original first, use copy.deepcopy(rb) for an independent copy, or "
                "ZarrStorage.open(path, mode='r') for a reader"
            )
    options = {k: v for k, v in ref["options"].items() if k not in ("ndim", "storage_options")}
    mode = "r" if ref["read_only"] else "r+"
    return cls.open(store, mode, storage_options=ref["options"].get("storage_options"), **options)


def spawning() -> bool:
    """Whether this pickle goes to a process that ``multiprocessing`` is starting."""
    return get_spawning_popen() is not None


def reduce(storage: Any, unpickle: Callable[[dict[str, Any]], Any]) -> tuple:
    """``__reduce__`` of a storage pickled outside a process start: a reference to its store,
    reopened by ``unpickle(ref)``, with the buffers it was attached to (a writable storage is
    flushed first, so the reference holds every row)."""
    if not storage.read_only and not storage.closed:
        storage.flush()
    return unpickle, (reference(storage),), {"attached": attached_buffers(storage)}


def check_sendable(storage: Any) -> None:
    """Raises unless ``storage`` may become a writer proxy in a process being started."""
    if storage.read_only:
        raise ReadOnlyStorageError(
            f"{storage.where} was opened read-only (mode='r') and cannot become a writer in "
            "another process; reopen it with mode='r+' in the process that should own it"
        )
    storage.guard.check_writable()


def copy_of(storage: Any) -> tuple[Any, str | None]:
    """``copy.deepcopy`` of a storage (without its attached buffers) and the temporary store
    a writer was copied into (removed with the copy: its ``Origin.release``); ``None`` for a
    reader, whose copy is another reader of the same store."""
    ref = reference(storage)
    if storage.read_only:
        return reopen(type(storage), ref), None
    storage.flush()
    dest = make_temp_store()
    with storage.guard.naming():
        copy_store(storage.log.store, zarr.storage.LocalStore(str(dest)))
    ref["store"] = dest
    new = reopen(type(storage), ref)
    new.origin.release = remove_on_release(new, dest)
    return new, dest
