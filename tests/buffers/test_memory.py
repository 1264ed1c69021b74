"""Memory of a store larger than its cache: decoded chunks stay within the cache budget and a
sampled batch is freed as soon as it is dropped (the bound itself is measured by
``benchmarks/buffer_memory.py``)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import torch
from tensordict import TensorDict
from torchrl.data import RandomSampler, SliceSampler, TensorDictReplayBuffer
from zarrl.buffers import ZarrStorage
from zarrl.buffers.chunk_pool import ChunkPool
from zarrl.buffers.format import LeafSpec


def transitions(n: int) -> TensorDict:
    i = torch.arange(n)
    return TensorDict(
        {
            "pixels": (i.view(-1, 1, 1) % 251).expand(n, 16, 16).to(torch.uint8).contiguous(),
            "episode": i // 10,
            ("next", "reward"): i.float().unsqueeze(-1),
        },
        batch_size=[n],
    )


def test_misses_are_decoded_a_sixteenth_of_the_pool_at_a_time():
    R = 4
    pool = ChunkPool({"x": LeafSpec("float32", (3,))}, (), R, 32, 256, torch.device("cpu"))
    calls: list[list[int]] = []

    def load(chunks: list[int]):
        calls.append(list(chunks))
        return [{"x": np.full((R, 3), c, np.float32)} for c in chunks]

    phys = torch.arange(0, 40 * R, R)  # 40 missing chunks, more than the 32 slots
    assert torch.equal(pool.gather(phys, load)["x"][:, 0], (phys // R).float())
    assert pool.load_group == 2
    assert sorted(c for group in calls for c in group) == list(range(40))
    assert max(len(group) for group in calls) == 2  # never all the misses at once


def test_the_cache_budget_holds_the_pool_a_refill_and_a_group_of_misses(tmp_path):
    storage = ZarrStorage(4000, path=tmp_path / "m.zarr", chunk_rows=64, cache=2**20)
    TensorDictReplayBuffer(storage=storage).extend(transitions(4000))
    pool = storage.hot.pool
    assert not storage.is_ram_mirror
    decoded = (pool.max_slots + 2 * pool.load_group) * pool.chunk_nbytes
    assert decoded <= 2**20  # every decoded chunk, in the pool or waiting, within the budget
    assert storage.hot.refill_rows == pool.load_group * 64
    storage.close()


def test_a_dropped_batch_is_freed_without_the_cyclic_gc(tmp_path):
    storage = ZarrStorage(4000, path=tmp_path / "g.zarr", chunk_rows=64, cache=2**20)
    TensorDictReplayBuffer(storage=storage).extend(transitions(4000))
    buffers = [
        TensorDictReplayBuffer(storage=storage, sampler=RandomSampler(), batch_size=64),
        TensorDictReplayBuffer(
            storage=storage, sampler=SliceSampler(num_slices=8, traj_key="episode"), batch_size=64
        ),
    ]
    gc.collect()
    gc.disable()
    try:
        for rb in buffers:
            batch = rb.sample()
            leaves = [weakref.ref(batch["pixels"]), weakref.ref(batch["next", "reward"])]
            del batch
            assert all(ref() is None for ref in leaves)  # no reference cycle kept them
        view = storage[torch.arange(10)]  # the lazy view of rows (index columns eager)
        ref = weakref.ref(view["episode"])
        del view
        assert ref() is None
    finally:
        gc.enable()
    storage.close()
