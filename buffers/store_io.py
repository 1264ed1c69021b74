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

import dataclasses
import json
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import zarr
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.storage import LocalStore, StorePath


def local_file(key: StorePath) -> Path | None:
    """File behind ``key`` when its store is a ``LocalStore`` (direct file I/O), else None."""
    if isinstance(key.store, LocalStore):
        return Path(key.store.root) / key.path
    return None


def write_file(path: Path, data: Buffer, atomic: bool = True) -> None:
    """File write; ``atomic``: readers and crashes see the old or the new bytes, never a mix."""
    if not atomic:
        view = memoryview(data.as_buffer_like()).cast("B")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        return
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data.as_buffer_like())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def put_objects(items: Iterable[tuple[StorePath, Buffer]], in_place: frozenset = frozenset()):
    """Writes ``(key, bytes)`` objects: local files here, in order (atomically unless the key is
    in ``in_place``); returns one coroutine that writes the objects of other stores
    concurrently (an empty list when there are none)."""
    rest = []
    made: set[Path] = set()
    for key, data in items:
        path = local_file(key)
        if path is None:
            rest.append((key, data))
            continue
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        write_file(path, data, atomic=key.path not in in_place)
    return [_set_all(rest)] if rest else []


async def _set_all(items: Sequence[tuple[StorePath, Buffer]]) -> None:
    import asyncio

    await asyncio.gather(*(key.set(data) for key, data in items))


def metadata_objects(where: StorePath, metadata) -> list[tuple[StorePath, Buffer]]:
    """The ``zarr.json`` object(s) zarr writes for group or array ``metadata`` at ``where``."""
    encoded = metadata.to_buffer_dict(default_buffer_prototype())
    return [(where / name, data) for name, data in encoded.items()]


def put_group_attributes(group: zarr.Group, attributes: dict) -> list:
    """Replaces the group's attributes (one ``zarr.json`` write, atomic) and updates the open
    group to match; returns coroutines for non-local stores (see ``put_objects``).

    The document is zarr's own (``GroupMetadata.to_dict``) written as compact JSON: the C
    encoder takes ~0.05 ms where zarr's indented encoding of the same attributes takes ~1 ms."""
    async_group = group._async_group
    new = dataclasses.replace(async_group.metadata, attributes=attributes)
    doc = dataclasses.replace(new, attributes={}).to_dict()
    doc["attributes"] = attributes
    data = default_buffer_prototype().buffer.from_bytes(json.dumps(doc, allow_nan=True).encode())
    io = put_objects([(async_group.store_path / "zarr.json", data)])
    object.__setattr__(async_group, "metadata", new)
    return io


def grow_array(array: zarr.Array, rows: int) -> list:
    """Sets ``array``'s dim-0 size to ``rows`` (≥ the current size: nothing is deleted) with
    one metadata write; returns coroutines for non-local stores (see ``put_objects``)."""
    async_array = array._async_array
    old = async_array.metadata
    if rows < old.shape[0]:
        raise ValueError(f"grow_array cannot shrink {array.path!r} from {old.shape[0]} to {rows}")
    new = old.update_shape((rows, *old.shape[1:]))
    io = put_objects(metadata_objects(async_array.store_path, new))
    object.__setattr__(async_array, "metadata", new)
    return io
