"""Checkpoints of a ``ZarrStorage``: its ``state_dict`` (where the data is and at which commit),
``dumps`` (a copy of the store, or of what the save hooks return), ``loads`` and
``load_state_dict`` (this storage's content replaced by a copy of another store).

The functions take the storage and use its public API and parts only; replacing the content ends
with ``adopt(header, commit)``, the storage's own adoption of the copied commit (TorchRL's
length, cursor and revision live there).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
import zarr
import zarr.storage
from tensordict import TensorDictBase

from . import object_store, pickling
from ._compat_torchrl import load_hooks, save_hooks
from .commit_log import open_group
from .format import Commit, Header, read_attrs
from .store_io import clear_store, copy_store

Adopt = Callable[[Header | None, Commit], None]


def state_dict(storage: Any) -> dict[str, Any]:
    """Metadata only (after a flush): where the data is (``store``: a path or a store object)
    and which commit it is at; the rows stay in the store."""
    storage.flush()
    return {
        "path": storage.where,
        "store": pickling.reference(storage)["store"],
        "initialized": storage.log.header is not None,
        "_len": len(storage),
        "commit": storage.log.commit.to_json(),
    }


def load_state_dict(storage: Any, state: Mapping[str, Any], adopt: Adopt) -> int:
    """Checks ``storage`` is at the commit ``state`` recorded, after replacing its content with
    a copy of the recorded store when that is another store (which must still be at the
    recorded commit); returns the recorded length in elements."""
    want = Commit.from_json(state["commit"])
    source = state.get("store", state["path"])
    if isinstance(source, (str, os.PathLike)):
        source_key = pickling.store_key(zarr.storage.LocalStore(os.fspath(source)))
    else:
        source_key = pickling.store_key(source)
    if source_key != pickling.store_key(storage.log.store):
        storage.guard.check_writable()
        src = open_group(source, "r")
        _, commit = read_attrs(src, str(source))
        if (commit.base, commit.write_count) != (want.base, want.write_count):
            raise ValueError(
                f"{source} is at commit base={commit.base}, write_count={commit.write_count} "
                f"but the state dict expects base={want.base}, write_count={want.write_count}:"
                " the store moved on since the state dict was taken; nothing was loaded"
            )
        replace_content(storage, src, adopt)
    elif storage.read_only:
        storage.refresh()
    have = storage.log.commit
    if (want.base, want.write_count) != (have.base, have.write_count):
        raise ValueError(
            f"{storage.where} is at commit base={have.base}, write_count={have.write_count} "
            f"but the state dict expects base={want.base}, write_count={want.write_count}; "
            "zarr stores cannot roll back"
        )
    return int(state["_len"])


def dumps(storage: Any, path: Any) -> None:
    """Flush, then copy the whole store (any zarr store) to ``path`` (a local path or a store
    URL). With save hooks (``rb.register_save_hook``), ``path`` gets a new store holding what
    the hooks return for the live rows (``[len along dim 0, ...]``, position order) instead."""
    storage.flush()
    hooks = save_hooks(storage)
    if not hooks:
        if object_store.is_url(path):
            dest = object_store.open_store(path, storage.init_options["storage_options"])
        else:
            dest = zarr.storage.LocalStore(os.fspath(path))
        copy_store(storage.log.store, dest)
        return
    if storage.log.header is None:
        raise RuntimeError(f"{storage.where}: cannot save a non-initialized storage")
    data = storage.get(torch.arange(storage.ring.rows_of(len(storage))))
    for hook in hooks:
        data = hook(data, path=path)
    write_new_store(type(storage), path, data, storage.ndim)


def loads(storage: Any, path: Any, adopt: Adopt) -> TensorDictBase | None:
    """Replaces ``storage``'s content with the store checkpointed at ``path`` and returns
    ``None``; with load hooks (``rb.register_load_hook``), returns what they make of its rows
    (``[rows, ...]``) for the caller to write instead, and changes nothing."""
    storage.guard.check_writable()
    src = open_group(path, "r")
    read_attrs(src, str(path))
    hooks = load_hooks(storage)
    if not hooks:
        replace_content(storage, src, adopt)
        return None
    saved = type(storage).open(path, mode="r")
    try:
        if saved.log.header is None:
            raise RuntimeError(f"{path}: the checkpoint holds no rows to load")
        data = saved.get(torch.arange(saved.ring.rows_of(len(saved))))
    finally:
        saved.close()
    for hook in hooks:
        data = hook(data, out=None)
    return data


def replace_content(storage: Any, src: zarr.Group, adopt: Adopt) -> None:
    """``storage``'s store becomes a copy of the store of ``src``; ``adopt(header, commit)``
    then makes the copied commit visible (``header`` ``None``: the copy holds no rows)."""
    storage.guard.check_writable()
    log, writer = storage.log, storage.chunk_writer
    if log.header is not None:
        writer.land(wait=True)
    clear_store(log.store)
    copy_store(src.store, log.store)
    writer.forget_written()  # nothing past the loaded commit is ours
    log.reopen()
    object_store.pin(log.group)  # the copied commit record is the one we replace next
    header, commit = log.read()
    log.header = None
    if header is not None:
        log.adopt_layout(log.meta(), header)
    else:
        log.commit = commit
        storage.ring.adopt(0, 0)
        storage.ring.tail = None
    adopt(header, commit)


def write_new_store(cls: type, path: Any, data: TensorDictBase, ndim: int) -> None:
    """A new zarrl store (a ``cls`` storage) at ``path`` holding the rows of ``data``
    (``[rows, ...]``); an existing zarrl store there is replaced, anything else is refused."""
    path = os.fspath(path)
    if os.path.exists(path) and os.listdir(path):
        existing = open_group(path, "r")
        read_attrs(existing, path)  # refuses a directory that is not a zarrl store
        clear_store(zarr.storage.LocalStore(path))
    with cls(None, path=path, ndim=ndim) as dest:
        dest.set(torch.arange(data.shape[0]), data)
