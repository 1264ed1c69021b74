"""Store URLs (``s3://``, ``file://``, ``memory://``) and the conditional commit of object stores.

``open_store(url, storage_options)`` builds the zarr store behind a URL:

- ``s3://bucket/prefix/run.zarr``: zarr's ``ObjectStore`` over obstore's ``S3Store`` rooted at
  ``prefix/run.zarr`` (``storage_options``: ``endpoint_url``, ``region``, ``access_key_id`` /
  ``secret_access_key`` / ``session_token`` (or fsspec's ``key`` / ``secret`` / ``token``),
  ``allow_http``, and any other ``obstore.store.S3Config`` key; unset keys come from the
  ``AWS_*`` environment as obstore reads it);
- ``memory://name/prefix``: an obstore ``MemoryStore`` kept under the URL for this process (tests, and
  the same conditional commit as S3 without a server);
- ``file:///abs/path``: a zarr ``LocalStore`` (the local fast paths of ``store_io.py`` apply).

Any other scheme is refused (``ValueError`` naming it). A plain path (no ``scheme://``) is not a
URL: callers keep their local-path handling.

The commit record (the group's ``zarr.json``) of an object store is written with a conditional
put (``put_commit``): ``If-Match`` the version this writer read or last wrote, ``If-None-Match``
for a new store. A commit written meanwhile by another process makes the put fail with
``CommitConflictError`` naming the store and the other commit: two writers can never commit over
each other unnoticed (the refused writer's new rows stay unpublished; the other writer's commit
is kept).
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import zarr.storage
from zarr.core.buffer import Buffer, default_buffer_prototype

from . import _compat_zarr as zarr_compat
from .errors import CommitConflictError

SCHEMES = ("s3", "memory", "file")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")

# fsspec / boto-style names accepted beside obstore's S3Config keys
_ALIASES = {
    "endpoint_url": "endpoint",
    "region_name": "region",
    "key": "access_key_id",
    "aws_access_key_id": "access_key_id",
    "secret": "secret_access_key",
    "aws_secret_access_key": "secret_access_key",
    "token": "session_token",
    "aws_session_token": "session_token",
}


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL: ``scheme``, ``bucket`` (the memory store's name for ``memory``;
    empty for ``file``) and ``prefix`` (the key prefix, or the absolute path for ``file``)."""

    scheme: str
    bucket: str
    prefix: str

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.prefix}"
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")


def is_url(path: Any) -> bool:
    """Whether ``path`` is a string of the form ``scheme://...`` (any scheme)."""
    return isinstance(path, str) and _URL.match(path) is not None


def parse_url(url: str) -> StoreURL:
    """``scheme://bucket/prefix`` split and checked; raises ``ValueError`` naming an unknown
    scheme or a missing bucket."""
    m = _URL.match(url)
    if m is None:
        raise ValueError(f"{url!r} is not a store URL (expected scheme://...)")
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme not in SCHEMES:
        raise ValueError(
            f"store URL {url!r}: scheme {scheme!r} is not supported; zarrl opens "
            f"{', '.join(s + '://' for s in SCHEMES)} URLs and local paths"
        )
    if scheme == "file":
        if not rest.startswith("/"):
            raise ValueError(f"store URL {url!r}: file:// URLs take an absolute path")
        return StoreURL("file", "", rest)
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"store URL {url!r}: no bucket (expected {scheme}://bucket/prefix)")
    return StoreURL(scheme, bucket, prefix.strip("/"))


_MEMORY: dict[str, Any] = {}
_MEMORY_LOCK = threading.Lock()
_URLS: dict[int, str] = {}  # id(store) -> the URL it was opened from (error messages)


def s3_config(storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` as ``S3Store`` keyword arguments (aliases resolved; ``allow_http``
    defaults to true for an ``http://`` endpoint)."""
    out: dict[str, Any] = {}
    for name, value in (storage_options or {}).items():
        key = _ALIASES.get(name, name)
        if key in out:
            raise ValueError(f"storage_options: {name!r} repeats {key!r}")
        out[key] = value
    if str(out.get("endpoint", "")).startswith("http://"):
        out.setdefault("allow_http", True)
    return out


def open_store(
    url: str, storage_options: dict[str, Any] | None = None, read_only: bool = False
) -> zarr.abc.store.Store:
    """The zarr store behind ``url`` (see the module docstring); ``ValueError`` names an
    unknown scheme or a bad option."""
    parsed = parse_url(url)
    if parsed.scheme == "file":
        if storage_options:
            raise ValueError(f"store URL {url!r}: file:// URLs take no storage_options")
        return zarr.storage.LocalStore(parsed.prefix, read_only=read_only)
    from obstore.store import MemoryStore, S3Store  # the ``scale`` extra

    if parsed.scheme == "memory":
        if storage_options:
            raise ValueError(f"store URL {url!r}: memory:// URLs take no storage_options")
        with _MEMORY_LOCK:  # one in-process object store per URL
            inner: Any = _MEMORY.setdefault(str(parsed), MemoryStore())
    else:
        config = s3_config(storage_options)
        try:
            inner = S3Store(parsed.bucket, prefix=parsed.prefix or None, **config)
        except (TypeError, ValueError) as err:
            raise ValueError(f"store URL {url!r}: bad storage_options: {err}") from err
        except Exception as err:  # obstore's configuration errors
            raise ValueError(f"store URL {url!r}: bad storage_options: {err}") from err
    store = zarr.storage.ObjectStore(inner, read_only=read_only)
    _remember(store, str(parsed))
    return store


def _remember(store: Any, url: str) -> None:
    key = id(store)
    _URLS[key] = url
    weakref.finalize(store, _URLS.pop, key, None)


def url_of(store: Any) -> str | None:
    """The URL ``store`` was opened from by ``open_store`` (``None`` for other stores)."""
    return _URLS.get(id(store))


def is_object_store(store: Any) -> bool:
    return isinstance(store, zarr.storage.ObjectStore)


def _describe(store: Any, path: str) -> str:
    url = url_of(store)
    return f"{url}/{path}" if url else f"{store}/{path}"


def group_document(attributes: dict | None = None) -> bytes:
    """The ``zarr.json`` bytes zarr writes for a group with ``attributes``."""
    meta = zarr_compat.group_metadata(attributes)
    return meta.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()


def create_group_if_absent(store: Any, path: str = "") -> None:
    """Writes an empty group's ``zarr.json`` at ``path`` only if no object is there
    (``If-None-Match``): of two processes creating one store, neither replaces the other's."""
    import obstore
    from obstore.exceptions import AlreadyExistsError

    key = f"{path}/zarr.json" if path else "zarr.json"
    with contextlib.suppress(AlreadyExistsError):
        obstore.put(store.store, key, group_document(), mode="create")


# (id(store), key) -> e_tags of the zarr.json this process pinned or wrote, newest last
_ETAGS: dict[tuple[int, str], collections.deque] = {}
_INFLIGHT: collections.Counter = collections.Counter()  # commit puts under way per (store, key)
_ETAGS_LOCK = threading.Lock()


def _set_etag(store: Any, key: str, etag: str) -> None:
    with _ETAGS_LOCK:
        known = _ETAGS.get((id(store), key))
        if known is None:
            known = _ETAGS[(id(store), key)] = collections.deque(maxlen=8)
            weakref.finalize(store, _ETAGS.pop, (id(store), key), None)
        known.append(etag)


def _latest_etag(store: Any, key: str) -> str | None:
    with _ETAGS_LOCK:
        known = _ETAGS.get((id(store), key))
        return known[-1] if known else None


def _commit_of(doc: bytes) -> dict | None:
    try:
        attrs = json.loads(doc).get("attributes", {})
    except (ValueError, AttributeError):
        return None
    meta = attrs.get("zarrl") if isinstance(attrs, dict) else None
    return meta.get("commit") if isinstance(meta, dict) else None


def _conflict(where: str, doc: bytes | None, mine: dict | None) -> CommitConflictError:
    theirs = _commit_of(doc) if doc is not None else None
    if theirs is None:
        what = "another writer replaced or removed it"
    else:
        what = (
            f"another writer committed revision {theirs.get('revision')} "
            f"(write_count={theirs.get('write_count')}, time={theirs.get('time')})"
        )
    own = "; this writer wrote no chunk"
    if mine is not None:
        own = f"; this writer's commit (revision {mine.get('revision')}) was not published"
    return CommitConflictError(
        f"{where}: commit refused: the commit record changed since this writer read it: {what}"
        f"{own}. A store has one writer at a time: close the other writer, or reopen this one "
        "with ZarrStorage.open(...) to continue after its rows"
    )


def pin(group: zarr.Group) -> None:
    """Records the version (e_tag) of ``group``'s ``zarr.json`` as this writer read it, for
    the next ``put_commit``; raises ``CommitConflictError`` if the object changed since
    ``group`` was opened (its attributes differ). No-op for other stores."""
    store = group.store
    if not is_object_store(store):
        return
    import obstore

    key = f"{group.path}/zarr.json" if group.path else "zarr.json"
    result = obstore.get(store.store, key)
    doc = bytes(result.bytes())
    seen = json.loads(json.dumps(group.attrs.asdict()))
    if json.loads(doc).get("attributes", {}) != seen:
        raise _conflict(_describe(store, key), doc, None)
    _set_etag(store, key, result.meta["e_tag"])


async def put_commit(key: zarr.storage.StorePath, data: Buffer) -> None:
    """Writes the group document ``data`` at ``key`` (an ``ObjectStore``) if the object is still
    the version this process last pinned or wrote; with none pinned, only over a group that holds
    no zarrl store yet (or where there is none). ``CommitConflictError`` otherwise."""
    import obstore
    from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError

    store, path = key.store, key.path
    inner = store.store
    where = _describe(store, path)
    mine = _commit_of(data.to_bytes())
    etag = _latest_etag(store, path)
    mode: Any
    if etag is None:
        try:
            current = await obstore.get_async(inner, path)
            doc = bytes(await current.bytes_async())
        except NotFoundError:
            mode = "create"
        else:
            if _commit_of(doc) is not None:
                raise _conflict(where, doc, mine)
            mode = {"e_tag": current.meta["e_tag"]}
    else:
        mode = {"e_tag": etag}
    with _ETAGS_LOCK:
        _INFLIGHT[(id(store), path)] += 1
    try:
        result = await obstore.put_async(inner, path, data.to_bytes(), mode=mode)
    except (PreconditionError, AlreadyExistsError):
        try:
            now = bytes(await (await obstore.get_async(inner, path)).bytes_async())
        except NotFoundError:
            now = None
        raise _conflict(where, now, mine) from None
    else:
        _set_etag(store, path, result["e_tag"])
    finally:
        with _ETAGS_LOCK:
            _INFLIGHT[(id(store), path)] -= 1


async def check_fence(store: Any, key: str = "zarr.json") -> None:
    """Before a writer's chunk writes: ``CommitConflictError`` if the commit record at ``key``
    is no longer one this process pinned or wrote (another writer committed: this writer's
    chunks could land over the chunks that commit counts). One HEAD request; skipped while a
    commit of this process is under way or before its first one. The conditional commit is the
    guarantee; this check narrows the window in which a stale writer's chunks can land."""
    import obstore

    with _ETAGS_LOCK:
        known = set(_ETAGS.get((id(store), key), ()))
        busy = _INFLIGHT[(id(store), key)] > 0
    if not known or busy:
        return
    meta = await obstore.head_async(store.store, key)
    if meta["e_tag"] in known:
        return
    with _ETAGS_LOCK:
        if _INFLIGHT[(id(store), key)] > 0 or meta["e_tag"] in _ETAGS.get((id(store), key), ()):
            return
    doc = bytes(await (await obstore.get_async(store.store, key)).bytes_async())
    raise _conflict(_describe(store, key), doc, None)
