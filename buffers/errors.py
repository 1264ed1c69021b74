"""The ``zarrl.buffers`` exception hierarchy (shared by the format, I/O and storage modules)."""

from __future__ import annotations


class StoreFormatError(ValueError):
    """The target is not a zarrl replay store, is one this version cannot read, or its metadata
    is invalid (the message names the file and the attribute)."""


class UnsafeStoreError(StoreFormatError):
    """A store path is a symbolic link: zarrl never follows links inside a store."""


class ReadOnlyStorageError(RuntimeError):
    """A write was attempted on a storage opened with ``mode="r"``."""


class CorruptChunkError(RuntimeError):
    """A stored chunk failed its checksum (or could not be decoded)."""


class CommitConflictError(RuntimeError):
    """An object store's commit record was changed by another writer since this writer read
    it: the conditional put of this writer's commit was refused (``object_store.py``)."""
