"""A default store read by plain zarr and by xarray: true values in every array, named dims."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from tensordict import TensorDict
from torchrl.data import TensorDictReplayBuffer
from zarrl.buffers import ZarrStorage


def transitions(n: int) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n + 1, 3, generator=g).cumsum(0)
    obs[2, 0], obs[3, 1], obs[4, 2] = float("nan"), float("inf"), -0.0
    return TensorDict(
        {
            "observation": obs[:-1],
            "action": torch.randn(n, 2, generator=g).double(),
            "pixels": torch.randint(0, 255, (n, 2, 4), dtype=torch.uint8, generator=g),
            "episode": torch.arange(n) // 7,
            ("next", "observation"): obs[1:],
            ("next", "done"): torch.arange(n)[:, None] % 7 == 6,
        },
        [n],
    )


@pytest.mark.parametrize("ndim", [1, 2])
def test_plain_zarr_reads_every_leaf_of_a_default_store_exactly(tmp_path, ndim):
    data = transitions(48)
    if ndim == 2:
        data = data.reshape(12, 4)
    path = tmp_path / "s.zarr"
    storage = ZarrStorage(data.numel(), path=path, ndim=ndim, chunk_rows=4)
    TensorDictReplayBuffer(storage=storage).extend(data if ndim == 1 else data.transpose(0, 1))
    storage.close()
    group = zarr.open_group(path, mode="r")
    assert group.attrs["zarrl"]["format_version"] == 3
    for key, value in data.items(True, True):
        array = group["/".join(key) if isinstance(key, tuple) else key]
        want = value.numpy()
        got = array[: want.shape[0]]
        assert got.dtype == want.dtype
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), key  # bit-exact
        assert array.metadata.dimension_names[0] == ("row" if ndim == 1 else "time")


def test_xarray_opens_a_default_store_with_named_dimensions(tmp_path):
    xr = pytest.importorskip("xarray")
    data = transitions(20)
    path = tmp_path / "s.zarr"
    with ZarrStorage(20, path=path, chunk_rows=8) as storage:
        TensorDictReplayBuffer(storage=storage).extend(data)
    root = xr.open_zarr(path, consolidated=False)
    assert root["observation"].dims == ("row", "observation_dim0")  # extent: whole chunks
    np.testing.assert_array_equal(root["observation"][:20].values, data["observation"].numpy())
    nxt = xr.open_zarr(path, group="next", consolidated=False)
    assert nxt["observation"].dims == ("row", "next.observation_dim0")
    want = data["next", "observation"].numpy()
    np.testing.assert_array_equal(nxt["observation"][:20].values, want)


def test_dedupe_next_is_opt_in_and_marked_on_the_array(tmp_path):
    path = tmp_path / "x.zarr"
    with ZarrStorage(
        20, path=path, chunk_rows=8, dedupe_next=True, index_keys=["episode"]
    ) as storage:
        TensorDictReplayBuffer(storage=storage).extend(transitions(20))
    group = zarr.open_group(path, mode="r")
    assert group.attrs["zarrl"]["format_version"] == 3
    assert group["observation"].attrs["zarrl"]["source"] == "next/observation"
