"""Power loss: a commit reported durable has its chunk files, their directories and the commit
record fsynced first (``durability="os"``); automatic commits (``"process"``) fsync nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import ReplayBuffer
from zarrl.buffers import ZarrStorage


def batch(n: int, start: int = 0) -> TensorDict:
    i = torch.arange(start, start + n)
    return TensorDict({"obs": i.float()[:, None].repeat(1, 8), "a": i}, batch_size=[n])


@pytest.fixture
def events(fsync_events):
    """Every fsync (by path) and every rename onto a zarr.json, in order."""
    return fsync_events


def _chunk_files(path: Path) -> set[Path]:
    return {p for p in path.rglob("c.*") if p.is_file()}


def test_flush_fsyncs_chunks_directories_then_the_commit_record(tmp_path, events):
    path = (tmp_path / "p.zarr").resolve()
    storage = ZarrStorage(None, path=path, chunk_rows=4, min_commit_interval=0)
    rb = ReplayBuffer(storage=storage)
    rb.extend(batch(10))  # two automatic commits: "process", no fsync
    assert not [e for e in events if e[0] == "fsync"]
    events.clear()
    storage.flush()
    last_commit = max(i for i, (kind, p) in enumerate(events) if p == path / "zarr.json")
    before = {p for kind, p in events[:last_commit] if kind == "fsync"}
    after = {p for kind, p in events[last_commit:] if kind == "fsync"}
    assert _chunk_files(path) <= before  # every chunk, also those of the automatic commits
    assert {path / "obs", path / "a"} <= before  # their directory entries
    assert path / "zarr.json" in before  # the record's bytes, before its rename
    assert path in after  # the rename itself
    storage.close()


def test_process_durability_fsyncs_nothing_and_os_commits_catch_up(tmp_path, events):
    path = (tmp_path / "q.zarr").resolve()
    storage = ZarrStorage(None, path=path, chunk_rows=4)
    storage.durability = "process"
    rb = ReplayBuffer(storage=storage)
    rb.extend(batch(6))
    storage.flush()
    assert not [e for e in events if e[0] == "fsync"]
    storage.durability = "os"
    storage.close()
    assert _chunk_files(path) <= {p for kind, p in events if kind == "fsync"}
    assert ZarrStorage.open(path, "r").ring.write_count == 6


def test_unknown_durability_is_refused(tmp_path):
    storage = ZarrStorage(None, path=tmp_path / "r.zarr", chunk_rows=4)
    storage.durability = "sometimes"
    ReplayBuffer(storage=storage).extend(batch(3))
    with pytest.raises(ValueError, match="durability must be 'os' or 'process'"):
        storage.flush()


def test_durable_commit_takes_two_fsync_rounds(tmp_path, monkeypatch):
    """Chunk files, their directories and the new record's bytes (under its temporary name)
    are fsynced in one concurrent round, then the rename: a flush waits for two rounds of
    journal commits, not four."""
    from zarrl.buffers import store_io

    path = (tmp_path / "r.zarr").resolve()
    storage = ZarrStorage(None, path=path, chunk_rows=4, min_commit_interval=0)
    ReplayBuffer(storage=storage).extend(batch(10))
    rounds: list[object] = []
    real_files, real_path, real_replace = store_io.fsync_files, store_io.fsync_path, os.replace
    monkeypatch.setattr(store_io, "fsync_files", lambda paths: rounds.append(set(paths)))
    monkeypatch.setattr(store_io, "fsync_path", lambda p: rounds.append({p}))

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if Path(dst) == path / "zarr.json":
            rounds.append("rename")

    monkeypatch.setattr(os, "replace", replace)
    storage.flush()
    assert rounds[-2:] == ["rename", {path}]  # the rename, then its directory
    (first,) = rounds[:-2]
    assert _chunk_files(path) - {path / "zarr.json"} <= first
    assert {path / "obs", path / "a"} <= first
    assert any(p.name.startswith("zarr.json.") and p.suffix == ".partial" for p in first)
    monkeypatch.setattr(store_io, "fsync_files", real_files)
    monkeypatch.setattr(store_io, "fsync_path", real_path)
    storage.close()
