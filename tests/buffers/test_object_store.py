"""Stores on object storage (``buffers/object_store.py``): URLs, S3 through zarr's obstore-backed
store against a moto server started by the tests, and the conditional commit."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import ReplayBuffer
from zarrl.buffers import CorruptChunkError, ZarrStorage
from zarrl.buffers.errors import CommitConflictError
from zarrl.buffers.object_store import open_store, parse_url, s3_config
from zarrl.buffers.verify import verify_store

pytest.importorskip("obstore", reason="obstore is not installed: pip install 'zarrl[scale]'")

R = 8  # chunk rows
HERE = Path(__file__).parent


def batch(n: int, start: int = 0) -> TensorDict:
    i = torch.arange(start, start + n)
    obs = i.double()[:, None] * torch.arange(1, 6).double() / 7
    return TensorDict(
        {
            "obs": obs.float(),
            "action": torch.stack([i, -3 * i], -1),
            ("next", "obs"): (obs + 1).float(),
            ("next", "done"): (i % 5 == 4)[:, None],
        },
        batch_size=[n],
    )


def read_all(url: str, options: dict | None) -> TensorDict:
    with ZarrStorage.open(url, "r", storage_options=options) as storage:
        return storage.get(torch.arange(len(storage)))


def objects(url: str, options: dict) -> list[str]:
    import obstore

    store = open_store(url, options)
    return sorted(m["path"] for page in obstore.list(store.store) for m in page)


def test_urls_parse_and_unknown_schemes_are_refused(tmp_path, monkeypatch):
    assert parse_url("s3://bkt/a/b.zarr/") == parse_url("S3://bkt/a/b.zarr")
    assert str(parse_url("s3://bkt/a/b.zarr")) == "s3://bkt/a/b.zarr"
    assert parse_url("file:///x/y").prefix == "/x/y"
    assert s3_config({"endpoint_url": "http://h:1", "key": "k"}) == {
        "endpoint": "http://h:1",
        "access_key_id": "k",
        "allow_http": True,
    }
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"scheme 'gs' is not supported.*s3://"):
        ZarrStorage(10, path="gs://bkt/run.zarr")
    with pytest.raises(ValueError, match="no bucket"):
        ZarrStorage(10, path="s3:///run.zarr")
    with pytest.raises(ValueError, match="absolute path"):
        parse_url("file://rel/x")
    assert list(tmp_path.iterdir()) == []  # no local folder named 'gs:' or 's3:'


def test_an_s3_url_writes_to_the_bucket_not_a_local_folder(s3, tmp_path, monkeypatch):
    bucket, options = s3
    monkeypatch.chdir(tmp_path)
    with ZarrStorage(
        100, path=f"{bucket}/runs/a.zarr", chunk_rows=R, storage_options=options
    ) as st:
        ReplayBuffer(storage=st).extend(batch(12))
    assert list(tmp_path.iterdir()) == []  # before: a folder 's3:' in the working directory
    keys = objects(f"{bucket}/runs/a.zarr", options)
    assert "zarr.json" in keys and "obs/c.0.0" in keys
    assert objects(bucket, options) == [f"runs/a.zarr/{k}" for k in keys]


@pytest.mark.parametrize("url", ["s3", "memory"])
def test_create_extend_flush_reopen_bit_exact(s3, url, tmp_path):
    bucket, options = s3
    if url == "memory":
        url, options = f"memory://{tmp_path.name}/run.zarr", None
    else:
        url = f"{bucket}/run.zarr"
    with ZarrStorage(None, path=url, chunk_rows=R, storage_options=options) as st:
        rb = ReplayBuffer(storage=st)
        rb.extend(batch(13))
        st.flush()
        rb.extend(batch(30, 13))
    with ZarrStorage.open(url, storage_options=options) as st:  # continues after its rows
        assert st.rows_at_open == 43
        ReplayBuffer(storage=st).extend(batch(5, 43))
    got, want = read_all(url, options), batch(48)
    for key in want.keys(True, True):
        assert torch.equal(got[key], want[key]), key
    if options is not None:
        assert verify_store(open_store(url, options)) == []


def test_the_hot_tier_and_a_refreshing_reader_on_s3(s3):
    bucket, options = s3
    url = f"{bucket}/run.zarr"
    writer = ZarrStorage(64, path=url, chunk_rows=R, storage_options=options, cache="ram")
    rb = ReplayBuffer(storage=writer, batch_size=16)
    rb.extend(batch(20))
    writer.flush()
    reader = ZarrStorage.open(url, "r", storage_options=options, cache=R * 200)
    assert len(reader) == 20
    rb.extend(batch(30, 20))  # the ring wraps past 64 rows: 50 rows live
    rb.extend(batch(30, 50))
    writer.flush()
    assert reader.refresh() and len(reader) == 64
    got = reader.get(torch.arange(64))
    assert torch.equal(got["action"], writer.get(torch.arange(64))["action"])
    assert set(got["action"][:, 0].tolist()) == set(range(16, 80))
    sample = rb.sample()
    ids = sample["action"][:, 0]
    assert sample.shape == (16,) and torch.equal(sample["obs"], batch(80)["obs"][ids])
    reader.close()
    writer.close()


def test_a_stale_second_writer_cannot_commit_over_the_first(s3):
    bucket, options = s3
    url = f"{bucket}/run.zarr"
    with ZarrStorage(None, path=url, chunk_rows=R, storage_options=options) as st:
        ReplayBuffer(storage=st).extend(batch(16))
    first = ZarrStorage.open(url, storage_options=options)
    second = ZarrStorage.open(url, storage_options=options)  # read the same revision
    ReplayBuffer(storage=first).extend(batch(8, 16))
    first.flush()
    ReplayBuffer(storage=second).extend(batch(3, 100))
    with pytest.raises(CommitConflictError) as err:
        second.flush()
    message = str(err.value)
    assert url in message and "another writer committed revision" in message
    assert "write_count=24" in message
    second.guard.closed = True  # abandoned: its close must not retry the refused commit
    first.close()
    got = read_all(url, options)  # the first writer's rows, all of them, none of the second's
    assert torch.equal(got["action"], batch(24)["action"])


def test_a_commit_raced_past_the_chunk_check_is_still_refused(s3, monkeypatch):
    from zarrl.buffers import object_store

    bucket, options = s3
    url = f"{bucket}/run.zarr"
    with ZarrStorage(None, path=url, chunk_rows=R, storage_options=options) as st:
        ReplayBuffer(storage=st).extend(batch(8))
    first = ZarrStorage.open(url, storage_options=options)
    second = ZarrStorage.open(url, storage_options=options)
    ReplayBuffer(storage=first).extend(batch(8, 8))
    first.flush()

    async def no_check(store, key="zarr.json"):
        return None

    monkeypatch.setattr(object_store, "check_fence", no_check)
    ReplayBuffer(storage=second).extend(batch(4, 50))
    with pytest.raises(CommitConflictError, match=r"committed revision \d+ \(write_count=16"):
        second.flush()
    second.guard.closed = True
    first.close()
    with ZarrStorage.open(url, "r", storage_options=options) as reader:
        assert len(reader) == 16  # the first writer's commit stands


def test_a_corrupt_chunk_on_s3_is_detected_naming_array_and_chunk(s3):
    import obstore

    bucket, options = s3
    url = f"{bucket}/run.zarr"
    with ZarrStorage(64, path=url, chunk_rows=R, storage_options=options) as st:
        ReplayBuffer(storage=st).extend(batch(40))
    store = open_store(url, options)
    raw = bytearray(bytes(obstore.get(store.store, "next/obs/c.2.0").bytes()))
    raw[len(raw) // 2] ^= 0xFF
    obstore.put(store.store, "next/obs/c.2.0", bytes(raw))
    with pytest.raises(CorruptChunkError, match=r"next/obs"):
        read_all(url, options)
    (problem,) = verify_store(store)
    assert (problem.array, problem.chunk) == ("next/obs", 2)


def test_a_pickled_s3_storage_reopens_with_its_storage_options(s3):
    bucket, options = s3
    url = f"{bucket}/run.zarr"
    with ZarrStorage(None, path=url, chunk_rows=R, storage_options=options) as st:
        ReplayBuffer(storage=st).extend(batch(10))
    reader = ZarrStorage.open(url, "r", storage_options=options)
    copy = pickle.loads(pickle.dumps(reader))
    assert copy.where == url and len(copy) == 10
    assert torch.equal(copy.get(torch.arange(10))["action"], batch(10)["action"])


CHILD = textwrap.dedent(
    """
    import sys, json
    sys.path.insert(0, {here!r})
    from store_worker import rows
    from zarrl.buffers import ZarrStorage
    from torchrl.data import ReplayBuffer
    options = json.loads({options!r})
    st = ZarrStorage(None, path={url!r}, chunk_rows=16, storage_options=options)
    rb = ReplayBuffer(storage=st)
    n = 0
    while True:
        rb.extend(rows(n, 11)); n += 11
        if n % 3 == 0:
            st.flush(); print(n, flush=True)
    """
)


def start_s3_writer(url: str, options: dict) -> subprocess.Popen:
    """A writer process (``CHILD``) extending the store at ``url`` and printing its row count
    after each commit, one line each."""
    import json

    code = CHILD.format(here=str(HERE), options=json.dumps(options), url=url)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_a_sigkilled_s3_writer_leaves_the_store_at_its_last_commit(s3):
    sys.path.insert(0, str(HERE))
    from store_worker import check_rows

    bucket, options = s3
    url = f"{bucket}/run.zarr"
    child = start_s3_writer(url, options)
    committed = []
    deadline = time.monotonic() + 120
    while len(committed) < 4 and time.monotonic() < deadline:
        committed.append(int(child.stdout.readline()))
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert len(committed) == 4, "the writer did not commit in time"
    with ZarrStorage.open(url, "r", storage_options=options) as reader:
        assert len(reader) >= committed[-1]
        ids = check_rows(reader.get(torch.arange(len(reader))))
    assert torch.equal(ids, torch.arange(len(ids)))


def test_a_checkpoint_to_a_store_url_is_written_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"memory://{tmp_path.name}/ckpt.zarr"
    with ZarrStorage(None, path=tmp_path / "run.zarr", chunk_rows=R) as st:
        ReplayBuffer(storage=st).extend(batch(20))
        st.dumps(url)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.zarr"]  # no 'memory:' folder
    assert torch.equal(read_all(url, None)["action"], batch(20)["action"])


def test_a_reader_process_beside_an_s3_writer_never_sees_a_torn_row(s3):
    sys.path.insert(0, str(HERE))
    from store_worker import check_rows

    bucket, options = s3
    url = f"{bucket}/run.zarr"
    child = start_s3_writer(url, options)
    try:
        first = int(child.stdout.readline())  # the store exists with rows
        reader = ZarrStorage.open(url, "r", storage_options=options)
        seen = [len(reader)]
        deadline = time.monotonic() + 120
        while len(set(seen)) < 4 and time.monotonic() < deadline:
            reader.refresh()
            n = len(reader)
            ids = check_rows(reader.get(torch.arange(n)))  # every visible row whole
            assert torch.equal(ids, torch.arange(n))
            seen.append(n)
        assert len(set(seen)) >= 4 and seen[0] >= first, seen  # it saw new commits
        reader.close()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
