"""Pickling and ``copy.deepcopy`` of replay buffers on a ``ZarrStorage`` (``buffers/pickling.py``):
a pickle is a reference to the store, reopened on load; a deepcopy is an independent copy; a
second writer on one store is refused by name."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyMemmapStorage, TensorDictReplayBuffer
from zarrl.buffers import ZarrStorage
from zarrl.buffers._compat_torchrl import attached_buffers


def rows(start: int, n: int) -> TensorDict:
    return TensorDict({"obs": torch.arange(start, start + n, dtype=torch.float32)}, [n])


@pytest.mark.parametrize("filled", [False, True])
def test_deepcopy_is_an_independent_copy_like_lazy_memmap(tmp_path, filled):
    buffers = {
        "memmap": TensorDictReplayBuffer(storage=LazyMemmapStorage(10), batch_size=2),
        "zarr": TensorDictReplayBuffer(
            storage=ZarrStorage(10, path=tmp_path / "b.zarr", chunk_rows=4), batch_size=2
        ),
    }
    for name, rb in buffers.items():
        if filled:
            rb.extend(rows(0, 5))
        twin = copy.deepcopy(rb)
        assert len(twin) == len(rb), name
        assert twin.storage is not rb.storage and rb in attached_buffers(rb.storage)
        assert twin in attached_buffers(twin.storage)
        twin.extend(rows(100, 2))  # the copy writes into its own store
        assert len(twin) == len(rb) + 2 and len(rb) == (5 if filled else 0), name
        assert torch.equal(twin[:]["obs"][-2:], torch.tensor([100.0, 101.0])), name
        if filled:
            assert torch.equal(rb[:]["obs"], torch.arange(5.0)), name
            assert torch.equal(twin[:]["obs"][:5], torch.arange(5.0)), name
            assert twin.sample()["obs"].shape == (2,)
    copied = buffers["zarr"]
    twin = copy.deepcopy(copied)
    where = twin.storage.location
    assert where.exists() and where != tmp_path / "b.zarr"
    twin.storage.close()  # a temporary store: removed with its copy
    assert not where.exists()


def test_pickle_reopens_the_store_once_the_writer_is_closed(tmp_path):
    storage = ZarrStorage(10, path=tmp_path / "b.zarr", chunk_rows=4)
    rb = TensorDictReplayBuffer(storage=storage, batch_size=3)
    rb.extend(rows(0, 6))  # not yet committed: pickling flushes
    blob = pickle.dumps(rb)
    with pytest.raises(RuntimeError, match="already has a writer open.*deepcopy.*mode='r'"):
        pickle.loads(blob)
    storage.close()
    again = pickle.loads(blob)
    assert isinstance(again.storage, ZarrStorage) and not again.storage.read_only
    assert again in attached_buffers(again.storage)
    assert len(again) == 6 and torch.equal(again[:]["obs"], torch.arange(6.0))
    again.extend(rows(6, 2))  # the writer cursor came with the buffer
    assert torch.equal(again[:]["obs"], torch.arange(8.0))
    assert again.storage.init_options["chunk_rows"] == 4


def test_pickle_of_an_empty_buffer_and_of_a_reader(tmp_path):
    path = tmp_path / "b.zarr"
    empty = TensorDictReplayBuffer(storage=ZarrStorage(10, path=path))
    blob = pickle.dumps(empty)
    empty.storage.close()
    loaded = pickle.loads(blob)
    assert len(loaded) == 0 and not loaded.storage.initialized
    loaded.extend(rows(0, 3))
    loaded.storage.close()
    reader = ZarrStorage.open(path, mode="r")
    twin = pickle.loads(pickle.dumps(reader))  # readers never conflict
    assert twin.read_only and torch.equal(twin[:]["obs"], torch.arange(3.0))
    copied = copy.deepcopy(reader)
    assert copied.read_only and copied.where == reader.where


def test_temporary_store_pickles_as_a_reference_too():
    storage = ZarrStorage(10)
    storage.set(torch.arange(3), rows(0, 3))
    blob = pickle.dumps(storage)
    with pytest.raises(RuntimeError, match="already has a writer"):
        pickle.loads(blob)
    twin = copy.deepcopy(storage)
    storage.close()  # the original temporary store is removed; the copy has its own
    assert torch.equal(twin[:]["obs"], torch.arange(3.0))


def test_pickling_functions_reference_copy_and_refuse_a_reader_as_worker_writer(tmp_path):
    from zarrl.buffers import pickling
    from zarrl.buffers.format import ReadOnlyStorageError

    storage = ZarrStorage(10, path=tmp_path / "p.zarr", chunk_rows=4)
    storage.set(torch.arange(3), rows(0, 3))
    unpickle, (ref,), state = pickling.reduce(storage, dict)
    assert unpickle is dict and state == {"attached": []}
    assert ref["store"] == str(tmp_path / "p.zarr") and not ref["read_only"]
    assert ZarrStorage.open(tmp_path / "p.zarr", mode="r").get(torch.arange(3))["obs"].tolist() == [
        0.0,
        1.0,
        2.0,
    ]  # reduce flushed first
    pickling.check_sendable(storage)
    copy, temporary = pickling.copy_of(storage)
    assert temporary is not None and copy.where == str(temporary)
    copy.set(torch.arange(1), rows(50, 1))
    assert storage.get(torch.arange(1))["obs"].tolist() == [0.0]  # independent
    copy.close()
    storage.close()
    reader = ZarrStorage.open(tmp_path / "p.zarr", mode="r")
    with pytest.raises(ReadOnlyStorageError, match="cannot become a writer in another process"):
        pickling.check_sendable(reader)
    twin, temporary = pickling.copy_of(reader)
    assert temporary is None and twin.read_only and twin.where == reader.where
    twin.close()
    reader.close()
