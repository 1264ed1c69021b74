"""The decoded-chunk pool: bounded slots, pinned dirty chunks, reads larger than the pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from zarrl.buffers.chunk_pool import ChunkPool
from zarrl.buffers.format import LeafSpec

R = 4


def loader(calls: list):
    def load(chunks: list[int]):
        calls.extend(chunks)
        rows = [np.arange(c * R, (c + 1) * R) for c in chunks]
        return [{"x": r.astype("float32")[:, None].repeat(3, 1)} for r in rows]

    return load


def make_pool(n_slots: int) -> ChunkPool:
    return ChunkPool({"x": LeafSpec("float32", (3,))}, (), R, n_slots, 64, torch.device("cpu"))


def test_gather_reads_each_missing_chunk_once_and_serves_hits_from_ram():
    pool, calls = make_pool(4), []
    phys = torch.tensor([0, 5, 1, 6, 13])
    assert torch.equal(pool.gather(phys, loader(calls))["x"][:, 0], phys.float())
    assert sorted(calls) == [0, 1, 3]
    pool.gather(torch.tensor([2, 7]), loader(calls))
    assert sorted(calls) == [0, 1, 3]


def test_a_read_touching_more_chunks_than_slots_is_served_in_groups():
    pool, calls = make_pool(2), []
    phys = torch.arange(0, 40, 3)  # 10 chunks through a 2-slot pool
    assert torch.equal(pool.gather(phys, loader(calls))["x"][:, 0], phys.float())
    assert pool.n_slots == 2


def test_dirty_chunks_are_never_evicted_until_marked_clean():
    pool, calls = make_pool(2), []
    pool.write(torch.tensor([0, 1]), {"x": torch.full((2, 3), -1.0)}, lambda cs: [None] * len(cs))
    pool.write(torch.tensor([4]), {"x": torch.full((1, 3), -2.0)}, lambda cs: [None] * len(cs))
    with pytest.raises(MemoryError, match="unflushed"):
        pool.install(9, None)
    pool.mark_clean([1])
    pool.gather(torch.tensor([36]), loader(calls))  # evicts chunk 1, keeps dirty chunk 0
    assert pool.gather(torch.tensor([0]), loader(calls))["x"][0, 0] == -1.0
    assert 0 in pool.dirty and calls == [9]


def test_dead_chunk_sharing_a_map_entry_is_dropped_not_a_collision():
    pool, calls = make_pool(8), []
    pool.remap(4)
    pool.install(1, None)
    pool.install(5, None)  # 5 % 4 == 1 % 4: chunk 1 is older, out of any live span
    assert pool.slots_of(torch.tensor([1, 5])).tolist()[0] == -1
    assert pool.slots_of(torch.tensor([5]))[0] >= 0
    assert calls == []


def test_collision_with_a_protected_chunk_still_raises():
    pool = make_pool(8)
    pool.remap(4)
    pool.install(1, None)
    with pytest.raises(RuntimeError, match="chunk map collision"):
        pool.install(5, None, protect=frozenset({1}))


@pytest.mark.parametrize(("capacity", "chunk_rows"), [(100, 16), (256, 32)])
def test_ring_not_a_chunk_multiple_wraps_many_times_and_reopens_bit_exact(
    tmp_path, capacity, chunk_rows
):
    from tensordict import TensorDict
    from torchrl.data import RandomSampler, TensorDictReplayBuffer
    from zarrl.buffers import ZarrStorage

    path = tmp_path / "ring.zarr"
    storage = ZarrStorage(capacity, path=path, cache="ram", compressors=[], chunk_rows=chunk_rows)
    rb = TensorDictReplayBuffer(storage=storage, sampler=RandomSampler(), batch_size=8)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):  # ~25 wrap-arounds: dead chunks linger in the cache until GC
        batch = TensorDict({"x": torch.randn(64, 5, 2, generator=gen)}, [64])
        index = rb.extend(batch)
        assert torch.equal(storage.get(index)["x"], batch["x"])
        rb.sample()
    storage.flush()
    live = storage.get(torch.arange(capacity))["x"].clone()
    storage.close()
    reopened = ZarrStorage.open(path, mode="r")
    assert torch.equal(reopened.get(torch.arange(capacity))["x"], live)


def test_version_changes_exactly_when_residency_changes():
    pool, calls = make_pool(2), []
    v0 = pool.version
    pool.gather(torch.tensor([0, 1]), loader(calls))  # installs chunk 0
    v1 = pool.version
    assert v1 != v0
    pool.gather(torch.tensor([2, 3]), loader(calls))  # a hit: residency unchanged
    assert pool.version == v1
    pool.evict(0)
    assert pool.version != v1


def test_a_run_fills_whole_chunks_without_zeroing_and_zeroes_the_rest_of_its_last():
    """A run of appends installs absent chunks it covers whole without zeroing them first
    (its rows overwrite every row); chunks it covers in part are zeroed past its rows, also
    in a slot that held another chunk's data before."""
    pool, calls = make_pool(2), []
    pool.gather(torch.tensor([0, 4]), loader(calls))  # both slots hold non-zero rows
    pool.evict(0)
    pool.evict(1)
    absent = lambda cs: [None] * len(cs)  # noqa: E731
    zeroed = []
    real_zero = torch.Tensor.zero_

    def spy(t):
        zeroed.append(t.shape[0])
        return real_zero(t)

    torch.Tensor.zero_ = spy
    try:
        pool.write(torch.arange(2, 8), {"x": torch.full((6, 3), 7.0)}, absent, run=True)
    finally:
        torch.Tensor.zero_ = real_zero
    # chunk 0 (rows 0-3) is covered in part, chunk 1 (rows 4-7) whole: only chunk 0 zeroed
    assert zeroed == [R]
    out = pool.gather(torch.arange(0, 8), loader(calls))["x"][:, 0]
    assert out.tolist() == [0, 0, 7, 7, 7, 7, 7, 7]
    assert pool.dirty == {0, 1}
