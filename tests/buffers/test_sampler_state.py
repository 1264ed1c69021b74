"""The sampler's state lives with the store (``buffers/sampler_state.py``): priorities of
``PrioritizedSampler`` / ``PrioritizedSliceSampler`` and the cursor of
``SamplerWithoutReplacement`` survive a reopen, and the owner's priorities survive worker
writes."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import (
    PrioritizedSampler,
    PrioritizedSliceSampler,
    SamplerWithoutReplacement,
)
from zarrl.buffers import StoreFormatError, ZarrStorage


def rows(start: int, n: int) -> TensorDict:
    i = torch.arange(start, start + n)
    return TensorDict({"obs": i.float(), "episode": i // 5}, [n])


def tree_values(sampler) -> torch.Tensor:
    tree = sampler.state_dict()["_sum_tree"]
    return tree[torch.arange(tree.size)]


@pytest.mark.parametrize("kind", ["prioritized", "prioritized-slice"])
def test_priorities_survive_a_reopen(tmp_path, kind):
    def make_sampler():
        if kind == "prioritized":
            return PrioritizedSampler(20, alpha=0.7, beta=0.5)
        return PrioritizedSliceSampler(
            max_capacity=20, alpha=0.7, beta=0.5, slice_len=5, traj_key="episode"
        )

    path = tmp_path / "b.zarr"
    storage = ZarrStorage(20, path=path, chunk_rows=4)
    rb = TensorDictReplayBuffer(storage=storage, sampler=make_sampler(), batch_size=10)
    rb.extend(rows(0, 15))
    rb.update_priority(torch.arange(15), torch.arange(1.0, 16.0))
    before = tree_values(rb.sampler)
    storage.close()

    reopened = TensorDictReplayBuffer(
        storage=ZarrStorage.open(path), sampler=make_sampler(), batch_size=10
    )
    assert torch.equal(tree_values(reopened.sampler), before)
    assert (
        reopened.sampler.state_dict()["_max_priority"] == rb.sampler.state_dict()["_max_priority"]
    )
    reopened.sample()  # the restored sampler draws as before
    # rows committed by a writer that kept no sampler state get the default priority
    plain = TensorDictReplayBuffer(storage=reopened.storage)
    plain.extend(rows(15, 3))
    reopened.storage.close()
    again = TensorDictReplayBuffer(
        storage=ZarrStorage.open(path), sampler=make_sampler(), batch_size=10
    )
    values = tree_values(again.sampler)
    assert torch.equal(values[:15], before[:15])
    assert (values[15:18] > 0).all() and (values[18:] == 0).all()


def test_sampler_without_replacement_continues_its_epoch_after_a_reopen(tmp_path):
    path = tmp_path / "b.zarr"
    rb = TensorDictReplayBuffer(
        storage=ZarrStorage(20, path=path), sampler=SamplerWithoutReplacement(), batch_size=3
    )
    rb.extend(rows(0, 10))
    drawn = torch.cat([rb.sample()["obs"] for _ in range(2)])
    rb.storage.close()
    reopened = TensorDictReplayBuffer(
        storage=ZarrStorage.open(path), sampler=SamplerWithoutReplacement(), batch_size=3
    )
    rest = torch.cat([reopened.sample()["obs"] for _ in range(2)])[:4]
    assert sorted(torch.cat([drawn, rest]).tolist()) == list(map(float, range(10)))


def test_explicit_save_and_load_and_a_hostile_state(tmp_path):
    import zarr

    path = tmp_path / "b.zarr"
    storage = ZarrStorage(20, path=path)
    TensorDictReplayBuffer(storage=storage).extend(rows(0, 8))
    sampler = PrioritizedSampler(20, alpha=1.0, beta=1.0)
    sampler.extend(torch.arange(8))
    sampler.update_priority(torch.arange(8), torch.full((8,), 3.0))
    assert storage.save_sampler_state(sampler)
    fresh = PrioritizedSampler(20, alpha=1.0, beta=1.0)
    assert storage.load_sampler_state(fresh)
    assert torch.equal(tree_values(fresh), tree_values(sampler))
    assert not storage.load_sampler_state(SamplerWithoutReplacement())  # another class
    storage.close()
    group = zarr.open_group(path / ".zarrl_sampler", mode="a")
    attrs = group.attrs.asdict()
    first = next(iter(attrs["zarrl_sampler"]["arrays"]))
    attrs["zarrl_sampler"]["arrays"][first][1] = [10**12]
    group.attrs.put(attrs)
    with pytest.raises(StoreFormatError, match=r"\.zarrl_sampler.*larger than the sampler"):
        TensorDictReplayBuffer(
            storage=ZarrStorage.open(path), sampler=PrioritizedSampler(20, 1.0, 1.0)
        )


def _worker_extends(rb, out) -> None:
    rb.extend(rows(10, 5))
    out.put(len(rb))


def test_owner_priorities_survive_worker_extends(tmp_path):
    """Collectors in other processes write through the owner (``ZarrWriterProxy``); with
    TorchRL's ``TensorDictPrioritizedReplayBuffer(sync=False)`` (a prioritized sampler cannot
    be sent to a worker) the learner's sampler catches up on new rows from the write count:
    the priorities it set are kept, the workers' rows get the default, and all of it is
    stored with the store at close and restored on reopen."""
    from torchrl.data import TensorDictPrioritizedReplayBuffer

    def make(storage):
        return TensorDictPrioritizedReplayBuffer(
            storage=storage, alpha=1.0, beta=1.0, sync=False, batch_size=8
        )

    path = tmp_path / "b.zarr"
    storage = ZarrStorage(40, path=path, chunk_rows=4)
    rb = make(storage).share()
    rb.extend(rows(0, 10))
    rb.sample()
    learned = torch.linspace(0.5, 5.0, 10)
    rb.update_priority(torch.arange(10), learned)  # the learner's priorities
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_worker_extends, args=(rb, out))
    proc.start()
    assert out.get(timeout=120) == 15
    proc.join(timeout=60)
    assert len(rb) == 15 and rb.sample()["obs"].shape == (8,)  # the learner catches up
    values = tree_values(rb.prioritized_sampler)
    eps = rb.prioritized_sampler.state_dict()["_eps"]
    assert torch.allclose(values[:10], learned + eps)  # kept
    assert (values[10:15] > 0).all() and (values[15:] == 0).all()  # the workers' rows
    storage.close()
    reopened = make(ZarrStorage.open(path))
    assert torch.equal(tree_values(reopened.prioritized_sampler), values)
    reopened.sample()  # catching up does not reset the restored priorities
    assert torch.equal(tree_values(reopened.prioritized_sampler), values)


def test_sampler_states_save_a_changed_state_only(tmp_path):
    from torchrl.data.replay_buffers.samplers import PrioritizedSampler
    from zarrl.buffers.commit_log import open_group
    from zarrl.buffers.format import Commit
    from zarrl.buffers.sampler_state import SamplerStates

    group, states, saves = open_group(tmp_path / "s.zarr", "a"), SamplerStates(), []
    sampler = PrioritizedSampler(8, alpha=0.6, beta=0.4)

    def save(s) -> bool:
        saves.append(s)
        return states.save(group, s, Commit().to_json())

    buffers = [object()]
    states.save_changed(buffers, lambda b: sampler, lambda b: None, save)
    states.save_changed(buffers, lambda b: sampler, lambda b: None, save)
    assert saves == [sampler]  # the second call found the state unchanged
    sampler.update_priority(torch.tensor([1]), torch.tensor([5.0]))
    states.save_changed(buffers, lambda b: sampler, lambda b: None, save)
    assert len(saves) == 2
