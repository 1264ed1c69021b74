"""The chunk writer (``buffers/chunk_writer.py``) through its public methods."""

import torch
from parts_support import store_parts
from zarrl.buffers.chunk_writer import ChunkWriter
from zarrl.buffers.format import Commit
from zarrl.buffers.hot_tier import HotTier

R, ROWS = 4, 32


def _writer(path) -> ChunkWriter:
    log, ring, chunks = store_parts(path, ROWS, R, (2,))
    hot = HotTier(ring, log, chunks, cache="ram", device=torch.device("cpu"))
    hot.build(log.header)
    return ChunkWriter(ring, log, chunks, hot)


def _append(writer: ChunkWriter, n: int) -> None:
    phys = writer.ring.end + torch.arange(n)
    writer.stage(phys, {"obs": phys[:, None].repeat(1, 2)}, run=True)
    writer.ring.advance(n)


def test_staged_rows_reach_the_store_at_write_dirty_or_through_the_write_ahead(tmp_path):
    writer = _writer(tmp_path / "w.zarr")
    _append(writer, 10)  # chunks 0, 1 complete, chunk 2 partly filled
    assert writer.staged and writer.first_staged(99) == 0
    writer.start_write_ahead(fsync=False)
    writer.land(wait=True)
    assert writer.written_chunks == 2 and writer.first_staged(99) == 2  # the head stays
    writer.write_dirty()
    assert not writer.staged and writer.written_chunks == 3
    blocks = writer.chunks.load([0, 2])
    assert blocks[1]["obs"][:2, 0].tolist() == [8, 9]  # the partly filled head chunk


def test_a_rewrite_of_committed_rows_is_in_place_and_dead_chunks_are_deleted(tmp_path):
    writer = _writer(tmp_path / "w.zarr")
    _append(writer, 12)
    writer.write_dirty()
    writer.log.publish(Commit(revision=1, write_count=12, length=12, extent=ROWS), False, 0)
    writer.before_rewrite(torch.tensor([13]))  # past the commit: not in place
    assert not writer.in_place_pending
    writer.before_rewrite(torch.tensor([3]))
    assert writer.in_place_pending
    writer.committed(gc_below=8)  # chunks 0 and 1 are dead
    assert not writer.in_place_pending and writer.deleted_below == 2
    assert not (tmp_path / "w.zarr" / "obs" / "c.0.0").exists()
    assert (tmp_path / "w.zarr" / "obs" / "c.2.0").exists()
    writer.close()


def test_appends_to_fresh_chunks_read_nothing_from_the_store(tmp_path, monkeypatch):
    writer = _writer(tmp_path / "w.zarr")
    reads: list[list[int]] = []
    load = writer.chunks.load
    monkeypatch.setattr(writer.chunks, "load", lambda chunks, *a, **k: reads.append(chunks))
    _append(writer, 10)  # chunks 0-2 start empty: nothing stored to read
    writer.write_dirty()
    assert reads == []
    monkeypatch.setattr(writer.chunks, "load", load)
    writer.hot.pool.evict(2)  # the partly filled head chunk, stored by write_dirty
    monkeypatch.setattr(
        writer.chunks, "load", lambda chunks, *a, **k: reads.append(chunks) or load(chunks, *a, **k)
    )
    _append(writer, 1)
    assert reads == [[2]]  # read back before row 10 is added to it
    writer.write_dirty()
    assert writer.chunks.load([2])[0]["obs"][:3, 0].tolist() == [8, 9, 10]
