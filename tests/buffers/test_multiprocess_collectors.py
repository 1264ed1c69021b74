"""Multi-process collectors write through a replay buffer built on ``ZarrStorage``: each worker
gets a ``ZarrWriterProxy`` whose writes the owning process applies (``buffers/worker_proxy.py``).

Each collector spawns two worker processes (several seconds each on a small machine), so every
scenario is checked on one or two collector runs."""

from __future__ import annotations

import multiprocessing
import re

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import (
    LazyMemmapStorage,
    LazyTensorStorage,
    ReplayBuffer,
    SliceSampler,
    TensorDictReplayBuffer,
)
from zarrl.buffers import ReadOnlyStorageError, ZarrStorage


def make_env():
    from torchrl.envs import GymEnv, StepCounter, TransformedEnv

    return TransformedEnv(GymEnv("CartPole-v1"), StepCounter())


def assert_trajectories_consistent(data: TensorDict) -> None:
    """Within a trajectory, steps count up by one and ``next`` observations chain."""
    traj = data["collector", "traj_ids"]
    same = traj[1:] == traj[:-1]
    step = data["step_count"].squeeze(-1)
    assert (step[1:][same] == step[:-1][same] + 1).all()
    chained = data["next", "observation"][:-1][same] == data["observation"][1:][same]
    assert chained.all()
    assert data["next", "reward"].isfinite().all()


def reference_schema(tmp_path) -> dict:
    """Keys, dtypes and row shapes a LazyMemmapStorage-backed collector run stores."""
    from torchrl.collectors import Collector

    rb = TensorDictReplayBuffer(storage=LazyMemmapStorage(100, scratch_dir=tmp_path / "memmap"))
    collector = Collector(make_env(), None, frames_per_batch=20, total_frames=20, replay_buffer=rb)
    for _ in collector:
        pass
    collector.shutdown()
    return schema_of(rb[:])


def schema_of(data: TensorDict) -> dict:
    data = data.exclude("index")
    return {k: (v.dtype, v.shape[1:]) for k, v in data.items(True, True)}


def test_multi_sync_collector_writes_real_rows_through_the_owner(tmp_path):
    from torchrl.collectors import MultiSyncCollector

    path = tmp_path / "sync.zarr"
    storage = ZarrStorage(1000, path=path, chunk_rows=16)
    rb = TensorDictReplayBuffer(storage=storage, batch_size=32)
    collector = MultiSyncCollector(
        [make_env] * 2, None, frames_per_batch=100, total_frames=400, replay_buffer=rb
    )
    iterations = sum(1 for _ in collector)
    collector.shutdown()
    assert iterations == 4
    assert len(rb) == 400 and rb.write_count == 400
    data = rb[:]
    assert schema_of(data) == reference_schema(tmp_path)
    for worker_rows in data.split(50):  # each worker writes 50-frame batches, in one piece
        assert_trajectories_consistent(worker_rows)
    assert data["collector", "traj_ids"].unique().numel() > 2
    assert rb.sample()["observation"].shape == (32, 4)
    storage.flush()
    reader = ZarrStorage.open(path, mode="r")
    assert len(reader) == 400
    assert (reader[:].to_tensordict().exclude("index") == data.exclude("index")).all()
    storage.close()
    assert not storage.worker_channel.pumping  # the pump stops with the storage


def test_multi_async_collector_with_trajs_per_batch_and_a_slice_sampler(tmp_path):
    from torchrl.collectors import MultiAsyncCollector

    storage = ZarrStorage(2000, path=tmp_path / "async.zarr", chunk_rows=16)
    rb = TensorDictReplayBuffer(
        storage=storage, sampler=SliceSampler(slice_len=4, strict_length=True), batch_size=32
    )
    collector = MultiAsyncCollector(
        [make_env] * 2,
        None,
        frames_per_batch=64,
        trajs_per_batch=2,
        total_frames=256,
        replay_buffer=rb,
    )
    for _ in collector:
        pass
    collector.shutdown()
    assert len(rb) >= 256 and len(storage) == len(rb) == rb.write_count
    data = rb[:]
    done = data["next", "done"].squeeze(-1)
    assert done[-1]  # only complete trajectories were written
    starts = torch.cat([torch.ones(1, dtype=torch.bool), done[:-1]])
    assert (data["step_count"].squeeze(-1)[starts] == 0).all()
    assert_trajectories_consistent(data)
    batch = rb.sample().reshape(8, 4)
    traj = batch["collector", "traj_ids"]
    assert (traj == traj[:, :1]).all()
    assert (batch["step_count"][:, 1:] == batch["step_count"][:, :-1] + 1).all()
    storage.close()


def rows(start: int, n: int, obs_dtype=torch.float32) -> TensorDict:
    i = torch.arange(start, start + n)
    return TensorDict(
        {"obs": torch.stack([i, -i], -1).to(obs_dtype), ("next", "done"): (i % 4 == 3)[:, None]},
        batch_size=[n],
    )


def time_env_rows(t0: int, steps: int) -> TensorDict:
    t = torch.arange(t0, t0 + steps)[:, None].expand(steps, 3)
    return TensorDict(
        {"obs": t[..., None].float(), "env": torch.arange(3).expand(steps, 3)}, [steps, 3]
    )


def _worker_writes(rb: TensorDictReplayBuffer, tensors: ReplayBuffer, grid, out) -> None:
    """Runs in a spawned process: a good write, a refused one, a good one, then a read."""
    report = {"proxy": type(rb.storage).__name__}
    tensors.extend(torch.arange(3, 6))  # a storage of plain tensors
    report["grid_index"] = grid.extend(time_env_rows(4, 4)).tolist()  # ndim=2
    rb.extend(rows(10, 5))
    report["len_after_first"] = len(rb)
    try:
        rb.extend(rows(15, 5, torch.float64))
    except ValueError as err:
        report["error"] = str(err)
    rb.extend(rows(15, 5))
    report["len"], report["write_count"] = len(rb), rb.write_count
    try:
        rb.sample(2)
    except NotImplementedError as err:
        report["read_error"] = str(err)
    out.put(report)  # plain Python values: no tensor handle outlives this process


def test_worker_writes_block_until_applied_and_owner_errors_reach_the_worker(tmp_path):
    storage = ZarrStorage(100, path=tmp_path / "w.zarr", chunk_rows=8)
    rb = TensorDictReplayBuffer(storage=storage).share()
    rb.extend(rows(0, 10))
    tensors = ReplayBuffer(storage=ZarrStorage(10, path=tmp_path / "t.zarr")).share()
    tensors.extend(torch.arange(3))
    grid = TensorDictReplayBuffer(storage=ZarrStorage(30, path=tmp_path / "g.zarr", ndim=2))
    grid.share().extend(time_env_rows(0, 4))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_worker_writes, args=(rb, tensors, grid, out))
    proc.start()
    report = out.get(timeout=120)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert report["proxy"] == "ZarrWriterProxy"
    assert report["len_after_first"] == 15  # the owner applied the rows before extend returned
    assert "obs" in report["error"] and "stored schema" in report["error"]
    assert str(tmp_path / "w.zarr") in report["error"] and "nothing was written" in report["error"]
    assert report["len"] == 20 and report["write_count"] == 20  # the refused rows left no hole
    assert "owns it" in report["read_error"]
    assert len(rb) == 20 and rb.write_count == 20
    assert torch.equal(rb[:]["obs"][:, 0], torch.arange(20).float())
    rb.extend(rows(20, 3))  # the owner keeps writing where the worker stopped
    assert torch.equal(rb[:]["obs"][:, 0], torch.arange(23).float())
    assert torch.equal(tensors[:], torch.arange(6))
    reference = TensorDictReplayBuffer(storage=LazyTensorStorage(30, ndim=2))
    reference.extend(time_env_rows(0, 4))
    assert report["grid_index"] == reference.extend(time_env_rows(4, 4)).tolist()
    assert len(grid) == len(reference) and grid.write_count == reference.write_count
    assert (grid[:].exclude("index") == reference[:].exclude("index")).all()
    storage.close()


def _never_called() -> None:
    raise AssertionError("the process must not start")


def test_read_only_storage_refuses_to_become_a_writer_proxy(tmp_path):
    path = tmp_path / "ro.zarr"
    with ZarrStorage(10, path=path) as storage:
        storage.set(torch.arange(2), rows(0, 2))
    reader = ZarrStorage.open(path, mode="r")
    proc = multiprocessing.get_context("spawn").Process(target=_never_called, args=(reader,))
    with pytest.raises(ReadOnlyStorageError, match=re.escape("mode='r'")):
        proc.start()  # pickling happens in this process, before the child is launched


def _forked_write(storage: ZarrStorage, out) -> None:
    try:
        storage.set(torch.arange(2, 4), rows(2, 2))
        out.put("written")
    except RuntimeError as err:
        out.put(str(err))


def test_a_forked_copy_refuses_to_write(tmp_path):
    storage = ZarrStorage(10, path=tmp_path / "f.zarr")
    storage.set(torch.arange(2), rows(0, 2))
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=_forked_write, args=(storage, out))
    proc.start()
    message = out.get(timeout=60)
    proc.join(timeout=60)
    assert "'fork'" in message and "spawn" in message
    assert len(storage) == 2
    storage.close()
