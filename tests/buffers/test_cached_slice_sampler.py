"""CachedSliceSampler: slices only from wholly cached trajectories of a larger-than-cache store."""

from __future__ import annotations

import threading

import torch
from tensordict import TensorDict
from torchrl.data import TensorDictReplayBuffer
from zarrl.buffers import CachedSliceSampler, ZarrStorage
from zarrl.buffers.cached_slice_sampler import fully_resident, resident_segments


def test_fully_resident_counts_wrapping_trajectories():
    resident = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
    start = torch.tensor([0, 1, 3, 4, 5])
    lengths = torch.tensor([2, 2, 3, 3, 2])  # [4, 5, 0] and [5, 0] wrap around the end
    assert fully_resident(start, lengths, resident).tolist() == [True, False, True, True, True]


def test_resident_segments_split_at_uncached_rows_and_trajectory_ends():
    resident = torch.tensor([1, 1, 1, 0, 1, 1, 1, 1, 1, 1], dtype=torch.bool)
    start = torch.tensor([0, 4, 8])
    lengths = torch.tensor([4, 4, 4])  # [0..3], [4..7], [8, 9, 0, 1] wraps around the end
    seg_start, seg_len = resident_segments(start, lengths, resident, min_length=1)
    assert seg_start.tolist() == [0, 4, 8] and seg_len.tolist() == [3, 4, 4]
    seg_start, seg_len = resident_segments(start, lengths, resident, min_length=4)
    assert seg_start.tolist() == [4, 8] and seg_len.tolist() == [4, 4]
    resident[9] = False
    seg_start, seg_len = resident_segments(start, lengths, resident, min_length=2)
    assert seg_start.tolist() == [0, 4, 0] and seg_len.tolist() == [3, 4, 2]


def _episodes(n: int, traj_len: int) -> TensorDict:
    rows = torch.arange(n)
    return TensorDict(
        {"obs": rows.float().unsqueeze(-1).expand(n, 8).clone(), "episode": rows // traj_len},
        batch_size=[n],
    )


def test_slices_come_from_cached_trajectories_and_hold_the_stored_rows(tmp_path):
    data = _episodes(640, traj_len=20)
    storage = ZarrStorage(640, path=tmp_path / "s.zarr", chunk_rows=32, cache=1)  # 4 chunks
    sampler = CachedSliceSampler(num_slices=4, traj_key="episode")
    rb = TensorDictReplayBuffer(storage=storage, sampler=sampler, batch_size=32)
    rb.extend(data)
    assert storage.resident_positions() is not None  # larger than its cache
    for _ in range(5):
        batch = rb.sample()
        obs = batch["obs"][:, 0].view(4, 8)
        assert torch.equal(obs[:, 1:] - obs[:, :-1], torch.ones(4, 7))  # contiguous rows
        assert torch.equal(batch["episode"], (batch["obs"][:, 0] // 20).long())
        storage.hot.wait_refill()
        start, _, lengths = sampler.trajectories(storage)  # installs the refill
        mask = storage.resident_positions()
        assert bool(fully_resident(start[:, 0], lengths, mask).all())
        assert start.shape[0] < 32  # restricted to the cached subset of 32 episodes
    storage.close()


def test_on_a_mirrored_storage_every_trajectory_is_eligible(tmp_path):
    storage = ZarrStorage(640, path=tmp_path / "m.zarr", chunk_rows=32, cache="ram")
    sampler = CachedSliceSampler(num_slices=4, traj_key="episode")
    rb = TensorDictReplayBuffer(storage=storage, sampler=sampler, batch_size=32)
    rb.extend(_episodes(640, traj_len=20))
    assert storage.resident_positions() is None
    start, _, _ = sampler.trajectories(storage)
    assert start.shape[0] == 32
    storage.close()


def test_slices_from_partly_cached_trajectories_never_read_synchronously(tmp_path):
    data = _episodes(1280, traj_len=200)  # no 200-row episode fits in 4 chunks of 32 rows
    storage = ZarrStorage(1280, path=tmp_path / "p.zarr", chunk_rows=32, cache=1)
    sampler = CachedSliceSampler(num_slices=4, traj_key="episode")
    rb = TensorDictReplayBuffer(storage=storage, sampler=sampler, batch_size=32)
    rb.extend(data)
    storage.refill_ratio = 4.0
    rb.sample()  # the first batch may load chunks synchronously
    loads = []
    original = storage.chunks.load

    def load(chunks, *args, **kwargs):  # synchronous decodes only, not the refill's
        if threading.current_thread() is threading.main_thread():
            loads.extend(chunks)
        return original(chunks, *args, **kwargs)

    storage.chunks.load = load
    seen = set()
    for _ in range(40):
        batch = rb.sample()
        obs = batch["obs"][:, 0].view(4, 8)
        assert torch.equal(obs[:, 1:] - obs[:, :-1], torch.ones(4, 7))  # contiguous rows
        assert (batch["episode"].view(4, 8) == batch["episode"].view(4, 8)[:, :1]).all()
        seen.update(batch["episode"].tolist())
        storage.hot.wait_refill()
        storage.hot.skip_rest()  # no rest between refills
    assert loads == [] and len(seen) > 1
    storage.close()


def test_with_span_only_wholly_cached_trajectories_are_drawn(tmp_path):
    storage = ZarrStorage(640, path=tmp_path / "s.zarr", chunk_rows=32, cache=1)
    sampler = CachedSliceSampler(num_slices=4, traj_key="episode", span=True)
    rb = TensorDictReplayBuffer(storage=storage, sampler=sampler, batch_size=32)
    rb.extend(_episodes(640, traj_len=20))
    rb.sample()
    start, _, lengths = sampler.trajectories(storage)
    assert lengths.eq(20).all()  # whole trajectories, all cached
    assert fully_resident(start[:, 0], lengths, storage.resident_positions()).all()
    storage.close()
