"""The chunk I/O part (``buffers/chunk_io.py``) through its public methods, on a store built
by ``ZarrStorage`` and on its own."""

import numpy as np
import pytest
import torch
from zarrl.buffers import CorruptChunkError
from zarrl.buffers.chunk_io import ChunkStore
from zarrl.buffers.commit_log import CommitLog, open_group
from zarrl.buffers.format import Commit, Header, LeafSpec
from zarrl.buffers.ring import Ring
from zarrl.buffers.seals import seal_spec

R = 4


def _store(path, capacity: int = 16) -> ChunkStore:
    log = CommitLog(open_group(path, "a"), str(path), max_size=capacity, ndim=1)
    schema = {"obs": LeafSpec("float32", (3,)), "done": LeafSpec("bool", (1,))}
    log.header = Header(
        capacity, 1, (), R, schema, ["done"], False, chunk_seals=seal_spec(["obs", "done"])
    )
    ring = Ring(capacity)
    ring.tail = ()
    chunks = ChunkStore(log, ring, read_only=False)
    chunks.attach(log.header, create=True)
    log.write()
    return chunks


def _block(start: int) -> dict:
    rows = np.arange(start, start + R, dtype=np.float32)
    return {"obs": np.repeat(rows[:, None], 3, 1), "done": (rows % 2 == 0)[:, None]}


def test_written_chunks_read_back_and_unwritten_ones_are_zeros(tmp_path):
    chunks = _store(tmp_path / "s.zarr")
    assert chunks.sync_codecs and chunks.log.commit.extent == 16  # sized to the ring at once
    chunks.write([(0, _block(0)), (1, _block(4))], io=[], fresh_from=0)
    chunks.log.publish(Commit(revision=1, write_count=8, length=8, extent=16), False, 0)
    first, second, unwritten = chunks.load([0, 1, 3])
    assert np.array_equal(second["obs"][:, 0], np.arange(4, 8, dtype=np.float32))
    assert not unwritten["obs"].any() and not unwritten["done"].any()
    rows = chunks.read_rows(["obs"], 2, 7)  # physical rows 2..6 across two chunks
    assert torch.equal(rows["obs"][:, 0], torch.arange(2, 7).float())


def test_a_chunk_swapped_for_another_is_refused_by_its_seal(tmp_path):
    chunks = _store(tmp_path / "s.zarr")
    chunks.write([(0, _block(0)), (1, _block(4))], io=[], fresh_from=0)
    chunks.log.publish(Commit(revision=1, write_count=8, length=8, extent=16), False, 0)
    obs = tmp_path / "s.zarr" / "obs"
    (obs / "c.0.0").write_bytes((obs / "c.1.0").read_bytes())  # a valid chunk, wrong place
    with pytest.raises(CorruptChunkError, match="'obs'.*chunk 0|chunk 0.*'obs'"):
        chunks.load([0])


def test_grow_and_drop(tmp_path):
    chunks = _store(tmp_path / "s.zarr")
    chunks.write([(0, _block(0))], io=[], fresh_from=0)
    chunks.log.publish(Commit(revision=1, write_count=4, length=4, extent=16), False, 0)
    chunks.grow(20)  # geometric: twice the extent
    assert chunks.log.commit.extent == 32 and chunks.arrays["obs"].shape[0] == 32
    chunks.drop(0, 1)
    assert not (tmp_path / "s.zarr" / "obs" / "c.0.0").exists()
