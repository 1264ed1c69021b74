"""Where a generations buffer lives, and the lock that keeps its imports one at a time.

A buffer is a local folder (a plain path or a ``file://`` URL) or any store URL that
``ZarrStorage`` accepts (``s3://bucket/prefix`` with ``storage_options``, ``memory://name``;
``buffers/object_store.py``). The group, the per-import groups and the token ``ZarrStorage``
all go through that one store.

The import lock (``import_lock``):

- local folder: an exclusive ``flock`` on the folder itself (no lock file among the group's
  members; released by the OS when the process dies, so a killed import leaves no stale lock);
- object store: the object ``<buffer>/import.lock`` (not a zarr node: readers never see it),
  created with a conditional put (``If-None-Match``: of two importers exactly one creates it).
  It holds a lease (``LEASE_SECONDS``), renewed by a thread of the holder with ``If-Match`` its
  own version. A lock whose lease ran out (its importer was killed) is taken over with ``If-Match``
  the version read, so of two importers taking over one stale lock exactly one wins. Before an
  import writes its record (the commit point) it checks that it still holds the lock
  (``check_import_lock``). The lease assumes the machines' clocks agree to well within it.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zarr

from ..object_store import is_url, open_store, parse_url
from .records import GenerationsImportError

LOCK_KEY = "import.lock"
LEASE_SECONDS = 60.0
"""How long an object-store import lock stays valid without renewal (renewed every third)."""

_HELD: contextvars.ContextVar[ObjectLock | None] = contextvars.ContextVar(
    "zarrl_generations_import_lock", default=None
)


def local_folder(where: str) -> Path | None:
    """The folder of a buffer at a plain path or a ``file://`` URL; ``None`` for other URLs
    (``ValueError`` names an unknown scheme)."""
    if not is_url(where):
        return Path(where)
    parsed = parse_url(where)
    return Path(parsed.prefix) if parsed.scheme == "file" else None


def tokens_location(where: str) -> str:
    """Where the token ``ZarrStorage`` of the buffer at ``where`` lives (path or URL)."""
    folder = local_folder(where)
    return os.fspath(folder / "tokens") if folder is not None else f"{where.rstrip('/')}/tokens"


def buffer_store(
    where: str, storage_options: dict[str, Any] | None, read_only: bool
) -> zarr.abc.store.Store:
    """The zarr store of the buffer at ``where``: a ``LocalStore`` for a folder, else the
    store behind the URL (``object_store.open_store``)."""
    folder = local_folder(where)
    if folder is not None:
        if storage_options:
            raise ValueError(
                f"generations buffer {where!r}: a local folder takes no storage_options"
            )
        return zarr.storage.LocalStore(folder, read_only=read_only)
    return open_store(where, storage_options, read_only=read_only)


def has_group(store: zarr.abc.store.Store) -> bool:
    """Whether ``store`` holds a group document at its root."""
    from zarr.core.sync import sync

    return bool(sync(store.exists("zarr.json")))


@contextlib.contextmanager
def import_lock(where: str, storage_options: dict[str, Any] | None = None) -> Iterator[None]:
    """Holds the buffer's import lock for the block (see the module docstring);
    ``GenerationsImportError`` if another import holds it."""
    folder = local_folder(where)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        with _flock(folder):
            yield
        return
    lock = ObjectLock(open_store(where, storage_options).store, f"{where.rstrip('/')}/{LOCK_KEY}")
    lock.acquire()
    token = _HELD.set(lock)
    try:
        yield
    finally:
        _HELD.reset(token)
        lock.release()


def check_import_lock() -> None:
    """``GenerationsImportError`` if the object-store import lock this import took was lost
    (its lease ran out and another importer took it over); no-op for a local folder."""
    lock = _HELD.get()
    if lock is not None:
        lock.check()


@contextlib.contextmanager
def _flock(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GenerationsImportError(
                f"{folder}: another import into this buffer is running; wait for it"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


class ObjectLock:
    """The lease object ``LOCK_KEY`` in the obstore store ``inner`` (``url``: for messages)."""

    def __init__(self, inner: Any, url: str, lease: float | None = None) -> None:
        self.inner, self.url = inner, url
        self.lease = LEASE_SECONDS if lease is None else lease
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.etag: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None

    def _document(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires": time.time() + self.lease}).encode()

    def acquire(self) -> None:
        import obstore
        from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError

        try:
            self.etag = obstore.put(self.inner, LOCK_KEY, self._document(), mode="create")["e_tag"]
        except AlreadyExistsError:
            try:
                held = obstore.get(self.inner, LOCK_KEY)
            except NotFoundError:  # released meanwhile: try once more, conditionally
                held = None
            holder = _holder(bytes(held.bytes())) if held is not None else {}
            if held is not None and holder.get("expires", float("inf")) > time.time():
                raise GenerationsImportError(
                    f"{self.url}: another import into this buffer is running (held by "
                    f"{holder.get('owner', '?')}, lease until {_when(holder.get('expires'))}); "
                    "wait for it"
                ) from None
            mode: Any = {"e_tag": held.meta["e_tag"]} if held is not None else "create"
            try:  # its importer died: take the stale lock over, unless another one just did
                self.etag = obstore.put(self.inner, LOCK_KEY, self._document(), mode=mode)["e_tag"]
            except (PreconditionError, AlreadyExistsError):
                raise GenerationsImportError(
                    f"{self.url}: another import into this buffer took the lock just now; wait "
                    "for it"
                ) from None
        self._thread = threading.Thread(target=self._renew, name="zarrl-import-lock", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        import obstore

        while not self._stop.wait(self.lease / 3):
            with self._mutex:
                try:
                    mode = {"e_tag": self.etag}
                    self.etag = obstore.put(self.inner, LOCK_KEY, self._document(), mode=mode)[
                        "e_tag"
                    ]
                except Exception as err:  # taken over (PreconditionError) or unreachable
                    self.lost = f"{type(err).__name__}: {err}"
                    return

    def check(self) -> None:
        import obstore

        with self._mutex:
            lost = self.lost
            if lost is None:
                try:
                    now = obstore.head(self.inner, LOCK_KEY)["e_tag"]
                except Exception as err:
                    now = f"unreadable ({type(err).__name__})"
                if now != self.etag:
                    lost = f"the lock object is now version {now}"
        if lost is not None:
            raise GenerationsImportError(
                f"{self.url}: this import lost its lock ({lost}; its lease of {self.lease:g} s "
                "ran out and another import took it over); nothing of this import was committed"
            )

    def release(self) -> None:
        import obstore

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(Exception):  # only our own lock (a taken-over one is theirs)
            held = obstore.get(self.inner, LOCK_KEY)
            if held.meta["e_tag"] == self.etag:
                obstore.delete(self.inner, LOCK_KEY)


def _holder(doc: bytes) -> dict:
    try:
        out = json.loads(doc)
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
