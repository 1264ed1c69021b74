"""Storage factories shared by the buffer tests: the contract suite runs every test against
``LazyMemmapStorage`` and ``ZarrStorage`` (chunk cache, RAM mirror, a cache smaller than the data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torchrl.data import LazyMemmapStorage
from zarrl.buffers import ZarrStorage

KINDS = ["memmap", "zarr", "zarr-ram", "zarr-small-cache"]


def make_storage(kind: str, max_size, path, ndim: int = 1, **kwargs):
    if kind == "memmap":
        return LazyMemmapStorage(max_size, ndim=ndim, scratch_dir=str(path), **kwargs)
    options = {
        "zarr": {"chunk_rows": 8},
        "zarr-ram": {"chunk_rows": 8, "cache": "ram"},
        "zarr-small-cache": {"chunk_rows": 4, "cache": 1},  # a few chunks: evicts constantly
    }[kind]
    return ZarrStorage(max_size, path=str(path) + ".zarr", ndim=ndim, **options, **kwargs)


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture
def storage_factory(kind, tmp_path):
    counter = iter(range(1000))

    def factory(max_size, ndim: int = 1, **kwargs):
        return make_storage(kind, max_size, tmp_path / f"s{next(counter)}", ndim=ndim, **kwargs)

    return factory


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fsync_events(monkeypatch):
    """Every fsync'd path and every rename onto a ``zarr.json`` (a commit), in order:
    ``[("fsync", path) | ("commit", path)]``."""
    log: list[tuple[str, Path]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        log.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if Path(dst).name == "zarr.json":
            log.append(("commit", Path(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log
