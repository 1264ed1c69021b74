"""The RAM index columns (``buffers/index_columns.py``) through their public methods."""

import torch
from zarrl.buffers.format import Header, LeafSpec
from zarrl.buffers.index_columns import IndexColumns


def test_columns_grow_on_demand_and_keep_their_rows():
    schema = {"obs": LeafSpec("float32", (8,)), "done": LeafSpec("bool", (1,))}
    index = IndexColumns()
    index.build(Header(None, 1, (), 4, schema, ["done"], False))
    assert "done" in index and "obs" not in index and list(index) == ["done"]
    assert index.head("done", 2000).shape[0] == 1024  # a growing store starts at 1024 rows
    index.write(slice(0, 3), {"done": torch.tensor([[True], [False], [True]])})
    index.ensure_rows(3000)
    assert index.head("done", 3000).shape == (3000, 1)
    assert index.gather("done", torch.tensor([2, 1, 0])).view(-1).tolist() == [True, False, True]
    index.clear()
    assert not index.head("done", 3).any()
    assert not index.head("done", 3000)[3:].any()  # rows past those written read as zeros


def test_a_disabled_mirror_builds_no_column():
    schema = {"obs": LeafSpec("float32", (8,)), "done": LeafSpec("bool", (1,))}
    index = IndexColumns(enabled=False)
    index.build(Header(None, 1, (), 4, schema, ["done"], False))
    assert not index and "done" not in index
    index.ensure_rows(10)
    index.write(slice(0, 1), {"done": torch.tensor([[True]])})  # nothing to write into
    assert not index.columns


def test_attached_columns_are_read_with_the_stored_leaves_and_checked(tmp_path):
    """``ZarrStorage.attach_columns``: RAM leaves that are not stored, returned by ``get``,
    ``storage[:]`` and TorchRL's slice sampler as stored keys; refused on a writer, for a
    stored leaf and when too short; a reader that grew past them says so."""
    import pytest
    from tensordict import TensorDict
    from torchrl.data import ReplayBuffer, SliceSampler
    from zarrl.buffers import ZarrStorage

    rows = TensorDict({"obs": torch.arange(12.0)}, batch_size=[12])
    writer = ZarrStorage(None, path=tmp_path / "s", chunk_rows=4)
    writer.set(torch.arange(12), rows)
    writer.flush()
    traj = torch.arange(12) // 3
    with pytest.raises(ValueError, match="only a read-only storage"):
        writer.attach_columns({"traj": traj})
    reader = ZarrStorage.open(tmp_path / "s", mode="r")
    with pytest.raises(ValueError, match="'obs' is a stored leaf"):
        reader.attach_columns({"obs": torch.zeros(12)})
    with pytest.raises(ValueError, match="at least 12 rows"):
        reader.attach_columns({"traj": traj[:5]})
    reader.attach_columns({"traj": traj, ("next", "done"): torch.arange(12) % 3 == 2})
    assert reader[:]["traj"].tolist() == traj.tolist()
    got = reader.get(torch.tensor([7, 2]))
    assert got["traj"].tolist() == [2, 0] and got["next", "done"].tolist() == [False, True]
    assert got["obs"].tolist() == [7.0, 2.0]
    rb = ReplayBuffer(
        storage=reader, sampler=SliceSampler(slice_len=3, traj_key="traj"), batch_size=6
    )
    windows = rb.sample().reshape(2, 3)
    assert (windows["traj"] == windows["traj"][:, :1]).all()
    assert (windows["obs"] == windows["traj"] * 3.0 + torch.arange(3.0)).all()
    writer.set(torch.arange(12, 14), TensorDict({"obs": torch.zeros(2)}, batch_size=[2]))
    writer.flush()
    reader.refresh()  # 14 rows now, the columns cover 12
    with pytest.raises(RuntimeError, match="'traj' holds 12 rows, 14 were read"):
        reader[:]
    reader.close()
    writer.close()


def test_an_attached_column_given_as_a_callable_is_computed_at_its_first_read(tmp_path):
    import pytest
    from tensordict import TensorDict
    from zarrl.buffers import ZarrStorage

    writer = ZarrStorage(None, path=tmp_path / "s", chunk_rows=4)
    writer.set(torch.arange(6), TensorDict({"obs": torch.arange(6.0)}, batch_size=[6]))
    writer.flush()
    reader = ZarrStorage.open(tmp_path / "s", mode="r")
    calls = []

    def traj() -> torch.Tensor:
        calls.append(1)
        return torch.arange(6) // 2

    reader.attach_columns({"traj": traj, "short": lambda: torch.zeros(4)})
    assert reader.read(torch.tensor([5]), ["obs"])["obs"].tolist() == [5.0]
    assert calls == []  # a read that does not need it computes nothing
    assert reader.read(torch.tensor([5, 0]), ["traj"])["traj"].tolist() == [2, 0]
    assert reader.read(torch.tensor([3]), ["traj"])["traj"].tolist() == [1]
    assert calls == [1]  # once
    with pytest.raises(RuntimeError, match="'short' holds 4 rows, 6 were read"):
        reader.read(torch.tensor([0]), ["short"])
    reader.close()
    writer.close()
