"""Rows as stored (``buffers/row_data.py``): header inference, schema checks, conversions."""

import pytest
import torch
from tensordict import TensorDict
from zarrl.buffers.commit_log import CommitLog, open_group
from zarrl.buffers.row_data import (
    TENSOR_KEY,
    as_tensordict,
    infer_header,
    nested_td,
    stored_leaves,
    validate,
)


def _element() -> TensorDict:
    return TensorDict({"obs": torch.zeros(256), ("next", "done"): torch.zeros(1, dtype=torch.bool)})


def test_the_header_of_a_first_element():
    header = infer_header(_element(), ndim=1, capacity=lambda tail: 100)
    assert header.capacity == 100 and header.chunk_rows == 4096  # <= 8 MiB of 1025-byte rows
    assert header.index_keys == ["next/done"]  # small leaves stay in RAM
    assert header.xor_previous == {} and set(header.chunk_seals["leaves"]) == {"obs", "next/done"}
    with pytest.raises(ValueError, match=r"index_keys \['reward'\]"):
        infer_header(_element(), 1, lambda tail: None, index_keys=["reward"])


def test_writes_that_differ_from_the_schema_name_the_key():
    header = infer_header(_element(), ndim=1, capacity=lambda tail: None, chunk_rows=8)
    batch = _element().expand(3).clone()
    assert set(validate(batch, header)) == {"obs", "next/done"}
    with pytest.raises(ValueError, match=r"key\(s\) \['obs'\]"):
        validate(batch.set("obs", torch.zeros(3, 255)), header)
    with pytest.raises(ValueError, match="zarr metadata names"):
        stored_leaves(TensorDict({"zarr.json": torch.zeros(1)}))


def test_tensors_and_pytrees_become_tensordicts(tmp_path):
    log = CommitLog(open_group(tmp_path / "s.zarr", "a"), "s", None, 1)
    td = as_tensordict(torch.ones(4, 2), batched=True, ndim=1, log=log)
    assert td[TENSOR_KEY].shape == (4, 2) and td.batch_size == (4,)
    td = as_tensordict({"a": torch.ones(4), "b": [torch.zeros(4, 3)]}, True, 1, log)
    assert log.pytree is not None and td["b", "0"].shape == (4, 3)
    leaves = {"x": torch.ones(2), "n/y": torch.zeros(2, 1)}
    assert nested_td(leaves, torch.Size([2]), None)["n", "y"].shape == (2, 1)
    with pytest.raises(TypeError, match="stores TensorDicts"):
        as_tensordict("text", True, 1, log)
