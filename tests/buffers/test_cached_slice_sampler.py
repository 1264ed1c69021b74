"""CachedSliceSampler: slices only from wholly cached trajectories of a larger-than-cache store."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torchrl.data import TensorDictReplayBuffer
from zarrl.buffers import CachedSliceSampler, ZarrStorage
from zarrl.buffers.cached_slice_sampler import fully_resident


def test_fully_resident_counts_wrapping_trajectories():
    resident = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
    start = torch.tensor([0, 1, 3, 4, 5])
    lengths = torch.tensor([2, 2, 3, 3, 2])  # [4, 5, 0] and [5, 0] wrap around the end
    assert fully_resident(start, lengths, resident).tolist() == [True, False, True, True, True]


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
        if storage._refill is not None:
            storage._refill.result()
        start, _, lengths = sampler._get_stop_and_length(storage)  # installs the refill
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
    start, _, _ = sampler._get_stop_and_length(storage)
    assert start.shape[0] == 32
    storage.close()
