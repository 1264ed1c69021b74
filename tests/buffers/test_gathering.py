"""Reads by ring position (``buffers/gathering.py``) and ``ZarrStorage.read``."""

from __future__ import annotations

import pytest
import torch
from parts_support import call_while_locked
from tensordict import TensorDict
from zarrl.buffers import ZarrStorage


def rows(n: int) -> TensorDict:
    return TensorDict(
        {
            "done": torch.arange(n) % 3 == 0,  # an index column (RAM)
            "next": {"pixels": torch.arange(n * 64, dtype=torch.uint8).reshape(n, 64) % 251},
        },
        [n],
    )


def test_read_returns_only_the_keys_asked_for_at_ring_positions(tmp_path):
    storage = ZarrStorage(8, path=tmp_path / "r.zarr", chunk_rows=4)
    with pytest.raises(RuntimeError, match="non-initialized"):
        storage.read(torch.tensor([0]), ["done"])
    storage.set(torch.arange(12) % 8, rows(12))  # the ring wrapped: position 0 holds row 8
    got = storage.read(torch.tensor([0, 3]), ["next/pixels"])
    assert list(got) == ["next/pixels"]
    assert torch.equal(got["next/pixels"], rows(12)["next", "pixels"][[8, 11]])
    both = storage.read(torch.tensor([1]))
    assert set(both) == {"done", "next/pixels"} and both["done"].tolist() == [True]  # row 9
    storage.close()


def test_read_waits_for_the_storage_lock(tmp_path):
    storage = ZarrStorage(8, path=tmp_path / "l.zarr", chunk_rows=4)
    storage.set(torch.arange(4), rows(4))
    # a write (the pump thread's, say) holds the lock
    done = call_while_locked(storage.guard.lock, lambda _: storage.read(torch.tensor([2])))
    assert done and done[0]["done"].tolist() == [False]
    storage.close()


def test_lazy_rows_read_large_leaves_only_when_looked_up(tmp_path):
    storage = ZarrStorage(8, path=tmp_path / "z.zarr", chunk_rows=4)
    storage.set(torch.arange(6), rows(6))
    calls = []

    def read(positions, keys):
        calls.append((positions.tolist(), keys))
        return storage.read(positions, keys)

    view = storage.gatherer.lazy(torch.tensor([5, 1]), 2, read)
    assert view["done"].tolist() == [False, False] and calls == []
    assert torch.equal(view["next", "pixels"], rows(6)["next", "pixels"][[5, 1]])
    assert calls == [([5, 1], ["next/pixels"])]
    assert storage.gatherer.is_full_view((slice(None),), ndim=1)
    assert not storage.gatherer.is_full_view(slice(0, 3), ndim=1)
    storage.close()
