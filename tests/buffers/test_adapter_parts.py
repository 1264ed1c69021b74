"""The parts ``ZarrStorage`` delegates its TorchRL duties to, through their own methods: the
attached round-robin writers (``round_robin.py``), the storage's origin (``pickling.Origin``),
the sampler states kept with the store (``sampler_state.StoreSamplers``) and reads by index
(``Gatherer.get`` / ``lookup``)."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, PrioritizedSampler, ReplayBuffer
from torchrl.data.replay_buffers.writers import RoundRobinWriter
from zarrl.buffers import ZarrStorage
from zarrl.buffers._compat_torchrl import buffer_writer, writer_position
from zarrl.buffers.chunk_io import StaleRead
from zarrl.buffers.pickling import REOPEN_OPTIONS, Origin
from zarrl.buffers.ring import Ring
from zarrl.buffers.round_robin import (
    attach_buffer,
    follow_ring,
    restart_writers,
    rollback_writers,
)


def ring_after(max_size: int, rows: int) -> Ring:
    ring = Ring(max_size)
    ring.tail = ()
    ring.write_count = rows
    return ring


def test_a_fresh_writer_follows_the_ring_and_a_used_one_keeps_its_place():
    ring = ring_after(10, 13)  # wrapped once: the next row goes to position 3
    writer = follow_ring(RoundRobinWriter(), ring)
    assert writer_position(writer) == (13, 3)
    ring.write_count = 15
    assert writer_position(follow_ring(writer, ring)) == (13, 3)  # it wrote already: kept


def test_attach_buffer_moves_a_built_writer_or_one_built_later():
    ring = ring_after(10, 4)
    built = ReplayBuffer(storage=LazyTensorStorage(10))
    assert isinstance(built.writer, RoundRobinWriter)  # built now, nothing written
    attach_buffer(built, ring, lambda sampler: False)
    assert writer_position(buffer_writer(built)) == (4, 4)
    restored = []
    lazy = ReplayBuffer(
        storage=LazyTensorStorage(10), sampler=PrioritizedSampler(10, 1.0, 1.0), delayed_init=True
    )
    assert buffer_writer(lazy) is None  # TorchRL builds it at first use: wrapped until then
    attach_buffer(lazy, ring, lambda sampler: restored.append(sampler) or True)
    lazy.extend(torch.arange(2))
    assert writer_position(buffer_writer(lazy)) == (6, 6)
    assert len(restored) == 1 and isinstance(restored[0], PrioritizedSampler)
    attach_buffer(lazy, ring_after(10, 0), lambda sampler: pytest.fail("empty ring"))


def test_rollback_and_restart_move_the_attached_writers():
    buffers = [ReplayBuffer(storage=LazyTensorStorage(8)) for _ in range(2)]
    for rb in buffers:
        rb.extend(torch.arange(5))
    rollback_writers(buffers, 3, 8)
    assert [writer_position(buffer_writer(rb)) for rb in buffers] == [(2, 2)] * 2
    rollback_writers(buffers, 3, 8)  # fewer rows written than refused: left alone
    assert writer_position(buffer_writer(buffers[0])) == (2, 2)
    restart_writers(buffers, ring_after(8, 11))
    assert writer_position(buffer_writer(buffers[1])) == (11, 3)


def test_the_origin_of_a_temporary_store_removes_it_once(tmp_path):
    owner = type("Owner", (), {})()
    arguments = {name: name for name in REOPEN_OPTIONS} | {"path": None, "other": 1}
    origin = Origin.of(owner, None, "w", arguments)
    assert origin.temporary and origin.where == str(origin.location)
    assert origin.init_options == {name: name for name in REOPEN_OPTIONS}
    origin.location.mkdir(parents=True, exist_ok=True)
    origin.release()
    assert not origin.location.exists()
    named = Origin.of(owner, tmp_path / "n.zarr", "w", arguments)
    assert not named.temporary and named.where == str(tmp_path / "n.zarr")
    with pytest.raises(ValueError, match="a path is needed to open an existing store"):
        Origin.of(owner, None, "r+", arguments)


def test_store_samplers_save_load_and_save_only_changed_states(tmp_path):
    storage = ZarrStorage(16, path=tmp_path / "s.zarr", chunk_rows=4)
    rb = ReplayBuffer(storage=storage, sampler=PrioritizedSampler(16, 1.0, 1.0), batch_size=4)
    rb.extend(torch.arange(8))
    rb.update_priority(torch.tensor([2]), torch.tensor([5.0]))
    assert storage.samplers.save(rb.sampler)
    assert storage.log.commit.length == 8  # the rows were committed before the state
    other = PrioritizedSampler(16, 1.0, 1.0)
    assert storage.samplers.load(other)
    assert other.state_dict()["_max_priority"] == rb.sampler.state_dict()["_max_priority"]
    saves = []
    storage.samplers.save = lambda sampler: saves.append(sampler) or True
    storage.samplers.save_attached([rb])  # unchanged since it was saved
    rb.update_priority(torch.tensor([3]), torch.tensor([7.0]))
    storage.samplers.save_attached([rb])
    assert saves == [rb.sampler]
    storage.close()  # saves the changed state (the stub above did not record it as saved)
    assert saves == [rb.sampler] * 2
    storage.samplers.save_attached([rb])  # closed: nothing
    assert saves == [rb.sampler] * 2


def test_gatherer_get_retries_a_stale_read_after_a_refresh_and_lookup_defers(tmp_path):
    storage = ZarrStorage(16, path=tmp_path / "g.zarr", chunk_rows=4)
    data = TensorDict(
        {
            "obs": torch.arange(8.0)[:, None].expand(8, 3),
            "done": torch.zeros(8, 1, dtype=torch.bool),
        },
        [8],
    )
    ReplayBuffer(storage=storage).extend(data)
    gatherer, refreshes, gather = storage.gatherer, [], storage.gatherer.gather
    failures = iter([True, True, False])

    def flaky(rows, keys=None):
        if next(failures):
            raise StaleRead("recycled")
        return gather(rows, keys)

    gatherer.gather = flaky
    got = gatherer.get(torch.tensor([6, 1]), 8, lambda: refreshes.append(1))
    assert refreshes == [1, 1] and torch.equal(got["obs"][:, 0], torch.tensor([6.0, 1.0]))
    gatherer.gather = gather
    view = gatherer.lookup(torch.tensor([6, 1]), 8, 1, storage.read)
    assert view is not None and torch.equal(view["done"], torch.zeros(2, 1, dtype=torch.bool))
    assert gatherer.lookup(slice(None), 8, 1, storage.read) is None  # the whole buffer: get
    storage.close()
