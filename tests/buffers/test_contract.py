"""The rest of the TorchRL storage contract: bad input is refused by name or is a no-op, and
nothing is dropped silently (non-tensor leaves, ragged lazy stacks, reserved leaf names)."""

from __future__ import annotations

import pytest
import torch
from tensordict import LazyStackedTensorDict, TensorDict
from torchrl.data import TensorDictReplayBuffer
from zarrl.buffers import ZarrStorage


def rows(n: int) -> TensorDict:
    return TensorDict({"obs": torch.arange(n, dtype=torch.float32).unsqueeze(-1)}, [n])


@pytest.mark.parametrize("chunk_rows", [0, -4])
def test_non_positive_chunk_rows_is_refused_at_construction(tmp_path, chunk_rows):
    with pytest.raises(ValueError, match="chunk_rows must be a positive int"):
        ZarrStorage(10, path=tmp_path / "b.zarr", chunk_rows=chunk_rows)


def test_zero_length_extend_is_a_no_op(tmp_path):
    rb = TensorDictReplayBuffer(storage=ZarrStorage(10, path=tmp_path / "b.zarr", chunk_rows=4))
    rb.extend(rows(0))  # before the first write: initializes nothing
    assert len(rb) == 0 and not rb.storage.initialized
    rb.extend(rows(3))
    rb.extend(rows(0))
    assert len(rb) == 3
    assert torch.equal(rb[:]["obs"].squeeze(-1), torch.arange(3.0))


def test_non_tensor_leaves_are_refused_by_name_not_dropped(tmp_path):
    rb = TensorDictReplayBuffer(storage=ZarrStorage(10, path=tmp_path / "b.zarr"))
    data = rows(3)
    data.set_non_tensor("label", "hello")
    with pytest.raises(ValueError, match="'label'.*non-tensor"):
        rb.extend(data)
    assert len(rb) == 0
    rb.extend(rows(3))  # the same storage still accepts tensor-only rows, from row 0
    with pytest.raises(ValueError, match="'label'"):
        rb.extend(data)
    assert len(rb) == 3
    assert torch.equal(rb[:]["obs"].squeeze(-1), torch.arange(3.0))
    rb.storage.close()
    reopened = ZarrStorage.open(tmp_path / "b.zarr", mode="r")
    assert len(reopened) == 3  # the commit record counts the rows the store holds


def test_ragged_lazy_stack_is_refused_naming_the_alternative(tmp_path):
    rb = TensorDictReplayBuffer(storage=ZarrStorage(10, path=tmp_path / "b.zarr"))
    ragged = LazyStackedTensorDict(
        TensorDict(x=torch.zeros(3)), TensorDict(x=torch.zeros(4)), stack_dim=0
    )
    with pytest.raises(ValueError, match="ragged lazy stack.*pad_sequences"):
        rb.extend(ragged)


@pytest.mark.parametrize("key", ["zarr.json", ("next", "zarr.json")])
def test_leaf_named_like_zarr_metadata_is_refused(tmp_path, key):
    rb = TensorDictReplayBuffer(storage=ZarrStorage(10, path=tmp_path / "b.zarr"))
    with pytest.raises(ValueError, match="zarr metadata names"):
        rb.extend(TensorDict({key: torch.zeros(3)}, [3]))


def test_sub_row_assignment_on_an_ndim2_buffer_writes_through(tmp_path):
    """TorchRL routes ``rb[0, 3:4] = td`` through ``storage[:][0, 3:4] = td``: it must reach
    the store, not a copy (and survive a reopen)."""
    path = tmp_path / "b.zarr"
    rb = TensorDictReplayBuffer(storage=ZarrStorage(20, path=path, ndim=2, chunk_rows=4))
    rb.extend(TensorDict(x=torch.zeros(5, 4), batch_size=[5, 4]))
    rb[0, 3:4] = TensorDict(x=torch.ones(1), batch_size=[1])
    rb[2, 1] = TensorDict(x=torch.tensor(7.0), batch_size=[])
    expected = torch.zeros(5, 4)
    expected[0, 3], expected[2, 1] = 1.0, 7.0
    assert torch.equal(rb[:]["x"], expected)
    rb.storage.close()
    # the storage holds the buffer's rows along dim 0 (the buffer extends along dim 1)
    assert torch.equal(ZarrStorage.open(path, mode="r")[:]["x"], expected.T)


def test_assigning_a_key_of_the_full_view_is_refused(tmp_path):
    rb = TensorDictReplayBuffer(storage=ZarrStorage(20, path=tmp_path / "b.zarr", ndim=2))
    rb.extend(TensorDict(x=torch.zeros(5, 4), batch_size=[5, 4]))
    with pytest.raises(TypeError, match="only change a copy"):
        rb["x"] = torch.ones(5, 4)


def test_chunks_are_sized_by_bytes_so_a_huge_row_is_one_chunk(tmp_path):
    """Chunks target 8 MiB: rows of 1 MiB give 8-row chunks, rows of 8 MiB one-row chunks
    (chunks used to hold at least 16 rows, so one huge row cost 16x its size)."""
    for floats, rows_per_chunk in ((2**18 - 16, 8), (2**21, 1)):  # + the 8-byte "index"
        storage = ZarrStorage(4, path=tmp_path / f"b{floats}.zarr")
        rb = TensorDictReplayBuffer(storage=storage)
        rb.extend(TensorDict(x=torch.ones(1, floats), batch_size=[1]))
        assert storage.log.header.chunk_rows == rows_per_chunk
        assert torch.equal(rb[:]["x"], torch.ones(1, floats))


def test_no_path_makes_a_temporary_store_removed_at_close():
    storage = ZarrStorage(10_000)
    rb = TensorDictReplayBuffer(storage=storage, batch_size=4)
    rb.extend(rows(5))
    assert torch.equal(rb[:]["obs"].squeeze(-1), torch.arange(5.0))
    assert rb.sample()["obs"].shape == (4, 1)
    where = storage.location
    assert where.exists() and "temporary" in repr(storage)
    storage.close()
    assert not where.exists() and not where.parent.exists()


def test_a_temporary_store_is_removed_when_collected():
    import gc

    storage = ZarrStorage(100)
    storage.set(torch.arange(3), rows(3))
    where = storage.location
    del storage
    gc.collect()
    assert not where.parent.exists()


def test_existsok_reports_the_rows_already_held(tmp_path, caplog):
    path = tmp_path / "b.zarr"
    with ZarrStorage(10, path=path) as storage:
        storage.set(torch.arange(7), rows(7))
    assert ZarrStorage(10, path=tmp_path / "new.zarr").rows_at_open == 0
    with caplog.at_level("INFO", logger="zarrl.buffers"):
        again = ZarrStorage(10, path=path, existsok=True)
    assert again.rows_at_open == 7 and len(again) == 7
    assert "reopened with 7 rows" in repr(again)
    assert f"{path} already holds 7 rows" in caplog.text


def test_shared_init_is_refused_naming_the_alternative(tmp_path):
    with pytest.raises(ValueError, match="shared_init.*replay_buffer=rb.*mode='r'"):
        ZarrStorage(10, path=tmp_path / "b.zarr", shared_init=True)
    assert not (tmp_path / "b.zarr").exists()


def test_open_for_writing_a_read_only_store_fails_at_open(tmp_path, monkeypatch):
    """A read-only file system (EROFS, simulated: tests may run as root, who ignores modes)
    fails at ``open(mode="r+")`` with an error naming the store, not at the first commit."""
    import errno
    import os

    from zarrl.buffers import store_io

    path = tmp_path / "b.zarr"
    with ZarrStorage(10, path=path) as storage:
        storage.set(torch.arange(2), rows(2))
    real_open = os.open

    def read_only_fs(file, flags, *args, **kwargs):
        if str(file).startswith(str(path)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(store_io.os, "open", read_only_fs)
    with pytest.raises(OSError, match=f"{path}.*cannot be opened for writing.*mode='r'") as err:
        ZarrStorage.open(path, mode="r+")
    assert err.value.errno == errno.EROFS
    assert len(ZarrStorage.open(path, mode="r")) == 2  # reading needs no write


@pytest.mark.skipif(
    not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
    reason="root ignores directory permissions",
)
def test_open_for_writing_a_read_only_directory_fails_at_open(tmp_path):
    path = tmp_path / "b.zarr"
    with ZarrStorage(10, path=path) as storage:
        storage.set(torch.arange(2), rows(2))
    path.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match=str(path)):
            ZarrStorage.open(path, mode="r+")
    finally:
        path.chmod(0o755)


def test_os_errors_of_writes_name_the_store_and_lose_nothing(tmp_path, monkeypatch):
    import errno

    from zarrl.buffers import store_io

    path = tmp_path / "b.zarr"
    storage = ZarrStorage(100, path=path, chunk_rows=4)
    storage.set(torch.arange(3), rows(3))
    real_write = store_io.os.write

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_io.os, "write", disk_full)
    with pytest.raises(OSError, match=f"zarrl store {path}: No space left") as err:
        storage.flush()
    assert err.value.errno == errno.ENOSPC
    monkeypatch.setattr(store_io.os, "write", real_write)
    storage.flush()  # the staged rows were kept: the retry writes them
    storage.close()
    assert torch.equal(ZarrStorage.open(path, mode="r")[:]["obs"].squeeze(-1), torch.arange(3.0))


def test_partial_files_left_by_a_kill_are_removed_by_the_next_writer(tmp_path):
    path = tmp_path / "b.zarr"
    with ZarrStorage(100, path=path, chunk_rows=4) as storage:
        storage.set(torch.arange(6), rows(6))
    torn = [
        path / "obs" / "c.1.0.0123456789abcdef0123456789abcdef.partial",
        path / "zarr.0123456789abcdef0123456789abcdef.partial",
    ]
    for file in torn:
        file.write_bytes(b"torn")
    keep = path / "obs" / "notes.partial"  # not a name zarrl or zarr gives temporaries
    keep.write_bytes(b"x")
    ZarrStorage.open(path, mode="r")  # a reader leaves them (a writer may be using them)
    assert all(f.exists() for f in torn)
    reopened = ZarrStorage.open(path, mode="r+")
    assert not any(f.exists() for f in torn) and keep.exists()
    assert torch.equal(reopened[:]["obs"].squeeze(-1), torch.arange(6.0))


# ---- shared with LazyMemmapStorage: every test below runs against both (conftest.KINDS)
def test_pytrees_are_stored_and_returned_as_pytrees(storage_factory):
    from torchrl.data import ReplayBuffer

    storage = storage_factory(10)
    rb = ReplayBuffer(storage=storage, batch_size=3)

    def tree(a, n=None):
        shape = () if n is None else (n,)
        return {
            "a": a,
            "b": (torch.zeros(*shape, 2), [torch.ones(shape, dtype=torch.int64) * 7]),
        }

    rb.extend(tree(torch.arange(3.0), 3))  # one tree whose leaves hold 3 rows
    rb.add(tree(torch.tensor(3.0)))
    rb.extend([tree(torch.tensor(4.0)), tree(torch.tensor(5.0))])  # a list of elements
    assert len(rb) == 6
    got = rb[:]
    assert isinstance(got, dict) and isinstance(got["b"], tuple) and isinstance(got["b"][1], list)
    assert torch.equal(got["a"], torch.arange(6.0))
    assert got["b"][0].shape == (6, 2) and torch.equal(got["b"][1][0], torch.full((6,), 7))
    one = rb[2]
    assert torch.equal(one["a"], torch.tensor(2.0)) and one["b"][0].shape == (2,)
    sample = rb.sample()
    assert sample["a"].shape == (3,) and sample["b"][0].shape == (3, 2)
    assert set(sample["a"].tolist()) <= set(range(6))
    if isinstance(storage, ZarrStorage):  # LazyMemmapStorage writes it somehow
        with pytest.raises(ValueError, match="pytree structure.*nothing was written"):
            rb.extend({"a": torch.zeros(2)})  # a different structure is refused, not mixed in
        assert len(rb) == 6 and rb.write_count == 6  # no hole: the writer moved back


def test_elements_with_batch_dims_of_their_own_in_an_ndim1_storage(storage_factory):
    storage = storage_factory(10)
    rb = TensorDictReplayBuffer(storage=storage, batch_size=5)
    rb.extend(TensorDict(x=torch.arange(12.0).reshape(3, 4), batch_size=[3, 4]))
    assert len(rb) == 3
    assert rb[:].batch_size == (3, 4) and rb[0].batch_size == (4,)
    assert rb.sample().batch_size == (5, 4)
    value = rb[1].clone()
    value["x"] = -torch.ones(4)
    rb[1] = value
    expected = torch.arange(12.0).reshape(3, 4)
    expected[1] = -1
    assert torch.equal(rb[:]["x"], expected)


def test_elements_with_batch_dims_of_their_own_survive_a_reopen(tmp_path):
    path = tmp_path / "b.zarr"
    with ZarrStorage(10, path=path) as storage:
        TensorDictReplayBuffer(storage=storage).extend(
            TensorDict(x=torch.arange(12.0).reshape(3, 4), batch_size=[3, 4])
        )
    reader = ZarrStorage.open(path, mode="r")
    assert reader[:].batch_size == (3, 4)
    assert torch.equal(reader[:]["x"], torch.arange(12.0).reshape(3, 4))
    writer = ZarrStorage.open(path)
    rb = TensorDictReplayBuffer(storage=writer)
    with pytest.raises(ValueError, match=r"batch \[4\].*nothing was written"):
        rb.extend(TensorDict(x=torch.zeros(2, 5), batch_size=[2, 5]))
    assert len(rb) == 3


def test_pytrees_survive_a_reopen(tmp_path):
    path = tmp_path / "b.zarr"
    with ZarrStorage(10, path=path) as storage:
        storage.set(torch.arange(2), {"obs": torch.ones(2, 3), "act": (torch.arange(2),)})
    got = ZarrStorage.open(path, mode="r")[:]
    assert torch.equal(got["obs"], torch.ones(2, 3)) and torch.equal(got["act"][0], torch.arange(2))


def test_state_dict_loads_into_a_freshly_built_storage(tmp_path):
    source = TensorDictReplayBuffer(
        storage=ZarrStorage(10, path=tmp_path / "a.zarr", chunk_rows=4), batch_size=2
    )
    source.extend(rows(13))  # wraps the ring of 10
    state = source.state_dict()
    torch.save(state, tmp_path / "rb.pt")
    for fresh in (ZarrStorage(10, path=tmp_path / "b.zarr", chunk_rows=4), ZarrStorage(10)):
        rb = TensorDictReplayBuffer(storage=fresh, batch_size=2)
        rb.load_state_dict(torch.load(tmp_path / "rb.pt"))
        assert len(rb) == 10 and rb.write_count == 13
        assert torch.equal(rb[:]["obs"], source[:]["obs"])
        rb.extend(rows(1))  # continues the ring where the source stopped
        assert rb[3]["obs"].item() == 0.0 and source[3]["obs"].item() == 3.0
    source.extend(rows(1))
    source.storage.flush()
    with pytest.raises(ValueError, match="moved on since the state dict was taken"):
        TensorDictReplayBuffer(storage=ZarrStorage(10)).load_state_dict(state)


def test_save_and_load_hooks_run_in_dumps_and_loads(tmp_path):
    calls = []

    def save_hook(data, path=None):
        calls.append(("save", path))
        return data.set("obs", data["obs"] * 2)

    def load_hook(data, out=None):
        calls.append(("load", out))
        return data.set("obs", data["obs"] / 2)

    rb = TensorDictReplayBuffer(storage=ZarrStorage(10, path=tmp_path / "a.zarr"))
    rb.extend(rows(4))
    rb.register_save_hook(save_hook)
    rb.dumps(tmp_path / "ckpt")
    assert calls == [("save", tmp_path / "ckpt" / "storage")]
    saved = ZarrStorage.open(tmp_path / "ckpt" / "storage", mode="r")
    assert torch.equal(saved[:]["obs"].squeeze(-1), 2 * torch.arange(4.0))
    rb.dumps(tmp_path / "ckpt")  # a second dump replaces the first
    other = TensorDictReplayBuffer(storage=ZarrStorage(10, path=tmp_path / "b.zarr"))
    other.register_load_hook(load_hook)
    other.loads(tmp_path / "ckpt")
    assert calls[-1] == ("load", None)
    assert len(other) == 4 and torch.equal(other[:]["obs"], rb[:]["obs"])
