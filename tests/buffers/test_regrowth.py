"""A writer killed after growing the arrays' metadata but before its commit counted the new
extent leaves arrays larger than the commit says; the next writer of the store continues
(found by ``benchmarks/soak.py``: the flush failed with "grow_array cannot shrink")."""

from __future__ import annotations

import torch
import zarr
from tensordict import TensorDict
from torchrl.data import ReplayBuffer
from zarrl.buffers import ZarrStorage
from zarrl.buffers.store_io import grow_array


def batch(n: int, start: int = 0) -> TensorDict:
    i = torch.arange(start, start + n)
    return TensorDict({"id": i, "obs": i.float()[:, None] * torch.ones(3)}, batch_size=[n])


def test_arrays_grown_past_the_commit_by_a_killed_writer_are_continued(tmp_path):
    path = tmp_path / "run.zarr"
    with ZarrStorage(None, path=path, chunk_rows=8) as st:
        ReplayBuffer(storage=st).extend(batch(12))
    group = zarr.open_group(path, mode="r+")
    for name in ("id", "obs", ".zarrl/seals"):  # what the killed writer's growth left
        array = group[name]
        grow_array(array, array.shape[0] * 16)
    with ZarrStorage.open(path) as st:
        assert group["id"].shape[0] > 2 * st.log.commit.extent  # larger than the commit says
        ReplayBuffer(storage=st).extend(batch(20, 12))
        st.flush()
    with ZarrStorage.open(path, "r") as st:
        assert torch.equal(st.get(torch.arange(len(st)))["id"], torch.arange(32))
