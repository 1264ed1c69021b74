"""Bulk appends (``buffers/bulk_append.py``): whole chunks written straight from the caller's
arrays store exactly what ``ZarrStorage.set`` stores, count only from the next commit, and an
abandoned append leaves the store at its last commit."""

from __future__ import annotations

import pytest
import torch
import zarr
from tensordict import TensorDict
from zarrl.buffers.bulk_append import BulkAppender
from zarrl.buffers.storage import ZarrStorage

R = 16
INDEX = ["traj", ("next", "done")]


def _rows(n: int, seed: int) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "action": torch.randint(0, 1000, (n,), generator=g),
            "logp": -torch.rand(n, generator=g),
            "obs": torch.randn(n, 3, generator=g),
            "traj": torch.arange(n) // 5 + 1000 * seed,
            ("next", "done"): torch.rand(n, generator=g) < 0.2,
        },
        batch_size=[n],
    )


def _same(a: ZarrStorage, b: ZarrStorage) -> None:
    assert len(a) == len(b)
    ta, tb = a[:], b[:]
    for key in ta.keys(True, True):
        assert torch.equal(ta[key], tb[key]), key


def test_bulk_appends_store_what_set_stores(tmp_path):
    """Pieces crossing chunk boundaries, in two sessions (the second starts inside a partly
    filled chunk): the same rows, readable (seal-checked) by a reopened storage and by plain
    zarr, as the same rows given to ``set``."""
    pieces = [_rows(7, 1), _rows(40, 2), _rows(3, 3), _rows(50, 4), _rows(1, 5)]
    ref = ZarrStorage(None, path=tmp_path / "ref", chunk_rows=R, index_keys=INDEX)
    for td in pieces:
        n = len(ref)
        ref.set(torch.arange(n, n + td.shape[0]), td)
    ref.close()

    bulk = ZarrStorage(None, path=tmp_path / "bulk", chunk_rows=R, index_keys=INDEX)
    appender = BulkAppender(bulk)
    for td in pieces[:2]:
        appender.append(td)
    appender.finish()
    assert len(bulk) == 47
    bulk.close()
    bulk = ZarrStorage.open(tmp_path / "bulk", min_commit_interval=3600)
    appender = BulkAppender(bulk)
    for td in pieces[2:]:
        appender.append(td)
    bulk.chunk_writer.land(wait=True)
    assert sorted(bulk.hot.pool.dirty) == [2]  # chunks 3 to 5 were never staged in the pool
    assert bulk.chunk_writer.written_chunks == 6
    appender.finish()
    _same(bulk, ZarrStorage.open(tmp_path / "ref", mode="r"))  # the writer's own view
    bulk.close()
    _same(
        ZarrStorage.open(tmp_path / "bulk", mode="r"), ZarrStorage.open(tmp_path / "ref", mode="r")
    )
    plain_ref = zarr.open_group(str(tmp_path / "ref"), mode="r")
    plain = zarr.open_group(str(tmp_path / "bulk"), mode="r")
    for path in ("action", "logp", "obs", "traj", "next/done"):
        assert (plain[path][:101] == plain_ref[path][:101]).all(), path


def test_bulk_rows_count_only_from_the_commit_and_abandon_keeps_the_last_one(tmp_path):
    path = tmp_path / "s"
    storage = ZarrStorage(None, path=path, chunk_rows=R, index_keys=INDEX)
    first = _rows(20, 1)
    storage.set(torch.arange(20), first)
    storage.close()

    storage = ZarrStorage.open(path, min_commit_interval=3600)
    appender = BulkAppender(storage)
    appender.append(_rows(60, 2))  # chunks 2 and 3 written ahead, past the commit
    storage.chunk_writer.land(wait=True)
    assert (path / "action" / "c.3").exists()
    reader = ZarrStorage.open(path, mode="r")
    assert len(reader) == 20  # nothing counted before a commit
    appender.abandon()
    assert storage.closed
    reopened = ZarrStorage.open(path, mode="r")
    assert len(reopened) == 20
    assert torch.equal(reopened[:]["obs"], first["obs"])

    storage = ZarrStorage.open(path, min_commit_interval=3600)  # the leftovers are overwritten
    again = _rows(45, 3)
    appender = BulkAppender(storage)
    appender.append(again)
    appender.finish()
    storage.close()
    reopened = ZarrStorage.open(path, mode="r")
    assert len(reopened) == 65
    assert torch.equal(reopened[:]["action"], torch.cat([first["action"], again["action"]]))


def test_append_chunks_refuses_what_it_cannot_append(tmp_path):
    storage = ZarrStorage(None, path=tmp_path / "a", chunk_rows=R)
    storage.set(torch.arange(3), _rows(3, 1))
    with pytest.raises(
        ValueError,
        match=r"whole chunks of 16 rows from a chunk boundary; got 16 rows at physical row 3",
    ):
        storage.append_chunks(_rows(16, 2))
    with pytest.raises(ValueError, match="does not match the stored schema"):
        storage.append_chunks(_rows(13, 3).exclude("obs"))
    assert len(storage) == 3
    storage.close()
    ring = ZarrStorage(100, path=tmp_path / "ring", chunk_rows=R)
    with pytest.raises(ValueError, match="a ring of fixed capacity"):
        BulkAppender(ring)
    ring.close()


def test_a_partly_counted_last_chunk_reads_back_and_takes_more_rows_in_the_same_session(
    tmp_path,
):
    """``finish`` writes the last, partly filled chunk in bulk with zeros past its rows; rows
    ``set`` right after it (same session, before any reopening) land in that chunk without
    losing the rows before them."""
    rows, more = _rows(40, 7), _rows(5, 8)  # 2 whole chunks + 8 rows, then 5 more
    storage = ZarrStorage(None, path=tmp_path / "s", chunk_rows=R, index_keys=INDEX)
    appender = BulkAppender(storage)
    appender.append(rows)
    appender.finish()
    assert len(storage) == 40
    storage.set(torch.arange(40, 45), more)
    storage.flush()
    storage.close()
    reopened = ZarrStorage.open(tmp_path / "s", mode="r")
    got = reopened[:]
    for key in rows.keys(True, True):
        assert torch.equal(got[key], torch.cat([rows[key], more[key]])), key
    reopened.close()
    action = zarr.open_array(tmp_path / "s" / "action", mode="r")
    assert not action[45:48].any()  # past the rows of the last chunk: zeros


def test_append_chunks_counts_rows_of_its_last_chunk_only(tmp_path):
    storage = ZarrStorage(None, path=tmp_path / "a", chunk_rows=R)
    for bad in (0, 16, 33):
        with pytest.raises(ValueError, match=f"counts between 17 and 32 of them.*not {bad}"):
            storage.append_chunks(_rows(32, 1), rows=bad)
    assert len(storage) == 0
    storage.append_chunks(_rows(32, 1), rows=20)
    assert len(storage) == 20
    storage.close()


def test_bulk_chunks_and_their_directories_are_fsynced_before_the_commit(tmp_path, fsync_events):
    path = (tmp_path / "d").resolve()
    storage = ZarrStorage(None, path=path, chunk_rows=R, index_keys=INDEX)
    appender = BulkAppender(storage)
    appender.append(_rows(70, 1))  # chunks 0 to 3 in bulk, 6 rows through the pool
    appender.finish()
    last = max(i for i, (kind, p) in enumerate(fsync_events) if p == path / "zarr.json")
    before = {p for kind, p in fsync_events[:last] if kind == "fsync"}
    chunks = {p for p in path.rglob("c.*") if p.is_file() and p.parent.name != "seals"}
    assert len(chunks) == 5 * 5 and chunks <= before  # 5 leaves, 4 bulk chunks and the head
    assert {path / "action", path / "next" / "done"} <= before  # their directory entries
    storage.close()


def test_a_writer_without_the_index_mirror_samples_from_the_chunks(tmp_path):
    """``mirror_index=False``: no RAM column is kept (none reloaded at opening, none written
    by appends), slices are still drawn by trajectory and rows read back exactly; the store's
    ``index_keys`` stay what readers mirror; pickles carry the option."""
    from torchrl.data import ReplayBuffer, SliceSampler

    rows = _rows(70, 1)
    storage = ZarrStorage(None, path=tmp_path / "s", chunk_rows=R, index_keys=INDEX)
    storage.set(torch.arange(30), rows[:30])
    storage.close()
    writer = ZarrStorage.open(tmp_path / "s", mirror_index=False)
    assert not writer.index.columns  # the committed rows' columns were not reloaded
    appender = BulkAppender(writer)
    appender.append(rows[30:])
    appender.finish()
    assert not writer.index.columns
    assert torch.equal(writer[torch.arange(70)]["traj"], rows["traj"])
    rb = ReplayBuffer(
        storage=writer, sampler=SliceSampler(slice_len=5, traj_key="traj"), batch_size=20
    )
    batch = rb.sample()
    assert (batch["traj"].view(4, 5) == batch["traj"].view(4, 5)[:, :1]).all()
    assert writer.init_options["mirror_index"] is False  # what a pickle reopens it with
    writer.close()
    reader = ZarrStorage.open(tmp_path / "s", mode="r")
    assert sorted(reader.index.columns) == ["next/done", "traj"]
    assert torch.equal(reader[torch.arange(70)]["action"], rows["action"])
    reader.close()


def test_chunk_buffers_are_reused_in_turn_and_every_row_lands_intact(tmp_path):
    """Many whole chunks from pieces of odd sizes: only ``BACKLOG + 1`` chunk buffers are
    made, and a buffer refilled while earlier chunks are written ahead corrupts none of them."""
    from zarrl.buffers.bulk_append import BACKLOG

    rows = _rows(16 * 12 + 5, 2)
    storage = ZarrStorage(None, path=tmp_path / "s", chunk_rows=R, index_keys=INDEX)
    appender = BulkAppender(storage)
    at = 0
    for size in (3, 29, 16, 1, 50, 7, 64, 27):
        appender.append(rows[at : at + size])
        at += size
    assert at == rows.shape[0]
    assert len(appender.buffers) == BACKLOG + 1
    appender.finish()
    storage.close()
    reopened = ZarrStorage.open(tmp_path / "s", mode="r")
    got = reopened[:]
    for key in rows.keys(True, True):
        assert torch.equal(got[key], rows[key]), key
    reopened.close()
