"""Contract suite: every test runs against LazyMemmapStorage and ZarrStorage (three cache modes)
with identical assertions, plus ZarrStorage-only behaviour (reopen, errors, readers)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
import zarr
from tensordict import TensorDict
from torchrl.data import (
    LazyTensorStorage,
    PrioritizedSampler,
    PrioritizedSliceSampler,
    RandomSampler,
    ReplayBuffer,
    SamplerWithoutReplacement,
    SliceSampler,
    SliceSamplerWithoutReplacement,
    TensorDictReplayBuffer,
)
from zarrl.buffers import ZarrStorage
from zarrl.buffers._compat_torchrl import last_cursor

TRAJ_LEN = 10


def trajectories(n_rows: int, start: int = 0, n_envs: int | None = None) -> TensorDict:
    """Rows ``start..start+n_rows``: obs[i] = [i, -i, 2i], trajectories of TRAJ_LEN steps."""
    i = torch.arange(start, start + n_rows)
    batch = [n_rows]
    if n_envs is not None:
        i = i[:, None] * 100 + torch.arange(n_envs)
        batch = [n_rows, n_envs]
    traj = (
        torch.div(i, TRAJ_LEN, rounding_mode="floor")
        if n_envs is None
        else (torch.div(i // 100, TRAJ_LEN, rounding_mode="floor") * 100 + i % 100)
    )
    step = i if n_envs is None else i // 100
    done = (step % TRAJ_LEN == TRAJ_LEN - 1).unsqueeze(-1)
    return TensorDict(
        {
            "obs": torch.stack([i, -i, 2 * i], -1).float(),
            "pixels": (i.reshape(*batch, 1, 1) % 251).expand(*batch, 8, 8).to(torch.uint8),
            "traj": traj,
            ("next", "done"): done,
            ("next", "reward"): i.float().unsqueeze(-1),
        },
        batch_size=batch,
    )


def assert_rows_consistent(batch: TensorDict) -> None:
    """Every sampled row is a whole, genuine row (all leaves derived from the same id)."""
    i = batch["obs"][..., 0]
    assert torch.equal(batch["obs"], torch.stack([i, -i, 2 * i], -1))
    assert torch.equal(batch["next", "reward"].squeeze(-1), i)
    assert torch.equal(batch["pixels"][..., 0, 0], (i.long() % 251).to(torch.uint8))


def test_ring_wraps_like_lazy_tensor_storage(storage_factory):
    reference = ReplayBuffer(storage=LazyTensorStorage(25))
    rb = ReplayBuffer(storage=storage_factory(25))
    for start in range(0, 70, 7):
        data = trajectories(7, start)
        assert torch.equal(rb.extend(data), reference.extend(data))
    assert len(rb) == len(reference) == 25
    assert (rb[:] == reference[:]).all()
    assert (rb[torch.tensor([3, 24, 0, 3])] == reference[torch.tensor([3, 24, 0, 3])]).all()
    assert (rb[5] == reference[5]).all()
    assert last_cursor(rb.storage) == last_cursor(reference.storage)
    assert 24 in rb.storage and 25 not in rb.storage


def test_add_single_rows_and_set_without_cursor(storage_factory):
    rb = ReplayBuffer(storage=storage_factory(8))
    for j in range(5):
        rb.add(trajectories(1, j)[0])
    assert len(rb) == 5
    rb[2] = trajectories(1, 40)[0]  # in-place update, cursor unchanged
    assert rb[:]["obs"][:, 0].tolist() == [0, 1, 40, 3, 4]
    rb.extend(trajectories(2, 5))
    assert rb[:]["obs"][:, 0].tolist() == [0, 1, 40, 3, 4, 5, 6]


def test_empty_resets_length_and_cursor(storage_factory):
    rb = ReplayBuffer(storage=storage_factory(16))
    rb.extend(trajectories(12))
    rb.empty()
    assert len(rb) == 0
    rb.extend(trajectories(3, 100))
    assert rb[:]["obs"][:, 0].tolist() == [100, 101, 102]


def test_nan_and_inf_are_stored_faithfully(storage_factory):
    rb = ReplayBuffer(storage=storage_factory(4))
    data = trajectories(3)
    data["obs"][0] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    rb.extend(data)
    got = rb[:]["obs"][0]
    assert torch.isnan(got[0]) and got[1] == float("inf") and got[2] == -float("inf")


def test_plain_tensor_buffers(storage_factory):
    rb = ReplayBuffer(storage=storage_factory(10), batch_size=4)
    rb.extend(torch.arange(15))
    assert torch.equal(rb[:], torch.tensor([10, 11, 12, 13, 14, 5, 6, 7, 8, 9]))
    assert set(rb.sample().tolist()) <= set(range(5, 15))


@pytest.mark.parametrize(
    "sampler",
    [
        lambda: RandomSampler(),
        lambda: SamplerWithoutReplacement(),
        lambda: PrioritizedSampler(200, alpha=0.7, beta=0.5),
    ],
    ids=["random", "without-replacement", "prioritized"],
)
def test_transition_samplers_return_whole_live_rows(storage_factory, sampler):
    rb = TensorDictReplayBuffer(storage=storage_factory(60), sampler=sampler(), batch_size=16)
    for start in range(0, 100, 20):
        rb.extend(trajectories(20, start))
    seen = set()
    for _ in range(3):  # 48 rows: one epoch of the without-replacement sampler
        batch = rb.sample()
        assert batch.shape == (16,)
        assert_rows_consistent(batch)
        ids = batch["obs"][:, 0].long()
        assert ((ids >= 40) & (ids < 100)).all()  # only rows still in the ring
        assert torch.equal(rb[batch["index"]]["obs"], batch["obs"])
        seen.update(ids.tolist())
    assert len(seen) > 8


def _slice_samplers():
    return [
        ("traj_key", lambda: SliceSampler(slice_len=5, traj_key="traj", strict_length=True)),
        ("end_key", lambda: SliceSampler(slice_len=5, end_key=("next", "done"))),
        (
            "pad_output",
            lambda: SliceSampler(
                slice_len=5, traj_key="traj", strict_length=False, pad_output=True
            ),
        ),
        (
            "without_replacement",
            lambda: SliceSamplerWithoutReplacement(slice_len=5, traj_key="traj"),
        ),
        (
            "prioritized_slice",
            lambda: PrioritizedSliceSampler(
                max_capacity=60, alpha=0.7, beta=0.5, slice_len=5, traj_key="traj"
            ),
        ),
    ]


@pytest.mark.parametrize("name,sampler", _slice_samplers(), ids=[n for n, _ in _slice_samplers()])
def test_slice_samplers_return_contiguous_sub_trajectories(storage_factory, name, sampler):
    rb = TensorDictReplayBuffer(storage=storage_factory(60), sampler=sampler(), batch_size=20)
    for start in range(0, 90, 30):  # 90 rows in a ring of 60: wraps mid-buffer
        rb.extend(trajectories(30, start))
    for _ in range(4):
        batch = rb.sample()
        assert batch.numel() % 5 == 0 and batch.numel() > 0
        batch = batch.reshape(-1, 5)
        assert_rows_consistent(batch)
        ids = batch["obs"][..., 0]
        if name == "pad_output":  # padded slots repeat a valid row; real ones are contiguous
            mask = batch.get(("collector", "mask"), torch.ones(ids.shape, dtype=torch.bool))
            assert mask[:, 0].all()
            steps = ids.diff(dim=1)[mask[:, 1:]]
            assert (steps == 1).all()
        else:
            assert (ids.diff(dim=1) == 1).all()
            assert (batch["traj"] == batch["traj"][:, :1]).all()
        assert (ids >= 30).all()


def test_ndim2_time_by_env_storage(storage_factory):
    n_envs = 3
    reference = TensorDictReplayBuffer(storage=LazyTensorStorage(30, ndim=2), batch_size=6)
    rb = TensorDictReplayBuffer(
        storage=storage_factory(30, ndim=2),
        sampler=SliceSampler(slice_len=3, traj_key="traj", strict_length=True),
        batch_size=6,
    )
    for start in range(0, 24, 8):
        data = trajectories(8, start, n_envs=n_envs).transpose(0, 1)  # collector layout [env, t]
        rb.extend(data)
        reference.extend(data)
    assert len(rb) == len(reference) == 30
    assert rb.storage.shape == reference.storage.shape == torch.Size([10, n_envs])
    assert (rb[:] == reference[:]).all()
    batch = rb.sample().reshape(2, 3)
    assert (batch["obs"][..., 0].diff(dim=1) == 100).all()
    assert_rows_consistent(batch)
    assert (batch["traj"] == batch["traj"][:, :1]).all()
    flat = TensorDictReplayBuffer(storage=rb.storage, batch_size=8).sample()
    assert_rows_consistent(flat)


def test_dumps_and_loads_round_trip(storage_factory, tmp_path):
    rb = TensorDictReplayBuffer(storage=storage_factory(20), batch_size=4)
    rb.extend(trajectories(27))
    rb.dumps(tmp_path / "ckpt")
    restored = TensorDictReplayBuffer(storage=storage_factory(20), batch_size=4)
    restored.loads(tmp_path / "ckpt")
    assert len(restored) == 20
    assert (restored[:].exclude("index") == rb[:].exclude("index")).all()
    restored.extend(trajectories(1, 27))
    assert restored[7]["obs"][0] == 27  # the writer cursor came back with the checkpoint


def test_collector_writes_straight_into_the_buffer(storage_factory):
    from torchrl.collectors import Collector
    from torchrl.envs import GymEnv

    rb = TensorDictReplayBuffer(
        storage=storage_factory(500), sampler=SliceSampler(slice_len=4), batch_size=16
    )
    env = GymEnv("CartPole-v1")
    env.set_seed(0)
    collector = Collector(env, None, frames_per_batch=50, total_frames=200, replay_buffer=rb)
    for _ in collector:
        pass
    collector.shutdown()
    assert len(rb) == 200
    batch = rb.sample().reshape(4, 4)
    traj = batch["collector", "traj_ids"]
    assert (traj == traj[:, :1]).all()
    assert torch.equal(batch["next", "observation"][:, :-1], batch["observation"][:, 1:])


def test_collector_with_trajs_per_batch(storage_factory):
    from torchrl.collectors import Collector
    from torchrl.envs import GymEnv

    rb = TensorDictReplayBuffer(storage=storage_factory(2000), batch_size=8)
    env = GymEnv("CartPole-v1")
    env.set_seed(1)
    collector = Collector(
        env, None, frames_per_batch=64, trajs_per_batch=3, total_frames=300, replay_buffer=rb
    )
    for _ in collector:
        pass
    collector.shutdown()
    data = rb[:]
    assert len(rb) >= 3
    done = data["next", "done"].squeeze(-1)
    traj = data["collector", "traj_ids"]
    ends = torch.nonzero(done).squeeze(-1)
    assert ends.numel() >= 3
    assert (traj[ends[:-1] + 1] != traj[ends[:-1]]).all()


# ----------------------------------------------------------------- ZarrStorage only


def test_reopened_storage_keeps_appending_where_it_stopped(tmp_path):
    path = tmp_path / "ring.zarr"
    reference = TensorDictReplayBuffer(storage=LazyTensorStorage(20), batch_size=4)
    with ZarrStorage(20, path=path, chunk_rows=8) as storage:
        rb = TensorDictReplayBuffer(storage=storage, batch_size=4)
        for start in (0, 9, 18):
            rb.extend(trajectories(9, start))
            reference.extend(trajectories(9, start))
    reopened = ZarrStorage.open(path)
    rb = TensorDictReplayBuffer(storage=reopened, batch_size=4)
    assert len(rb) == 20 and last_cursor(reopened) == 6
    rb.extend(trajectories(5, 27))
    reference.extend(trajectories(5, 27))
    assert (rb[:].exclude("index") == reference[:].exclude("index")).all()
    assert rb.write_count == 32


def test_growing_storage_has_no_capacity(tmp_path):
    storage = ZarrStorage(None, path=tmp_path / "grow.zarr", chunk_rows=16)
    rb = TensorDictReplayBuffer(
        storage=storage, sampler=SliceSampler(slice_len=5, traj_key="traj"), batch_size=10
    )
    for start in range(0, 1000, 100):
        rb.extend(trajectories(100, start))
    assert len(rb) == 1000
    assert torch.equal(rb[:]["obs"][:, 0], torch.arange(1000.0))
    assert_rows_consistent(rb.sample())
    storage.close()
    assert len(ZarrStorage.open(tmp_path / "grow.zarr", mode="r")) == 1000


def test_state_dict_holds_metadata_only_and_checks_the_commit(tmp_path):
    storage = ZarrStorage(30, path=tmp_path / "s.zarr", chunk_rows=8)
    rb = TensorDictReplayBuffer(storage=storage)
    rb.extend(trajectories(12))
    state = rb.state_dict()["_storage"]
    assert not any(isinstance(v, torch.Tensor) for v in state.values())
    reopened = ZarrStorage.open(tmp_path / "s.zarr", mode="r")
    reopened.load_state_dict(state)
    assert len(reopened) == 12
    rb.extend(trajectories(3, 12))
    with pytest.raises(ValueError, match="cannot roll back"):
        ZarrStorage.open(tmp_path / "s.zarr", mode="r+").load_state_dict(
            {**state, "commit": {**state["commit"], "write_count": 99}}
        )


def test_full_view_loads_large_columns_only_when_accessed(tmp_path, monkeypatch):
    storage = ZarrStorage(100, path=tmp_path / "v.zarr", chunk_rows=8)
    storage.set(torch.arange(40), trajectories(40))
    loaded = []
    original = storage.read
    monkeypatch.setattr(
        storage, "read", lambda rows, keys=None: loaded.append(keys) or original(rows, keys)
    )
    view = storage[:]
    assert torch.equal(view["traj"], torch.arange(40) // TRAJ_LEN)  # index column, from RAM
    assert loaded == []
    assert torch.equal(view["pixels"][:, 0, 0], (torch.arange(40) % 251).to(torch.uint8))
    assert loaded == [["pixels"]]


def test_bounded_cache_refills_in_the_background_to_cover_every_row(tmp_path):
    storage = ZarrStorage(400, path=tmp_path / "c.zarr", chunk_rows=8, cache=1)  # 4 chunks
    rb = TensorDictReplayBuffer(storage=storage, batch_size=32)
    rb.extend(trajectories(400))
    assert not storage.is_ram_mirror
    time.sleep(storage.min_commit_interval)  # the first sample commits the deferred chunks
    seen = set()
    for _ in range(300):
        batch = rb.sample()
        assert_rows_consistent(batch)
        seen.update(batch["obs"][:, 0].long().tolist())
        storage.hot.wait_refill()  # deterministic test: let each refill land
        storage.hot.skip_rest()
    assert len(seen) > 300  # sampling is not stuck on the first cached chunks
    assert storage.hot.pool.n_slots <= 4 + 4  # memory stays bounded by the cache


def _count_sync_loads(storage) -> list:
    """Chunks decoded on the calling (main) thread, i.e. synchronous misses; the background
    refill thread's decodes are not counted."""
    calls: list = []
    original = storage.chunks.load

    def load(chunks, *args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            calls.extend(chunks)
        return original(chunks, *args, **kwargs)

    storage.chunks.load = load
    return calls


def test_rows_drawn_from_the_cache_stay_cached_until_gathered(tmp_path):
    storage = ZarrStorage(400, path=tmp_path / "c.zarr", chunk_rows=8, cache=1)  # 4 chunks
    TensorDictReplayBuffer(storage=storage, batch_size=32).extend(trajectories(400))
    storage.refill_ratio = 10.0  # a refill every batch: the cache turns over constantly
    storage.draw_positions(32)  # first draw may load a few chunks synchronously
    loads = _count_sync_loads(storage)
    for _ in range(60):
        pos = storage.draw_positions(32)
        storage.hot.wait_refill()  # a refill lands between the draw and the gather
        storage.hot.skip_rest()  # no rest between refills
        batch = storage.get(pos)
        assert_rows_consistent(batch)
        assert torch.equal(batch["obs"][:, 0].long(), pos)
    assert loads == []  # every drawn row was served from the cache
    storage.close()


def test_refill_work_is_earned_by_sampled_rows(tmp_path):
    storage = ZarrStorage(400, path=tmp_path / "c.zarr", chunk_rows=8, cache=1)
    rb = TensorDictReplayBuffer(storage=storage, batch_size=32)
    rb.extend(trajectories(400))
    storage.flush()  # refills decode committed chunks only
    decoded: list = []
    original = storage.chunks.load
    storage.chunks.load = lambda chunks, *a, **k: (
        decoded.extend(chunks) or original(chunks, *a, **k)
    )
    rb.sample()  # may load the first chunks synchronously
    decoded.clear()
    for _ in range(100):
        rb.sample()
        storage.hot.wait_refill()
        storage.hot.skip_rest()  # no rest between refills
    run_rows = storage.hot.refill_rows
    assert 0 < len(decoded) * 8 <= storage.refill_ratio * 100 * 32 + 2 * run_rows
    storage.close()


def test_cached_rows_are_drawn_uniformly_from_a_wrapped_ring(tmp_path):
    storage = ZarrStorage(100, path=tmp_path / "w.zarr", chunk_rows=8, cache=1)  # 4 chunks
    rb = TensorDictReplayBuffer(storage=storage, batch_size=32)
    rb.extend(trajectories(130))  # live physical rows 30..129: chunk 3 is only partly live
    storage.refill_ratio = 0.0  # freeze the cache contents
    storage.hot.pool.ensure(torch.tensor([3, 9]), storage.chunks.load)
    mask = storage.resident_positions()
    chunk_of_pos = storage.ring.phys(torch.arange(100)) // 8
    assert torch.equal(mask, torch.isin(chunk_of_pos, storage.hot.pool.resident()))
    assert mask[30:32].all() and mask[72:80].all()  # rows 30, 31 (chunk 3) and chunk 9
    pos = storage.draw_positions(40_000)
    assert mask[pos].all()  # only cached, live rows
    counts = torch.bincount(pos, minlength=100)[mask].float()
    assert (counts > 0).all() and (counts - counts.mean()).abs().max() < 0.3 * counts.mean()
    batch = storage.get(pos[:256])
    assert torch.equal(batch["obs"][:, 0].long(), storage.ring.phys(pos[:256]))  # row id = phys
    storage.close()


def test_a_refill_decoded_before_an_in_place_write_is_dropped(tmp_path):
    storage = ZarrStorage(400, path=tmp_path / "s.zarr", chunk_rows=8, cache=1)
    ReplayBuffer(storage=storage).extend(trajectories(400))
    storage.refill_ratio = 10.0
    while not storage.hot.refill_pending:
        storage.draw_positions(32)
    chunk = storage.hot.wait_refill()[0]
    row = torch.tensor([chunk * 8])  # not wrapped: position = physical row
    storage.set(row, trajectories(1, 1000), set_cursor=False)
    storage.flush()
    storage.hot.pool.evict(chunk)  # the refill would now bring the old bytes back
    storage.request_refill(0)
    assert storage.get(row)["obs"][0, 0] == 1000
    storage.close()


def test_ram_mirror_on_cache_device_returns_batches_on_device(tmp_path):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    storage = ZarrStorage(
        64, path=tmp_path / "d.zarr", cache="ram", cache_device=device, device=device, chunk_rows=8
    )
    rb = TensorDictReplayBuffer(storage=storage, batch_size=16)
    rb.extend(trajectories(64))
    assert storage.is_ram_mirror
    assert storage.hot.pool.data["pixels"].device.type == device
    batch = rb.sample()
    assert batch["pixels"].device.type == device
    assert_rows_consistent(batch.cpu())


def test_any_zarr_store_works_not_only_local_paths(tmp_path):
    store = zarr.storage.MemoryStore()
    storage = ZarrStorage(30, path=store, chunk_rows=8)
    rb = TensorDictReplayBuffer(storage=storage, batch_size=8)
    rb.extend(trajectories(40))
    storage.flush()
    assert_rows_consistent(rb.sample())
    reader = ZarrStorage.open(store, mode="r")
    assert len(reader) == 30 and (reader[:]["obs"] == storage[:]["obs"]).all()
    storage.dumps(tmp_path / "ckpt.zarr")  # checkpoint a memory store to disk
    assert len(ZarrStorage.open(tmp_path / "ckpt.zarr", mode="r")) == 30


def test_sampling_commits_chunks_that_min_commit_interval_deferred(tmp_path):
    storage = ZarrStorage(
        400, path=tmp_path / "d.zarr", chunk_rows=8, cache=1, min_commit_interval=3600.0
    )
    rb = TensorDictReplayBuffer(storage=storage, batch_size=32)
    rb.extend(trajectories(400))
    reader = ZarrStorage.open(tmp_path / "d.zarr", mode="r")
    assert len(reader) < 400  # the burst's completed chunks wait for the interval
    rb.sample()
    reader.refresh()
    assert len(reader) < 400  # not before the interval has passed
    storage.min_commit_interval = 0.0
    rb.sample()  # the next sampling call commits them: durable, and refills can decode them
    reader.refresh()
    assert len(reader) == 400
    assert torch.equal(reader[:]["obs"], storage[:]["obs"])
    storage.close()


def test_rewriting_stored_rows_with_set_cursor_keeps_the_length_and_the_store_opens(tmp_path):
    storage = ZarrStorage(100, path=tmp_path / "s.zarr")
    rb = TensorDictReplayBuffer(storage=storage)
    rb.extend(TensorDict({"x": torch.arange(40.0)}, batch_size=[40]))
    rows = TensorDict({"x": torch.zeros(5), "index": torch.zeros(5, dtype=torch.long)}, [5])
    storage.set(torch.arange(5, 10), rows)  # set_cursor=True, as a writer's set is
    assert len(storage) == 40
    storage.close()
    reopened = ZarrStorage.open(tmp_path / "s.zarr", mode="r")
    assert len(reopened) == 40
    torch.testing.assert_close(
        reopened.get(torch.arange(4, 11))["x"], torch.tensor([4.0] + [0.0] * 5 + [10.0])
    )
