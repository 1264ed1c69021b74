"""Who may use a ``ZarrStorage`` and how its errors read: the lock its calls run under (the pump
thread applying worker writes must not interleave with the owner's calls), the process that owns
it, its read-only and closed states, ``OSError``s that name the store, and the flush of staged
rows at interpreter exit."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .format import ReadOnlyStorageError


@contextlib.contextmanager
def naming_store(where: str) -> Iterator[None]:
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


class StoreGuard:
    """The lock, owner process and open/read-only state of one storage.

    Args:
        where: the store as named in messages.
        read_only: the storage was opened with ``mode="r"``.
    """

    def __init__(self, where: str, read_only: bool) -> None:
        self.where = where
        self.read_only = read_only
        self.lock = threading.RLock()
        self.owner_pid = os.getpid()
        self.closed = False

    def naming(self) -> contextlib.AbstractContextManager[None]:
        """``naming_store(self.where)``."""
        return naming_store(self.where)

    @property
    def in_owner(self) -> bool:
        """Whether this is the process that built the storage (not a forked child)."""
        return os.getpid() == self.owner_pid

    def check_owner_process(self) -> None:
        """Raises ``RuntimeError`` in a process the storage reached without pickling (fork)."""
        if not self.in_owner:
            raise RuntimeError(
                f"{self.where} belongs to process {self.owner_pid} and reached process "
                f"{os.getpid()} without pickling (a 'fork' start method): writing from here would "
                "corrupt the store. Start worker processes with 'spawn' or 'forkserver' (the "
                "TorchRL default), where the storage becomes a proxy that writes through its owner"
            )

    def check_writable(self) -> None:
        """Raises unless this process may write: the owner, mode ``"r+"``, not closed."""
        self.check_owner_process()
        if self.read_only:
            raise ReadOnlyStorageError(
                f"{self.where} was opened read-only (mode='r'); reopen with mode='r+' to write"
            )
        if self.closed:
            raise RuntimeError(f"{self.where}: the storage is closed")


def serialized(method: Callable) -> Callable:
    """Runs a storage ``method`` under its ``guard.lock``; its ``OSError``s name the store."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.guard.lock, self.guard.naming():
            return method(self, *args, **kwargs)

    return locked


def names_store(method: Callable) -> Callable:
    """A storage ``method`` whose ``OSError``s (disk full, permission...) name the store."""

    @functools.wraps(method)
    def named(self, *args, **kwargs):
        with self.guard.naming():
            return method(self, *args, **kwargs)

    return named


def register_exit_flush(storage: Any) -> None:
    """Flushes ``storage`` (held by weak reference) at interpreter exit. zarr's I/O runs on
    executors that Python shuts down before ``atexit`` handlers, so hook in just before them when
    the interpreter allows it (``threading._register_atexit``)."""
    ref = weakref.ref(storage)
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError
        register(_flush_at_exit, ref)
    except RuntimeError:  # threading already shutting down, or no hook: best effort
        atexit.register(_flush_at_exit, ref)


def _flush_at_exit(ref: weakref.ref) -> None:
    storage = ref()
    if storage is None or storage.closed or storage.read_only or not storage.guard.in_owner:
        return  # a forked child: the store is its parent's
    try:
        storage.flush()
    except Exception as err:  # the store may be gone (temporary directories) at exit
        print(f"zarrl: could not flush {storage.where} at exit: {err}", file=sys.stderr)
