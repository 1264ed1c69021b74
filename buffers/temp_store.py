"""Temporary stores: ``ZarrStorage(max_size)`` without a ``path``, as ``LazyMemmapStorage``.

The store is a fresh directory made by ``tempfile.mkdtemp`` (under ``$TMPDIR``); the storage
that created it removes it at ``close()``, when it is garbage collected, or at interpreter exit,
whichever comes first. A store given by ``path`` is never removed.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path


def make_temp_store(prefix: str = "zarrl-") -> Path:
    """A new empty directory for a temporary store (``<tmp>/zarrl-XXXX/store.zarr``)."""
    return Path(tempfile.mkdtemp(prefix=prefix)) / "store.zarr"


def remove_on_release(owner: object, store_path: Path) -> weakref.finalize:
    """Removes the directory holding ``store_path`` when ``owner`` is collected or at exit;
    call the returned finalizer to remove it earlier (it runs at most once)."""
    return weakref.finalize(owner, shutil.rmtree, str(store_path.parent), True)
