"""Store writes without zarr's per-call event-loop round trip.

Every object zarrl writes (chunks, array metadata, the group's commit record) goes through
``put_objects``: objects of a ``LocalStore`` are written here, and objects of any other
``zarr.abc.store.Store`` are returned as coroutines for the caller to run in one event-loop call,
in the order it chooses (data first, commit record last). The bytes are the ones zarr writes.

Local objects that a reader may be reading (metadata, chunks holding committed rows) are replaced
atomically (a temporary file, then a rename, as ``LocalStore`` does). Chunks that hold no
committed row yet are written in place: no commit refers to them until the commit record that
follows, so a crash mid-write leaves a torn file that nothing reads and the next write of that
chunk replaces (this saves a temporary name and a rename per chunk file).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import zarr
import zarr.abc.store
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.storage import LocalStore, StorePath

from . import _compat_zarr as zarr_compat
from . import object_store
from .errors import UnsafeStoreError


def local_file(key: StorePath) -> Path | None:
    """File behind ``key`` when its store is a ``LocalStore`` (direct file I/O), else None."""
    if isinstance(key.store, LocalStore):
        return Path(key.store.root) / key.path
    return None


def _refuse_link(path: Path) -> None:
    raise UnsafeStoreError(
        f"{path} is a symbolic link; zarrl never follows links inside a store (remove it)"
    )


def check_no_links(root: Path, path: Path) -> None:
    """Raises ``UnsafeStoreError`` if ``path`` or a directory between ``root`` and it is a
    symbolic link (a write there could land outside the store)."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return
    here = root
    for part in parts:
        here = here / part
        if here.is_symlink():
            _refuse_link(here)


_LOGS: dict[str, SyncLog] = {}


def sync_log(store) -> SyncLog | None:
    """The ``SyncLog`` of a local store (created on first use; ``None`` for other stores):
    every file ``put_objects`` writes into that store is recorded there."""
    if not isinstance(store, LocalStore):
        return None
    root = os.path.abspath(str(store.root))
    log = _LOGS.get(root)
    if log is None:
        log = _LOGS[root] = SyncLog()
    return log


class SyncLog:
    """Local files written since the last durable commit (and directories whose new entries
    are not fsynced yet); ``sync()`` fsyncs the files, then the directories (a power cut then
    keeps the bytes and the directory entries)."""

    def __init__(self) -> None:
        self.files: set[Path] = set()
        self.dirs: set[Path] = set()  # besides the directories of ``files``

    def __bool__(self) -> bool:
        return bool(self.files or self.dirs)

    def sync(self, extra: Iterable[Path] = ()) -> None:
        """fsyncs the files (and ``extra`` files), their directories and ``dirs``, all at once:
        the entries already exist, so a directory's fsync need not wait for its files', and
        concurrent fsyncs share the file system's journal commits (ext4 groups them): one
        round of N fsyncs costs far less than N sequential ones, or two rounds."""
        files = self.files | set(extra)
        fsync_files(sorted(files | {p.parent for p in files} | self.dirs))
        self.files.clear()
        self.dirs.clear()


_FSYNC_THREADS = 8
_fsync_pool: concurrent.futures.ThreadPoolExecutor | None = None
_fsync_pool_lock = threading.Lock()
_fsync_pool_pid = [0]  # a forked child builds its own pool (threads do not survive a fork)


def fsync_files(paths: Sequence[Path]) -> None:
    """``fsync_path`` of every path, on up to ``_FSYNC_THREADS`` threads; raises the first
    error after all have finished."""
    global _fsync_pool
    if len(paths) <= 1:
        for path in paths:
            fsync_path(path)
        return
    with _fsync_pool_lock:
        if _fsync_pool is None or os.getpid() != _fsync_pool_pid[0]:
            _fsync_pool = concurrent.futures.ThreadPoolExecutor(_FSYNC_THREADS, "zarrl-fsync")
            _fsync_pool_pid[0] = os.getpid()
        pool = _fsync_pool
    try:
        futures = [pool.submit(fsync_path, p) for p in paths]
    except RuntimeError:  # interpreter shutdown (a flush at exit): no new threads
        futures = []
        for path in paths:
            fsync_path(path)
    concurrent.futures.wait(futures)
    for future in futures:
        future.result()


def fsync_path(path: Path) -> None:
    """fsync of a file or directory (never following a link); a vanished file is skipped."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(
    path: Path,
    data: Buffer,
    atomic: bool = True,
    durable: bool = False,
    before_rename: Callable[[list[Path]], None] | None = None,
) -> None:
    """File write; ``atomic``: readers and crashes see the old or the new bytes, never a mix;
    ``durable``: the bytes are fsynced (before an atomic rename); ``before_rename(files)``
    (atomic writes): called with the written temporary file before its rename, to fsync it
    (e.g. together with others). A symbolic link at ``path`` is refused
    (``UnsafeStoreError``), never followed."""
    if not atomic:
        view = memoryview(data.as_buffer_like()).cast("B")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as err:
            if path.is_symlink():
                _refuse_link(path)
            raise err
        try:
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        return
    if path.is_symlink():
        _refuse_link(path)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "xb") as f:
            f.write(data.as_buffer_like())
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if before_rename is not None:
            before_rename([tmp])
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def put_objects(
    items: Iterable[tuple[StorePath, Buffer]],
    in_place: frozenset = frozenset(),
    log: SyncLog | None = None,
):
    """Writes ``(key, bytes)`` objects: local files here, in order (atomically unless the key is
    in ``in_place``; each file is added to ``log`` for a later durable commit); returns one
    coroutine that writes the objects of other stores concurrently (an empty list when there
    are none)."""
    rest = []
    made: set[Path] = set()
    logs: dict[int, SyncLog | None] = {}
    for key, data in items:
        path = local_file(key)
        if path is None:
            rest.append((key, data))
            continue
        if path.parent not in made:
            check_no_links(Path(key.store.root), path.parent)
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        write_file(path, data, atomic=key.path not in in_place)
        target = log
        if target is None:
            if id(key.store) not in logs:
                logs[id(key.store)] = sync_log(key.store)
            target = logs[id(key.store)]
        if target is not None:
            target.files.add(path)
    return [_set_all(rest)] if rest else []


async def _set_all(items: Sequence[tuple[StorePath, Buffer]]) -> None:
    import asyncio

    fenced = {id(k.store): k.store for k, _ in items if object_store.is_object_store(k.store)}
    await asyncio.gather(*(object_store.check_fence(store) for store in fenced.values()))
    await asyncio.gather(*(key.set(data) for key, data in items))


def note_written(store: zarr.abc.store.Store, prefix: str) -> None:
    """Adds every file under ``prefix`` of a local ``store`` (objects zarr itself wrote there)
    to the store's ``SyncLog``, so that the next durable commit fsyncs them and their
    directories first; nothing for other stores (their ``set`` is their durability)."""
    log = sync_log(store)
    if log is None:
        return
    top = Path(str(store.root)) / prefix
    for directory, _, files in os.walk(top, followlinks=False):
        here = Path(directory)
        log.dirs.add(here)
        log.files.update(here / name for name in files)
    log.dirs.add(top.parent)


def metadata_objects(where: StorePath, metadata) -> list[tuple[StorePath, Buffer]]:
    """The ``zarr.json`` object(s) zarr writes for group or array ``metadata`` at ``where``."""
    encoded = metadata.to_buffer_dict(default_buffer_prototype())
    return [(where / name, data) for name, data in encoded.items()]


def put_group_attributes(group: zarr.Group, attributes: dict, durable: bool = False) -> list:
    """Replaces the group's attributes (one ``zarr.json`` write, atomic) and updates the open
    group to match; returns coroutines for non-local stores (see ``put_objects``).

    ``durable`` (local stores): every file written into the store since the last durable
    commit, and its directory, is fsynced first; then the new ``zarr.json`` is fsynced before
    its rename and its directory after it, so a power cut keeps the commit and what it counts.

    The document is zarr's own (``GroupMetadata.to_dict``) written as compact JSON: the C
    encoder takes ~0.05 ms where zarr's indented encoding of the same attributes takes ~1 ms."""
    async_group = zarr_compat.async_group(group)
    new = dataclasses.replace(async_group.metadata, attributes=attributes)
    doc = dataclasses.replace(new, attributes={}).to_dict()
    doc["attributes"] = attributes
    data = default_buffer_prototype().buffer.from_bytes(json.dumps(doc, allow_nan=True).encode())
    key = async_group.store_path / "zarr.json"
    path = local_file(key)
    if path is not None and durable:
        check_no_links(Path(key.store.root), path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        # the new record's bytes are fsynced under a temporary name in the same round as the
        # files it counts (nothing refers to that name), then renamed over the old record and
        # the rename fsynced: two fsync rounds per durable commit
        write_file(path, data, atomic=True, before_rename=sync_log(key.store).sync)
        fsync_path(path.parent)
        io = []
    elif object_store.is_object_store(key.store):
        io = [object_store.put_commit(key, data)]  # conditional: refuses a concurrent commit
    else:
        io = put_objects([(key, data)])
    zarr_compat.replace_metadata(async_group, new)
    return io


def grow_array(array: zarr.Array, rows: int) -> list:
    """Sets ``array``'s dim-0 size to at least ``rows`` with one metadata write (nothing is
    deleted: an array already that large, grown by a writer killed before its commit counted
    it, is left as it is); returns coroutines for non-local stores (see ``put_objects``)."""
    async_array = zarr_compat.async_array(array)
    old = async_array.metadata
    if rows <= old.shape[0]:
        return []
    new = old.update_shape((rows, *old.shape[1:]))
    io = put_objects(metadata_objects(async_array.store_path, new))
    zarr_compat.replace_metadata(async_array, new)
    return io


def _is_partial_name(name: str) -> bool:
    """``<name>.<32 hex digits>.partial``: a temporary file of ``write_file`` (or of zarr's own
    ``LocalStore``), left behind only when a process died between its write and its rename."""
    parts = name.rsplit(".", 2)
    if len(parts) != 3 or parts[2] != "partial":
        return False
    token = parts[1]
    return len(token) == 32 and all(c in "0123456789abcdef" for c in token)


def remove_partials(store) -> list[Path]:
    """Deletes the ``*.partial`` temporary files a killed writer left in a local ``store``
    (never following links; other stores have none); returns the removed paths. Only the
    single process that opens the store for writing may call this: a live writer's
    temporary files are indistinguishable from a dead one's."""
    if not isinstance(store, LocalStore):
        return []
    removed = []
    for directory, _, files in os.walk(str(store.root), followlinks=False):
        for name in files:
            path = Path(directory) / name
            if _is_partial_name(name) and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def check_local_writable(store, where: str) -> None:
    """Creates and removes a probe file in a local ``store``'s directory, so a read-only file
    system or directory fails here, at open, instead of at the first commit (``OSError``
    naming the store; other stores report their errors on write)."""
    if not isinstance(store, LocalStore):
        return
    probe = Path(str(store.root)) / f".zarrl-write-probe.{uuid.uuid4().hex}.partial"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        raise OSError(
            err.errno,
            f"zarrl store {where} cannot be opened for writing (mode='r+'): {err.strerror}; "
            "open it with mode='r' to read it",
            str(store.root),
        ) from err
    os.close(fd)
    probe.unlink(missing_ok=True)


def run_io(coroutines: list, return_exceptions: bool = False) -> list:
    """Runs zarr store/array coroutines concurrently on zarr's event loop (one round trip)."""
    from zarr.core.sync import sync

    async def gather():
        return await asyncio.gather(*coroutines, return_exceptions=return_exceptions)

    return sync(gather()) if coroutines else []


def copy_store(src: zarr.abc.store.Store, dst: zarr.abc.store.Store) -> None:
    """Copies every object of ``src`` into ``dst`` (any zarr stores)."""
    from zarr.core.sync import sync

    async def copy():
        proto = default_buffer_prototype()
        async for key in src.list():
            buf = await src.get(key, prototype=proto)
            if buf is not None:
                await dst.set(key, buf)

    sync(copy())


def clear_store(store: zarr.abc.store.Store) -> None:
    """Removes every object of ``store``."""
    from zarr.core.sync import sync

    sync(store.clear())
