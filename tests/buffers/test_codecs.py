"""The default codec policy (``buffers/codecs.py``): one chain per leaf kind, every chain stock
zarr v3 + numcodecs, so plain ``zarr.open`` reads each kind back bit-exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from tensordict import TensorDict
from torchrl.data import TensorDictReplayBuffer
from zarrl.buffers import ZarrStorage
from zarrl.buffers import codecs as leaf_codecs
from zarrl.buffers.format import LeafSpec

# one leaf of each kind the policy tells apart, with the chain it must get
KINDS = {
    "state": ("float32", (17,), "float_series"),  # a few columns followed over steps
    "reward": ("float64", (1,), "float_series"),
    "log_probs": ("float32", (128,), "float_wide"),  # structure within the row
    "embedding": ("float16", (4, 32), "float_wide"),
    "tokens": ("int64", (128,), "other"),
    "pixels": ("uint8", (3, 8, 8), "other"),
    "done": ("bool", (1,), "other"),
}


def chain_names(options: dict) -> tuple[list[str], list[tuple[str, str | None]]]:
    filters = [type(c).__name__ for c in options["filters"]]
    comps = [
        (type(c).__name__, getattr(getattr(c, "cname", None), "value", None))
        for c in options["compressors"]
    ]
    return filters, comps


@pytest.mark.parametrize("name", list(KINDS))
def test_each_leaf_kind_gets_its_chain(name):
    dtype, shape, kind = KINDS[name]
    assert leaf_codecs.leaf_kind(np.dtype(dtype), shape) == kind
    filters, comps = chain_names(leaf_codecs.array_options(name, LeafSpec(dtype, shape), 1, None))
    if kind == "float_series":
        assert filters == ["TransposeCodec", "AsType", "Delta", "Delta"]
        assert comps == [("BloscCodec", "zstd")]
    else:  # wide floats and everything else: no filter, LZ4 (the fast chain)
        assert filters == []
        assert comps == [("BloscCodec", "lz4")]


def test_series_threshold_is_per_environment_row():
    spec = LeafSpec("float32", (leaf_codecs.SERIES_MAX_ELEMENTS,))
    wider = LeafSpec("float32", (leaf_codecs.SERIES_MAX_ELEMENTS + 1,))
    # ndim=2 (a [time, env] buffer): the tail of envs does not widen a row of one env
    filters, _ = chain_names(leaf_codecs.array_options("x", spec, 2, None))
    assert filters[-1] == "Delta"
    filters, comps = chain_names(leaf_codecs.array_options("x", wider, 2, None))
    assert filters == [] and comps == [("BloscCodec", "lz4")]


def test_explicit_compressors_replace_the_policy_compressor_of_every_leaf():
    zstd = zarr.codecs.ZstdCodec(level=3)
    for name, (dtype, shape, kind) in KINDS.items():
        options = leaf_codecs.array_options(name, LeafSpec(dtype, shape), 1, [zstd])
        filters, comps = chain_names(options)
        assert comps == [("ZstdCodec", None)]
        assert bool(filters) == (kind == "float_series")


def test_per_leaf_compressors_replace_the_whole_chain_of_the_leaves_named(tmp_path):
    lz4 = zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    for name, (dtype, shape, _) in KINDS.items():
        options = leaf_codecs.array_options(name, LeafSpec(dtype, shape), 1, {"reward": [lz4]})
        filters, comps = chain_names(options)
        if name == "reward":  # a float series by its shape: no row delta when named
            assert (filters, comps) == ([], [("BloscCodec", "lz4")])
        else:  # the others keep the policy's chain
            default = leaf_codecs.array_options(name, LeafSpec(dtype, shape), 1, None)
            assert (filters, comps) == chain_names(default)
    data = kinds_data(40)
    storage = ZarrStorage(None, path=tmp_path / "s", chunk_rows=16, compressors={"reward": [lz4]})
    storage.set(torch.arange(40), data)
    storage.close()
    plain = zarr.open_group(str(tmp_path / "s"), mode="r")
    codecs = [type(c).__name__ for c in plain["reward"].metadata.codecs]
    assert codecs == ["BytesCodec", "BloscCodec", "Crc32cCodec"]
    assert np.array_equal(plain["reward"][:40], data["reward"].numpy())


def kinds_data(n: int) -> TensorDict:
    g = torch.Generator().manual_seed(3)
    state = torch.randn(n + 1, 17, generator=g).cumsum(0)
    state[1, 0], state[2, 1], state[3, 2] = float("nan"), float("-inf"), -0.0
    out = {}
    for name, (dtype, shape, _) in KINDS.items():
        t = torch.randn(n, *shape, generator=g) * 10
        if dtype == "bool":
            t = t > 0
        out[name] = t.to(getattr(torch, dtype))
    out["state"] = state[:-1]
    out["log_probs"][0, :3] = torch.tensor([float("nan"), float("inf"), -0.0])
    out["tokens"] = torch.randint(0, 32000, (n, 128), generator=g)
    out["pixels"] = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    return TensorDict(out, [n])


def test_plain_zarr_reads_every_leaf_kind_back_bit_exactly(tmp_path):
    data = kinds_data(40)
    path = tmp_path / "kinds.zarr"
    with ZarrStorage(40, path=path, chunk_rows=16) as storage:
        TensorDictReplayBuffer(storage=storage).extend(data)
    group = zarr.open_group(path, mode="r")
    for name, (_, _, kind) in KINDS.items():
        array = group[name]
        has_delta = any(type(c).__name__ == "Delta" for c in array.filters)
        assert has_delta == (kind == "float_series"), name
        got = array[:40]
        want = data[name].numpy()
        assert got.dtype == want.dtype, name
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), name  # bit-exact
