"""Creating a store's arrays at once: their metadata is built by zarr in memory, then written
as plain ``zarr.json`` objects (local files directly, other stores through their ``set``).

zarr's ``create_array`` on a ``LocalStore`` makes several thread hops per array (existence
checks, the metadata write); for the dozen arrays of a new replay store that was most of the
first ``extend``. Here zarr still builds and checks every document (``create_array`` on a
``MemoryStore``), and the documents are the bytes zarr would write. Files written are added
to the store's ``SyncLog``, so the next durable commit fsyncs them before its record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import zarr
import zarr.api.asynchronous
import zarr.storage

from . import _compat_zarr as zarr_compat
from .store_io import local_file, put_objects, run_io


def create_arrays(group: zarr.Group, specs: Mapping[str, dict[str, Any]]) -> dict[str, zarr.Array]:
    """Creates the arrays ``{path: create_array keyword arguments}`` under ``group`` (nested
    paths get their sub-groups, outermost first) and returns them, opened. Paths that already
    hold objects (leftovers of an uncommitted first write) are replaced through zarr's own
    ``overwrite``, so nothing stale survives under a new array."""
    if any(_occupied(group, path) for path in [*specs, *_parents(specs)]):
        return _create_in_place(group, specs)
    arrays, documents = build_arrays(group, specs)
    run_io(put_objects(documents))
    return arrays


def build_arrays(
    group: zarr.Group, specs: Mapping[str, dict[str, Any]]
) -> tuple[dict[str, zarr.Array], list[tuple[Any, Any]]]:
    """The arrays ``{path: create_array keyword arguments}`` under ``group``, built by zarr in
    memory and written nowhere: handles on them at their place under ``group``, and the
    documents that create them there (``[(store path, bytes)]``, for ``put_objects``, with
    the arrays' chunks when the caller writes them in the same put)."""
    memory = zarr.storage.MemoryStore()
    built, documents = run_io([_build(memory, specs)])[0]
    where = group.store_path
    arrays = {
        path: zarr.Array(
            zarr_compat.array_at(array.metadata, where / path, zarr_compat.array_config(array))
        )
        for path, array in zip(specs, built)
    }
    return arrays, [(where / key, data) for key, data in documents]


def _occupied(group: zarr.Group, path: str) -> bool:
    """Whether anything exists at ``path`` (always assumed for stores other than local)."""
    file = local_file(group.store_path / path)
    return file is None or file.exists() or file.is_symlink()


def _parents(specs: Mapping[str, Any]) -> list[str]:
    return sorted({p.rpartition("/")[0] for p in specs} - {""}, key=lambda p: p.count("/"))


def _create_in_place(group: zarr.Group, specs: Mapping[str, dict[str, Any]]) -> dict:
    created = run_io([_create(zarr_compat.async_group(group), specs, overwrite=True)])[0]
    return {path: zarr.Array(a) for path, a in zip(specs, created)}


async def _build(memory: zarr.storage.MemoryStore, specs: Mapping[str, dict[str, Any]]):
    """Builds the arrays in ``memory``; returns them and every document zarr wrote but the
    root group's, ``[(key, bytes)]``."""
    from zarr.core.buffer import default_buffer_prototype

    root = await zarr.api.asynchronous.open_group(store=memory, mode="w")
    built = await _create(root, specs, overwrite=False)
    proto = default_buffer_prototype()
    keys = [key async for key in memory.list() if key != "zarr.json"]
    return built, [(key, await memory.get(key, prototype=proto)) for key in sorted(keys)]


async def _create(root, specs: Mapping[str, dict[str, Any]], overwrite: bool) -> list:
    for parent in _parents(specs):
        await root.require_group(parent)
    return await asyncio.gather(
        *(root.create_array(path, overwrite=overwrite, **kw) for path, kw in specs.items())
    )


__all__ = ["create_arrays"]
