"""Crash safety and concurrent readers, with real subprocesses.

A writer process is SIGKILLed at random moments many times; after each kill the store must open
without error at its last commit, every visible row bit-exact and whole."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from zarrl.buffers import ZarrStorage, verify_store

sys.path.insert(0, str(Path(__file__).parent))
from store_worker import check_rows, rows  # noqa: E402

WORKER = str(Path(__file__).parent / "store_worker.py")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def zygote():
    """One pre-imported process that forks writer children (start-up paid once)."""
    proc = subprocess.Popen(
        [sys.executable, WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    yield proc
    proc.stdin.write("quit 0\n")
    proc.stdin.flush()
    proc.wait(timeout=60)


@pytest.mark.parametrize("max_size", [150, None], ids=["ring", "growing"])
def test_sigkilled_writer_leaves_store_at_last_commit(tmp_path, zygote, max_size):
    path = str(tmp_path / "crash.zarr")
    rng = random.Random(0)
    last_wc, kills = 0, 0
    if True:
        for round_ in range(10):
            zygote.stdin.write(f"go {round_} {path} {str(max_size).lower()}\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            time.sleep(rng.uniform(0.15, 0.6))
            os.kill(pid, signal.SIGKILL)
            kills += 1
            if not os.path.exists(path):
                continue
            assert verify_store(path) == []  # every committed chunk in its place, sealed
            storage = ZarrStorage.open(path, mode="r")  # must not raise
            if storage.log.header is not None:  # the duplicated next obs is stored XORed
                assert storage.log.header.xor_previous == {"obs": "next/obs"}
            wc = storage.ring.write_count
            assert wc >= last_wc  # commits never go backwards
            n = len(storage)
            assert n == (wc if max_size is None else min(wc, max_size))
            if n:
                ids = check_rows(storage[torch.arange(n)])
                assert sorted(ids.tolist()) == list(range(wc - n, wc))
            last_wc = wc
    assert kills == 10 and last_wc > 0


def test_reader_process_sees_new_commits_and_never_a_torn_row(tmp_path, zygote):
    path = str(tmp_path / "shared.zarr")
    writer = ZarrStorage(120, path=path, chunk_rows=16)
    writer.set(torch.arange(5), rows(0, 5))
    writer.flush()
    batches, n = 80, 9
    target = 5 + batches * n
    zygote.stdin.write(f"read {target} {path} -\n")  # a forked reader process
    zygote.stdin.flush()
    assert zygote.stdout.readline().strip() == "ready"
    next_id = 5
    for _ in range(batches):  # ring of 120: recycles rows while the reader follows
        positions = (next_id + torch.arange(n)) % 120
        writer.set(positions, rows(next_id, n))
        next_id += n
        writer.flush()
        time.sleep(0.02)
    ready, _, _ = select.select([zygote.stdout], [], [], 60)
    assert ready, "the reader process did not finish"
    summary = json.loads(zygote.stdout.readline())
    assert "error" not in summary, summary["error"]
    assert summary["states"] >= 3  # it saw several successive commits
    assert summary["wc"] == next_id  # and ends on the writer's last one
    assert summary["checked"] > 0


def test_only_chunks_without_committed_rows_are_written_in_place(tmp_path, monkeypatch):
    """A chunk holding committed rows (the partly filled head chunk) and every metadata object
    are replaced atomically; chunks past the commit are written in place."""
    import zarrl.buffers.store_io as store_io

    writes = []
    real = store_io.write_file

    def spy(path, data, atomic=True, durable=False, **kwargs):
        writes.append((path.parent.name, path.name, atomic))
        real(path, data, atomic, durable, **kwargs)

    monkeypatch.setattr(store_io, "write_file", spy)
    storage = ZarrStorage(100, path=str(tmp_path / "w.zarr"), chunk_rows=16)
    storage.set(torch.arange(5), rows(0, 5))
    storage.flush()  # chunk 0 had no committed row: in place
    assert ("action", "c.0.0", False) in writes
    writes.clear()
    storage.set(torch.arange(5, 40), rows(5, 35))
    storage.flush()  # chunk 0 now holds rows 0..4: atomic; chunks 1 and 2 are fresh
    assert ("action", "c.0.0", True) in writes
    assert ("action", "c.1.0", False) in writes and ("action", "c.2.0", False) in writes
    assert all(atomic for _, name, atomic in writes if name == "zarr.json")
    reopened = ZarrStorage.open(str(tmp_path / "w.zarr"), mode="r")
    assert check_rows(reopened[torch.arange(40)]).tolist() == list(range(40))


def test_staged_head_chunk_written_past_the_commit_is_reloaded_after_eviction(tmp_path):
    """A write larger than the cache stores its chunks before the commit covers the partly
    filled head chunk; if the cache then evicts that chunk, the next append must reload it
    from the store (it is not all zeros just because no commit covers it yet)."""
    path = str(tmp_path / "evict.zarr")
    storage = ZarrStorage(None, path=path, chunk_rows=4, cache=1, min_commit_interval=0)
    storage.set(torch.arange(10), rows(0, 10))  # chunks 0..2, head chunk 2 holds rows 8, 9
    assert storage.log.commit.write_count == 8
    storage.hot.pool.evict(2)  # as sampling other chunks would
    storage.set(torch.arange(10, 12), rows(10, 2))
    storage.close()
    reopened = ZarrStorage.open(path, mode="r")
    assert check_rows(reopened[torch.arange(12)]).tolist() == list(range(12))


def test_completed_chunks_commit_at_most_every_min_commit_interval(tmp_path):
    eager = ZarrStorage(None, path=str(tmp_path / "a.zarr"), chunk_rows=4, min_commit_interval=0)
    eager.set(torch.arange(9), rows(0, 9))
    assert eager.log.commit.write_count == 8  # every completed chunk commits
    lazy = ZarrStorage(None, path=str(tmp_path / "b.zarr"), chunk_rows=4, min_commit_interval=60)
    lazy.set(torch.arange(9), rows(0, 9))
    assert lazy.log.commit.write_count == 0  # a bulk load within the interval: staged only
    lazy.flush_every_rows = 12
    lazy.set(torch.arange(9, 13), rows(9, 4))
    assert lazy.log.commit.write_count == 12  # explicit triggers are not rate-limited
    lazy.close()
    eager.close()
    assert ZarrStorage.open(str(tmp_path / "b.zarr"), mode="r").ring.write_count == 13
