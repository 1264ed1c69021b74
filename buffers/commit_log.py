"""The format and commit log of one zarrl store: its Zarr group, header and commit record.

The commit record (``attributes['zarrl']['commit']`` of the group's ``zarr.json``, see
``buffers/format.py`` and ``docs/storage_format.md``) is the commit point: data chunks (and
seal entries) are written first, then ``publish`` rewrites the record in one atomic write.
``CommitLog`` owns that record as this process last read or published it, the layout recorded
beside it (the header, the pytree structure, per-element batch dims, ``max_size``, ``ndim``)
and the history that decides which dead chunks may be deleted (``gc_below``).

One ``CommitLog`` is one commit record. Nothing here assumes it is the only record of a logical
buffer: a buffer written by several writers (per-writer segments, each a group with its own
record) holds one ``CommitLog`` per segment. ``publish`` goes through ``format.write_attrs``
(``store_io.put_group_attributes``), the one place a conditional put of an object store would
replace the local atomic rename.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Mapping
from typing import Any

import zarr
import zarr.abc.store
import zarr.storage

from . import object_store, pytrees
from .format import Commit, Header, StoreFormatError, read_attrs, write_attrs
from .store_io import run_io


def open_group(
    path: str | os.PathLike | zarr.abc.store.Store,
    mode: str,
    storage_options: dict | None = None,
) -> zarr.Group:
    """The Zarr v3 group at ``path`` (``mode``: ``"r"`` reads, anything else may create), a
    local path, a zarr store or a store URL (``s3://``, ``memory://``, ``file://``: opened by
    ``object_store.open_store`` with ``storage_options``); raises ``FileNotFoundError`` for a
    missing local path, ``StoreFormatError`` for a store that is not a Zarr v3 group."""
    where = str(path)
    if isinstance(path, zarr.abc.store.Store):
        store = path
    elif object_store.is_url(path):
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


class CommitLog:
    """The group, layout and commit record of one store, as last read or published.

    Args:
        group: the store's Zarr group.
        where: the store as named in messages.
        max_size: capacity in elements recorded in the layout (``None``: growing).
        ndim: batch dims counted by the capacity.
    """

    def __init__(self, group: zarr.Group, where: str, max_size: int | None, ndim: int) -> None:
        self.group = group
        self.where = where
        self.max_size = max_size
        self.ndim = ndim
        self.header: Header | None = None  # None until the first write decides the schema
        self.commit = Commit()
        self.pytree: pytrees.Structure = None  # structure of stored plain pytrees
        self.item_batch: tuple[int, ...] = ()  # batch dims of each element beyond ``ndim``
        self.last_publish = time.monotonic()  # monotonic time of the last ``publish``
        self._live_starts: collections.deque = collections.deque()  # (time, live start)

    # ------------------------------------------------------------------ reading
    @property
    def store(self) -> zarr.abc.store.Store:
        return self.group.store

    def meta(self) -> dict[str, Any]:
        """``attributes['zarrl']`` of the group as opened (``{}`` when absent)."""
        return dict(self.group.attrs.asdict().get("zarrl", {}))

    def read(self) -> tuple[Header | None, Commit]:
        """The validated header (``None``: no schema yet) and commit record of the group."""
        return read_attrs(self.group, self.where)

    def read_group(self, group: zarr.Group) -> tuple[Header | None, Commit]:
        """The validated header and commit record of ``group`` (e.g. a ``fresh_group``)."""
        return read_attrs(group, self.where)

    def fresh_group(self) -> zarr.Group:
        """The group re-opened read-only: its attributes as the store holds them now."""
        return zarr.open_group(self.group.store, mode="r", zarr_format=3)

    def latest(self) -> Commit:
        """The commit record the store holds now (another process may have published it)."""
        return read_attrs(self.fresh_group(), self.where)[1]

    def reopen(self, group: zarr.Group | None = None) -> None:
        """Uses ``group`` (default: the store's group reopened for writing) from now on."""
        if group is None:
            group = zarr.open_group(self.group.store, mode="a", zarr_format=3)
        self.group = group

    def adopt_layout(self, meta: Mapping, header: Header) -> None:
        """``header`` and the pytree structure and per-element batch dims recorded beside it
        in ``meta`` (``attributes['zarrl']``), checked against the schema."""
        pytree = None
        if "pytree" in meta:
            pytree = pytrees.validate_structure(meta["pytree"], header.schema, self.where)
        item_batch = meta.get("item_batch", [])
        if (
            not isinstance(item_batch, list)
            or not all(type(d) is int and d > 0 for d in item_batch)
            or not all(
                s.shape[: len(item_batch)] == tuple(item_batch) for s in header.schema.values()
            )
        ):
            raise StoreFormatError(
                f"{self.where}/zarr.json: attributes['zarrl']['item_batch'] = {item_batch!r} is "
                "invalid: expected positive ints leading every leaf shape of the schema"
            )
        self.header, self.pytree, self.item_batch = header, pytree, tuple(item_batch)

    def check_layout(self, meta: Mapping) -> None:
        """Refuses a store whose recorded ``max_size`` or ``ndim`` differ from this log's."""
        stored_max = meta.get("max_size")
        if stored_max != self.max_size or int(meta.get("ndim", 1)) != self.ndim:
            raise ValueError(
                f"{self.where} holds max_size={stored_max}, ndim={meta.get('ndim')}; "
                f"this storage was built with max_size={self.max_size}, ndim={self.ndim}"
            )

    # ------------------------------------------------------------------ writing
    def write(self, durable: bool = False) -> None:
        """Rewrites the record (layout + ``commit``) in one atomic write; ``durable``: local
        stores fsync what the commit counts first."""
        static: dict[str, Any] = {"max_size": self.max_size, "ndim": self.ndim}
        if self.pytree is not None:
            static["pytree"] = self.pytree
        if self.item_batch:
            static["item_batch"] = list(self.item_batch)
        run_io(write_attrs(self.group, self.header, self.commit, durable, **static))

    def publish(self, commit: Commit, durable: bool, live_start: int) -> None:
        """Makes ``commit`` the store's commit point; ``live_start``: its first live physical
        row, remembered for ``gc_threshold``."""
        self.commit = commit
        self.write(durable)
        now = time.monotonic()
        self._live_starts.append((now, live_start))
        self.last_publish = now

    def gc_threshold(self, grace_seconds: float) -> int:
        """Physical row below which chunks may be deleted: the live start of the newest commit
        published at least ``grace_seconds`` ago, so readers that lag less than that never miss
        a row (never below the published ``gc_below``)."""
        horizon = time.monotonic() - grace_seconds
        below = self.commit.gc_below
        while self._live_starts and self._live_starts[0][0] <= horizon:
            below = max(below, self._live_starts.popleft()[1])
        return below
