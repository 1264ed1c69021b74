"""Several writers into one logical buffer: per-writer segments (``docs/storage_format.md``,
"Several writers").

A segmented buffer at ``root`` (a local path or a store URL) is a folder of zarrl stores::

    <root>/segments/<writer>.zarr     one complete zarrl store per writer (its own rows, chunks
                                      and commit record)

Writer ``w`` appends only to its own segment (``open_segment_writer``): writers share no object,
so none waits for another's I/O and no commit can conflict; each segment is an ordinary zarrl
store (crash-safe commits, seals, plain-zarr readable, the conditional commit on object stores
that refuses a second process writing the same segment). A reader (``SegmentedReader``) sees the
union of the committed rows of every segment in a defined order: segments sorted by writer name,
then each segment's positions in order (write order for a growing segment). ``refresh()`` picks
up new commits and new segments.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import zarr
from tensordict import TensorDictBase

from . import object_store
from .storage import ZarrStorage

__all__ = ["SegmentedReader", "list_segments", "open_segment_writer", "segment_path"]

SEGMENTS = "segments"
_WRITER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _join(root: str | os.PathLike, *parts: str) -> str:
    if object_store.is_url(root):
        return "/".join([str(root).rstrip("/"), *parts])
    return str(Path(root).joinpath(*parts))


def segment_path(root: str | os.PathLike, writer: str) -> str:
    """``<root>/segments/<writer>.zarr``; ``writer``: letters, digits, ``_ . -`` (at most 128,
    not starting with a dot), else ``ValueError``."""
    if not isinstance(writer, str) or not _WRITER.match(writer) or writer.endswith(".zarr"):
        raise ValueError(
            f"writer name {writer!r}: expected letters, digits, '_', '.', '-' (at most 128, "
            "starting with a letter or digit, not ending in .zarr)"
        )
    return _join(root, SEGMENTS, f"{writer}.zarr")


def _segments_store(root: str | os.PathLike, storage_options: dict | None):
    where = _join(root, SEGMENTS)
    if object_store.is_url(where):
        return object_store.open_store(where, storage_options, read_only=True)
    return zarr.storage.LocalStore(where, read_only=True) if os.path.isdir(where) else None


def list_segments(root: str | os.PathLike, storage_options: dict | None = None) -> list[str]:
    """Writer names with a segment under ``root`` that is a zarrl store (sorted). A segment whose
    group exists but does not yet carry zarrl's attributes (a writer between creating the group
    and writing its first record, or killed there) is not listed: it holds no committed row."""
    from zarr.core.sync import sync

    store = _segments_store(root, storage_options)
    if store is None:
        return []

    async def names() -> list[str]:
        return [name async for name in store.list_dir("")]

    found = []
    for name in sync(names()):
        name = name.rstrip("/")
        writer = name.removesuffix(".zarr")
        if name.endswith(".zarr") and _WRITER.match(writer) and _is_zarrl_group(store, name):
            found.append(writer)
    return sorted(found)


def _is_zarrl_group(store: zarr.abc.store.Store, name: str) -> bool:
    """Whether ``name/zarr.json`` exists and is not a bare group (no attributes at all: a
    segment being created). Anything else counts, metadata that does not parse and foreign
    attributes included: opening the segment then names what is wrong with it."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    raw = sync(store.get(f"{name}/zarr.json", prototype=default_buffer_prototype()))
    if raw is None:
        return False
    try:
        meta = json.loads(raw.to_bytes())
    except (ValueError, UnicodeDecodeError):
        return True
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return True
    return meta.get("attributes") not in (None, {})


def open_segment_writer(
    root: str | os.PathLike,
    writer: str,
    max_size: int | None = None,
    *,
    storage_options: dict | None = None,
    **kwargs: Any,
) -> ZarrStorage:
    """Writer ``writer``'s segment: created at its first use (``ZarrStorage(max_size, **kwargs)``),
    continued after its committed rows afterwards (``ZarrStorage.open(..., "r+")``)."""
    path = segment_path(root, writer)
    if writer in list_segments(root, storage_options):
        cache_keys = {"cache", "cache_device", "flush_every_rows", "flush_every_seconds"}
        options = {k: v for k, v in kwargs.items() if k in cache_keys | {"min_commit_interval"}}
        return ZarrStorage.open(path, "r+", storage_options=storage_options, **options)
    if not object_store.is_url(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return ZarrStorage(max_size, path=path, storage_options=storage_options, **kwargs)


class SegmentedReader:
    """The committed rows of every segment under ``root``, read-only, as one sequence:
    segments sorted by writer name, each in its position order. ``cache_options`` go to each
    segment's ``ZarrStorage.open(..., "r")``."""

    def __init__(
        self, root: str | os.PathLike, storage_options: dict | None = None, **cache_options: Any
    ) -> None:
        self.root, self.storage_options, self.cache_options = root, storage_options, cache_options
        self.segments: dict[str, ZarrStorage] = {}
        self.refresh()

    def refresh(self) -> bool:
        """Adopts the newest commit of every segment and opens new segments; returns whether
        anything changed."""
        changed = False
        for storage in self.segments.values():
            changed |= bool(storage.refresh())
        for writer in list_segments(self.root, self.storage_options):
            if writer not in self.segments:
                self.segments[writer] = ZarrStorage.open(
                    segment_path(self.root, writer),
                    "r",
                    storage_options=self.storage_options,
                    **self.cache_options,
                )
                changed = True
        self.segments = dict(sorted(self.segments.items()))
        return changed

    def lengths(self) -> dict[str, int]:
        """Rows of each segment (its ``len``), in reading order."""
        return {writer: len(storage) for writer, storage in self.segments.items()}

    def __len__(self) -> int:
        return sum(self.lengths().values())

    def get(self, index: torch.Tensor | slice) -> TensorDictBase:
        """Rows at union positions ``index`` (1-D int tensor or a slice), as one TensorDict;
        ``IndexError`` beyond ``len(self)``."""
        lengths = torch.tensor(list(self.lengths().values()), dtype=torch.int64)
        total = int(lengths.sum())
        if isinstance(index, slice):
            index = torch.arange(total)[index]
        index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= total):
            raise IndexError(f"{self.root}: positions must lie in [0, {total}), got {index}")
        ends = lengths.cumsum(0)
        which = torch.searchsorted(ends, index, right=True)
        starts = ends - lengths
        parts, order = [], []
        for k, storage in enumerate(self.segments.values()):
            mask = which == k
            if mask.any():
                parts.append(storage.get(index[mask] - starts[k]))
                order.append(mask.nonzero().squeeze(-1))
        if not parts:
            raise IndexError(f"{self.root}: no rows selected")
        out = torch.cat(parts)
        inverse = torch.empty_like(index)
        inverse[torch.cat(order)] = torch.arange(index.numel())
        return out[inverse]

    def close(self) -> None:
        for storage in self.segments.values():
            storage.close()
        self.segments = {}

    def __enter__(self) -> SegmentedReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
