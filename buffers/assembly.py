"""Building the parts of a ``ZarrStorage``: its arguments checked, the store opened or created,
and the parts, each owning its state, wired to one another (``docs/architecture.md``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import zarr
import zarr.abc.store

from . import object_store
from .chunk_io import ChunkStore
from .chunk_writer import ChunkWriter
from .commit_log import CommitLog, open_group
from .committer import CommitSettings, Committer
from .format import Commit, read_attrs
from .gathering import Gatherer
from .guard import StoreGuard
from .hot_tier import HotTier
from .index_columns import IndexColumns
from .reader import Reader
from .ring import Ring
from .row_writer import Layout, RowWriter
from .sampler_state import StoreSamplers
from .store_io import check_local_writable, remove_partials

Path = str | os.PathLike | zarr.abc.store.Store


class Host(CommitSettings, Protocol):
    """What the parts read from the storage they serve: its commit options and its length in
    elements (``len``)."""

    def __len__(self) -> int: ...


@dataclass
class Parts:
    """The parts of one storage, by the attribute names it keeps them under."""

    guard: StoreGuard  # lock, owner process, closed state, errors naming the store
    index: IndexColumns  # small leaves mirrored in RAM by position
    log: CommitLog  # the group, layout and commit record
    chunks: ChunkStore  # leaf arrays, codecs and seal table
    hot: HotTier  # decoded chunks and their refill
    chunk_writer: ChunkWriter  # staged chunks, write-ahead, dead chunks
    committer: Committer  # when staged rows become a commit, and the commit
    reader: Reader  # adopting commits, stale-read checks
    gatherer: Gatherer  # rows read by ring position
    rows: RowWriter  # rows given to ``set`` staged in the chunk writer
    samplers: StoreSamplers  # sampler states kept with the store


def check_arguments(
    max_size: int | None, chunk_rows: int | None, cache: None | str | int, shared_init: bool
) -> None:
    """Refuses constructor arguments ``ZarrStorage`` does not support, naming each."""
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


def store_name(path: Path) -> str:
    """The store as named in messages: its path, or the store object's ``repr``."""
    return str(path) if not isinstance(path, zarr.abc.store.Store) else repr(path)


def stored_shape(path: Path, storage_options: dict[str, Any] | None) -> tuple[int | None, int]:
    """``(max_size, ndim)`` an existing store at ``path`` was created with (``ZarrStorage.open``);
    refuses a group that is not a zarrl store (``read_attrs``)."""
    group = open_group(path, "r", storage_options)
    header, _ = read_attrs(group, str(path))
    meta = group.attrs.asdict()["zarrl"]
    ndim = header.ndim if header is not None else int(meta.get("ndim", 1))
    return meta.get("max_size"), ndim


def assemble(
    host: Host,
    ring: Ring,
    path: Path,
    mode: str,
    *,
    storage_options: dict[str, Any] | None,
    layout: Layout,
    compressors: list | Mapping[str, list] | None,
    cache: None | str | int,
    cache_device: torch.device,
    device: torch.device,
    existsok: bool,
    setup: Callable[..., None],
    mirror_index: bool = True,
) -> tuple[Parts, Commit | None]:
    """Opens (``mode="r"``, ``"r+"``) or creates (``"w"``) the store at ``path`` and builds the
    parts of ``host`` on it: ``ring`` its ring, ``setup(header, create=False)`` what makes a
    new layout the parts' one. A writable store is checked writable, its torn temporaries
    removed and its commit record pinned (``object_store.pin``). Returns the parts and the
    adopted commit (``None`` while no row decided the layout). Errors name the store.
    ``mirror_index=False``: no RAM mirror of the index columns (``IndexColumns``)."""
    read_only = mode == "r"
    guard = StoreGuard(store_name(path), read_only)
    index = IndexColumns(mirror_index)
    with guard.naming():
        log = CommitLog(
            open_group(path, mode, storage_options), guard.where, ring.max_size, layout.ndim
        )
        chunks = ChunkStore(log, ring, read_only, compressors)
        hot = HotTier(ring, log, chunks, cache, cache_device)
        chunk_writer = ChunkWriter(ring, log, chunks, hot, index)
        committer = Committer(ring, log, chunks, chunk_writer, guard, host)
        reader = Reader(ring, log, chunks, hot, chunk_writer, index)
        gatherer = Gatherer(ring, log, hot, index, reader, read_only, device)
        rows = RowWriter(ring, log, chunks, chunk_writer, index, gatherer, guard, layout, setup)
        samplers = StoreSamplers(
            log, guard, ring, lambda: committer.flush(host.durability, len(host))
        )
        if not read_only:
            check_local_writable(log.store, guard.where)
            remove_partials(log.store)  # torn temporaries of a killed writer
        commit = reader.open_store(existsok)
        if not read_only:
            object_store.pin(log.group)  # the commit record version our commits replace
    parts = Parts(
        guard, index, log, chunks, hot, chunk_writer, committer, reader, gatherer, rows, samplers
    )
    return parts, commit
