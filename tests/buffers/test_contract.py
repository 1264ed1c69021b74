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
    rb.extend(rows(3))  # the same storage still accepts tensor-only rows
    with pytest.raises(ValueError, match="'label'"):
        rb.extend(data)
    assert len(rb) == 3


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
    """Chunks target ~4 MiB: rows of 1 MiB give 4-row chunks, rows of 8 MiB one-row chunks
    (chunks used to hold at least 16 rows, so one huge row cost 16x its size)."""
    for floats, rows_per_chunk in ((2**18 - 16, 4), (2**21, 1)):  # + the 8-byte "index"
        storage = ZarrStorage(4, path=tmp_path / f"b{floats}.zarr")
        rb = TensorDictReplayBuffer(storage=storage)
        rb.extend(TensorDict(x=torch.ones(1, floats), batch_size=[1]))
        assert storage._header.chunk_rows == rows_per_chunk
        assert torch.equal(rb[:]["x"], torch.ones(1, floats))
