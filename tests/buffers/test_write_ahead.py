"""Write-ahead: completed chunks are encoded and stored on a background thread while appends go
on (``buffers/write_ahead.py``); a commit never covers a chunk before it is fully written."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from tensordict import TensorDict
from torchrl.data import ReplayBuffer
from zarrl.buffers import ZarrStorage, chunk_codec, write_ahead
from zarrl.buffers.store_io import run_io
from zarrl.buffers.verify import verify_store
from zarrl.buffers.write_ahead import WriteAhead, split_by_bytes


def batch(n: int, start: int = 0) -> TensorDict:
    i = torch.arange(start, start + n)
    return TensorDict({"obs": i.float()[:, None].repeat(1, 8), "a": i}, batch_size=[n])


def stored_ids(path: Path) -> list[int]:
    return ZarrStorage.open(path, mode="r")[:]["a"].tolist()


@pytest.fixture
def encoder_threads(monkeypatch):
    """Names of the threads that encode data chunks, and an event that holds their encoding back
    (the seal table's own chunks, ``.zarrl/seals``, are neither counted nor held)."""
    monkeypatch.setattr(write_ahead, "ENCODE_THREADS", 2)  # the flushing thread and one more
    seen: list[str] = []
    gate = threading.Event()
    gate.set()
    real = chunk_codec.ChunkCodec.encode

    def encode(self, block):
        if ".zarrl" in str(self.key(0)):
            return real(self, block)
        seen.append(threading.current_thread().name)
        assert gate.wait(timeout=30), "the test never released the encoder"
        return real(self, block)

    monkeypatch.setattr(chunk_codec.ChunkCodec, "encode", encode)
    return seen, gate


def test_completed_chunks_are_stored_in_the_background_before_any_commit(tmp_path, encoder_threads):
    seen, _ = encoder_threads
    path = tmp_path / "w.zarr"
    storage = ZarrStorage(None, path=path, chunk_rows=4, min_commit_interval=3600)
    rb = ReplayBuffer(storage=storage)
    rb.extend(batch(9))  # chunks 0 and 1 complete, the interval defers their commit
    storage.chunk_writer.land(wait=True)
    assert {p.name for p in (path / "a").glob("c.*")} == {"c.0", "c.1"}  # written ahead
    assert storage.log.commit.write_count == 0 and stored_ids(path) == []  # but not committed
    assert seen and all(name.startswith(("zarrl-encode", "zarrl-write-ahead")) for name in seen)
    seen.clear()
    storage.flush()  # only the head chunk is left to encode: its two leaves, one by the
    # flushing thread, the other by an encoder thread unless it had not started by then
    assert len(seen) == 2 and "MainThread" in seen
    assert set(seen) <= {"MainThread", "zarrl-encode_0"}
    assert stored_ids(path) == list(range(9))
    storage.close()


def test_a_commit_never_covers_a_chunk_still_being_written(tmp_path, encoder_threads):
    seen, gate = encoder_threads
    path = tmp_path / "c.zarr"
    storage = ZarrStorage(None, path=path, chunk_rows=4, min_commit_interval=0.05)
    rb = ReplayBuffer(storage=storage)
    gate.clear()  # background encoding blocks
    rb.extend(batch(4))  # chunk 0 complete: handed to the background
    time.sleep(0.1)  # the interval has passed: a commit is due
    rb.extend(batch(5, start=4))  # chunk 1 complete too
    assert storage.log.commit.write_count == 0  # chunk 0 is not written yet: nothing committed
    assert stored_ids(path) == []
    gate.set()
    storage.chunk_writer.land(wait=True)
    time.sleep(0.1)
    rb.extend(batch(1, start=9))
    storage.chunk_writer.land(wait=True)
    time.sleep(0.1)
    rb.extend(batch(1, start=10))
    assert storage.log.commit.write_count == 8  # both landed chunks, not the head chunk
    assert stored_ids(path) == list(range(8))
    storage.close()
    assert stored_ids(path) == list(range(11))


def test_an_in_place_write_waits_for_the_chunk_being_written(tmp_path, encoder_threads):
    _, gate = encoder_threads
    path = tmp_path / "i.zarr"
    storage = ZarrStorage(None, path=path, chunk_rows=4, min_commit_interval=3600)
    rb = ReplayBuffer(storage=storage)
    gate.clear()
    rb.extend(batch(6))  # chunk 0 is being written in the background
    assert storage.chunk_writer.write_ahead.in_flight == {0}
    threading.Timer(0.2, gate.set).start()
    storage[1] = batch(1, start=100)[0]  # rewrites row 1 of chunk 0: after the batch lands
    assert gate.is_set()  # it waited for the old bytes of chunk 0 to be written
    storage.close()
    assert stored_ids(path) == [0, 100, 2, 3, 4, 5]


def test_chunks_written_ahead_get_their_seal_entries_once_at_the_next_commit(tmp_path):
    path = tmp_path / "s.zarr"
    storage = ZarrStorage(None, path=path, chunk_rows=4, min_commit_interval=3600)
    rb = ReplayBuffer(storage=storage)
    rb.extend(batch(9))  # chunks 0 and 1 complete: written ahead, their commit deferred
    storage.chunk_writer.land(wait=True)
    seals = zarr.open_array(path / ".zarrl" / "seals", mode="r")
    assert not seals[:2].any()  # landed, entries staged in RAM only: no seal write per batch
    assert storage.chunks.seals.pending == {0}
    storage.flush()  # the commit writes them before its record
    assert storage.chunks.seals.pending == set()
    assert seals[:2].all(axis=(1, 2)).all()  # every leaf of chunks 0 and 1 has its entry
    assert verify_store(path) == [] and stored_ids(path) == list(range(9))
    storage.close()


def test_encode_all_keeps_the_order_and_balances_the_threads(monkeypatch):
    monkeypatch.setattr(write_ahead, "ENCODE_THREADS", 2)
    items = [(None, i, np.zeros(n, np.uint8)) for i, n in enumerate([10, 10, 10, 10, 100, 1, 1])]
    groups = split_by_bytes(items, 2)
    assert sorted(i for g in groups for i in g) == list(range(7))  # each item once
    assert [sum(items[i][2].nbytes for i in g) for g in groups] == [100, 42]
    assert all(g == sorted(g) for g in groups)
    assert split_by_bytes(items[:1], 4) == [[0]] and split_by_bytes([], 2) == [[]]

    helper_started = threading.Event()

    class Codec:
        def encode(self, block):
            if threading.current_thread() is threading.main_thread():
                helper_started.wait(timeout=10)  # the helper takes its group first
            else:
                helper_started.set()
            return (threading.current_thread().name, block.nbytes)

    ahead = WriteAhead(run_io)
    try:
        blobs = ahead.encode_all([(Codec(), c, block) for _, c, block in items])
    finally:
        ahead.close()
    assert [n for _, n in blobs] == [10, 10, 10, 10, 100, 1, 1]  # in the items' order
    assert {name for name, _ in blobs} == {"MainThread", "zarrl-encode_0"}


def test_groups_no_helper_started_are_encoded_by_the_caller(monkeypatch):
    monkeypatch.setattr(write_ahead, "ENCODE_THREADS", 2)
    ahead = WriteAhead(run_io)
    busy, helping = threading.Event(), threading.Event()

    class Blocking:  # a background batch whose two groups hold both background threads
        def encode(self, block):
            if threading.current_thread().name.startswith("zarrl-encode"):
                helping.set()
            assert busy.wait(timeout=10)
            return b"\0\0\0\0"

    try:
        ahead.submit([(Blocking(), c, np.zeros(8, np.uint8)) for c in range(2)], 0, False)
        assert helping.wait(timeout=10)  # the only helper is busy with that batch
        items = [(Codec(), c, np.zeros(8, np.uint8)) for c in range(4)]
        names = ahead.encode_all(items)
    finally:
        busy.set()
        ahead.close(wait=True)
    assert names == ["MainThread"] * 4  # it did not wait for the helper


class Codec:
    def encode(self, block):
        return threading.current_thread().name


def test_a_waiting_thread_runs_the_batches_not_started_itself(tmp_path, encoder_threads):
    seen, gate = encoder_threads
    storage = ZarrStorage(None, path=tmp_path / "r.zarr", chunk_rows=4, min_commit_interval=3600)
    rb = ReplayBuffer(storage=storage)
    gate.clear()  # the first batch blocks in the background
    rb.extend(batch(5))  # chunk 0: batch 1
    rb.extend(batch(4, start=5))  # chunk 1: batch 2, queued behind it
    assert storage.chunk_writer.write_ahead.batches == 2
    seen.clear()
    threading.Timer(0.3, gate.set).start()
    storage.chunk_writer.land(wait=True)  # runs batch 2 here while batch 1 is blocked
    assert "MainThread" in seen
    storage.close()
    assert stored_ids(tmp_path / "r.zarr") == list(range(9))


def test_a_failed_background_write_is_raised_and_its_rows_written_again(tmp_path, monkeypatch):
    path = tmp_path / "f.zarr"
    storage = ZarrStorage(None, path=path, chunk_rows=4, min_commit_interval=3600)
    real = chunk_codec.ChunkCodec.encode
    failed_in: list[str] = []

    def encode(self, block):
        if not failed_in:
            failed_in.append(threading.current_thread().name)
            raise OSError(28, "No space left on device")
        return real(self, block)

    monkeypatch.setattr(chunk_codec.ChunkCodec, "encode", encode)
    rb = ReplayBuffer(storage=storage)
    rb.extend(batch(5))
    deadline = time.monotonic() + 30
    while not failed_in and time.monotonic() < deadline:  # the background batch has run
        time.sleep(0.01)
    with pytest.raises(OSError, match="No space left"):
        storage.flush()  # the background error surfaces here; nothing was committed
    assert failed_in[0].startswith(("zarrl-encode", "zarrl-write-ahead"))  # in the background
    assert stored_ids(path) == []
    storage.flush()  # chunk 0 is still staged: written again, then committed
    assert stored_ids(path) == list(range(5))
    storage.close()


@pytest.fixture
def fsyncs(fsync_events):
    """Every fsync'd path and every rename onto the group's zarr.json, in order."""
    return fsync_events


def test_durable_stores_fsync_chunks_written_ahead_before_the_flush(tmp_path, fsyncs):
    path = (tmp_path / "d.zarr").resolve()
    storage = ZarrStorage(None, path=path, chunk_rows=4, min_commit_interval=3600)
    rb = ReplayBuffer(storage=storage)
    rb.extend(batch(10))
    storage.chunk_writer.land(wait=True)
    storage.chunk_writer.write_ahead.close()  # waits for the background fsyncs too
    early = {p for kind, p in fsyncs if kind == "fsync"}
    ahead = {path / leaf / f"c.{i}.0" for leaf in ("obs",) for i in (0, 1)}
    ahead |= {path / "a" / "c.0", path / "a" / "c.1"}
    assert ahead <= early  # fsynced by the background, before any flush
    fsyncs.clear()
    storage.flush()
    last = max(i for i, (kind, p) in enumerate(fsyncs) if p == path / "zarr.json")
    before = {p for kind, p in fsyncs[:last] if kind == "fsync"}
    files = {p for p in path.rglob("c.*") if p.is_file()}
    assert files <= before  # the head chunk, and any file whose early fsync had not finished
    assert {path / "obs", path / "a"} <= before  # the directory entries, once per directory
    storage.close()


def test_process_durability_writes_ahead_without_fsync(tmp_path, fsyncs):
    path = (tmp_path / "p.zarr").resolve()
    storage = ZarrStorage(None, path=path, chunk_rows=4, min_commit_interval=3600)
    storage.durability = "process"
    rb = ReplayBuffer(storage=storage)
    rb.extend(batch(10))
    storage.chunk_writer.land(wait=True)
    assert (path / "a" / "c.0").exists()
    assert not [p for kind, p in fsyncs if kind == "fsync"]
    storage.durability = "os"
    storage.close()  # the durable close fsyncs what was written ahead
    files = {p for p in path.rglob("c.*") if p.is_file()}
    assert files <= {p for kind, p in fsyncs if kind == "fsync"}
