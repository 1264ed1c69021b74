"""The reader part (``buffers/reader.py``) through its public methods, following a writer."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import ReplayBuffer
from zarrl.buffers import ZarrStorage
from zarrl.buffers.chunk_io import StaleRead


def _rows(n: int, start: int = 0) -> TensorDict:
    i = torch.arange(start, start + n)
    return TensorDict({"obs": i.float()[:, None].repeat(1, 32), "done": i[:, None] % 5 == 4}, [n])


def test_polled_commits_are_adopted_into_ring_and_index_columns(tmp_path):
    path = tmp_path / "s.zarr"
    writer = ZarrStorage(32, path=path, chunk_rows=8, gc_grace_seconds=0)
    rb = ReplayBuffer(storage=writer)
    rb.extend(_rows(12))
    writer.flush()
    reader = ZarrStorage.open(path, mode="r").reader
    assert reader.ring.write_count == 12 and not reader.due(None) and reader.due(0)
    rb.extend(_rows(8, 12))
    writer.flush()
    _, header, commit = reader.poll()
    assert commit.write_count == 20 and not reader.needs_full(commit)  # appends only
    old = reader.log.commit
    reader.adopt(commit, full=False, since=old)
    assert reader.ring.write_count == 20
    done = reader.index.gather("done", torch.arange(20)).view(-1)
    assert torch.equal(done, torch.arange(20) % 5 == 4)
    rb.extend(_rows(40, 20))  # a whole ring later: rows 0..27 are recycled
    writer.flush()
    rb.extend(_rows(8, 60))
    writer.flush()  # a commit past the grace period deletes the dead chunks
    assert reader.needs_full(reader.log.latest())
    with pytest.raises(StaleRead, match="recycled"):
        reader.check_not_stale(0)
    writer.close()


def test_open_store_and_refresh_return_the_adopted_commit(tmp_path):
    import zarr
    from zarrl.buffers.format import StoreFormatError

    path = tmp_path / "o.zarr"
    writer = ZarrStorage(32, path=path, chunk_rows=8)
    reader = ZarrStorage.open(path, mode="r").reader
    assert reader.refresh() is None  # no schema yet: nothing to adopt
    ReplayBuffer(storage=writer).extend(_rows(10))
    writer.flush()
    commit = reader.refresh()
    assert commit.write_count == 10 and reader.log.header.chunk_rows == 8
    assert reader.refresh() is None  # nothing new since
    assert writer.reader.open_store(existsok=True).write_count == 10
    with pytest.raises(FileExistsError, match="already exists .*existsok=True"):
        writer.reader.open_store(existsok=False)
    writer.close()
    other = zarr.open_group(tmp_path / "plain.zarr", mode="w")
    other.attrs["note"] = "not a replay store"
    with pytest.raises(StoreFormatError, match="plain.zarr is a Zarr group but not a zarrl"):
        ZarrStorage(8, path=tmp_path / "plain.zarr", existsok=True)
