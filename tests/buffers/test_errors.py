"""Bad input gives clear errors and loses nothing: schema mismatches, read-only storages,
foreign or newer stores, existing stores, corrupt chunks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import zarr
from tensordict import TensorDict
from torchrl.data import ReplayBuffer, TensorDictReplayBuffer
from zarrl.buffers import CorruptChunkError, ReadOnlyStorageError, StoreFormatError, ZarrStorage


def batch(n: int, start: int = 0) -> TensorDict:
    i = torch.arange(start, start + n)
    return TensorDict(
        {"obs": torch.stack([i, -i], -1).float().repeat(1, 20), ("next", "done"): i % 5 == 4},
        batch_size=[n],
    )


@pytest.fixture
def filled(tmp_path):
    path = tmp_path / "buf.zarr"
    storage = ZarrStorage(50, path=path, chunk_rows=8)
    rb = ReplayBuffer(storage=storage)
    rb.extend(batch(20))
    storage.flush()
    return path, storage, rb


@pytest.mark.parametrize(
    "bad, key",
    [
        (lambda td: td.set("extra", torch.zeros(td.shape[0])), "extra"),
        (lambda td: td.set("obs", td["obs"].double()), "obs"),
        (lambda td: td.set("obs", td["obs"][:, :3]), "obs"),
        (lambda td: td.exclude(("next", "done")), "next/done"),
    ],
    ids=["extra-key", "dtype", "shape", "missing-key"],
)
def test_schema_mismatch_names_key_and_both_schemas_and_writes_nothing(filled, bad, key):
    path, storage, rb = filled
    before = storage[:].clone()
    with pytest.raises(ValueError, match=re.escape(key)) as err:
        rb.extend(bad(batch(5, 100)))
    assert "stored schema" in str(err.value) and "data schema" in str(err.value)
    assert '"obs": ["float32", [40]]' in str(err.value)
    assert len(storage) == 20
    assert (storage[:] == before).all()
    rb.extend(batch(5, 20))  # the storage still works afterwards
    assert storage[24]["obs"][0] == 24


def test_read_only_storage_refuses_writes(filled):
    path, storage, _ = filled
    reader = ZarrStorage.open(path, mode="r")
    rb = ReplayBuffer(storage=reader, batch_size=4)
    with pytest.raises(ReadOnlyStorageError, match="read-only"):
        rb.extend(batch(3))
    assert len(reader) == 20 and rb.sample().shape == (4,)


def test_existing_store_is_refused_not_overwritten(filled):
    path, storage, _ = filled
    with pytest.raises(FileExistsError, match="existsok=True"):
        ZarrStorage(50, path=path)
    assert len(ZarrStorage.open(path, mode="r")) == 20
    again = ZarrStorage(50, path=path, existsok=True)
    assert len(again) == 20


def test_foreign_zarr_group_and_plain_directory_are_not_zarrl_stores(tmp_path):
    foreign = zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    foreign.create_array("x", shape=(4,), dtype="f4")
    with pytest.raises(StoreFormatError, match="not a zarrl replay store"):
        ZarrStorage.open(tmp_path / "foreign.zarr")
    with pytest.raises(StoreFormatError, match="not a zarrl replay store"):
        ZarrStorage(10, path=tmp_path / "foreign.zarr", existsok=True)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(StoreFormatError, match="not a zarrl store"):
        ZarrStorage.open(tmp_path / "plain")


def test_newer_format_version_is_refused(filled):
    path, _, _ = filled
    group = zarr.open_group(str(path), mode="a")
    meta = group.attrs.asdict()["zarrl"]
    meta["format_version"] = 99
    group.attrs.put({"zarrl": meta})
    with pytest.raises(StoreFormatError, match="version 99, newer"):
        ZarrStorage.open(path)


def test_mismatched_capacity_on_reopen_is_refused(filled):
    path, _, _ = filled
    with pytest.raises(ValueError, match="max_size=50"):
        ZarrStorage(60, path=path, existsok=True)


def _chunk_file(path: Path, array: str, chunk: int) -> Path:
    """Chunk files are ``c.<chunk>.0...`` (flat chunk keys, the default separator ".")."""
    files = sorted((path / array).glob(f"c.{chunk}*"))
    return next(f for f in files if f.is_file() and f.name.split(".")[1] == str(chunk))


@pytest.mark.parametrize("array", ["obs", "next/done"])
def test_flipped_bytes_raise_an_error_naming_array_and_chunk(filled, array):
    path, storage, _ = filled
    storage.close()
    chunk = _chunk_file(path, array, 1)
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunkError, match=re.escape(repr(array))) as err:
        reopened = ZarrStorage.open(path, mode="r", cache=1)  # index columns load at open
        reopened[torch.arange(20)]
    assert "crc32c" in str(err.value)
    assert "chunk 1" in str(err.value) or "rows 0:" in str(err.value)


def test_non_tensor_and_unsupported_dtypes_are_rejected_with_the_key(tmp_path):
    rb = TensorDictReplayBuffer(storage=ZarrStorage(10, path=tmp_path / "b.zarr"))
    with pytest.raises(ValueError, match="'halfish'.*bfloat16"):
        rb.extend(TensorDict({"halfish": torch.zeros(3, dtype=torch.bfloat16)}, [3]))
