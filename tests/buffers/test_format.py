"""The documented format: the plain-zarr reader in docs/storage_format.md reads what ZarrStorage
wrote, without zarrl; the attributes hold what the document says."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import zarr
from tensordict import TensorDict
from torchrl.data import ReplayBuffer
from zarrl.buffers import ZarrStorage

DOC = Path(__file__).resolve().parents[2] / "docs" / "storage_format.md"


def doc_reader() -> dict:
    """Executes the python block of the format document; returns its namespace."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace


def rows(start: int, n: int) -> TensorDict:
    i = torch.arange(start, start + n)
    return TensorDict(
        {"obs": i.float().unsqueeze(-1).repeat(1, 30), ("next", "done"): (i % 3 == 2)[:, None]},
        batch_size=[n],
    )


def test_plain_zarr_reader_from_the_document_reads_the_ring(tmp_path):
    path = str(tmp_path / "demo.zarr")
    with ZarrStorage(5, path=path, chunk_rows=2) as storage:
        rb = ReplayBuffer(storage=storage)
        rb.extend(rows(0, 8))
        expected = storage[:]
    reader = doc_reader()
    data = reader["read_replay_store"](path)
    assert data["obs"][:, 0].tolist() == [3, 4, 5, 6, 7]
    assert data["next/done"][:, 0].tolist() == [False, False, True, False, False]
    positions = reader["ring_positions"](path, 5)
    assert positions.tolist() == [3, 4, 0, 1, 2]
    assert torch.equal(expected["obs"][torch.as_tensor(positions)], torch.as_tensor(data["obs"]))


def test_plain_zarr_reader_handles_growing_and_emptied_buffers(tmp_path):
    path = str(tmp_path / "grow.zarr")
    storage = ZarrStorage(None, path=path, chunk_rows=4)
    rb = ReplayBuffer(storage=storage)
    rb.extend(rows(0, 10))
    rb.empty()
    rb.extend(rows(100, 6))
    storage.close()
    data = doc_reader()["read_replay_store"](path)
    assert data["obs"][:, 0].tolist() == [100, 101, 102, 103, 104, 105]


def test_attributes_hold_header_schema_commit_and_checksummed_chunks(tmp_path):
    path = str(tmp_path / "meta.zarr")
    with ZarrStorage(12, path=path, chunk_rows=4) as storage:
        ReplayBuffer(storage=storage).extend(rows(0, 7))
    group = zarr.open_group(path, mode="r")
    meta = group.attrs["zarrl"]
    assert meta["format"] == "zarrl.replay" and meta["format_version"] == 1
    assert meta["capacity"] == 12 and meta["chunk_rows"] == 4
    assert meta["schema"]["obs"] == {"dtype": "float32", "shape": [30]}
    assert meta["commit"]["write_count"] == 7 and meta["commit"]["length"] == 7
    assert "next/done" in meta["index_keys"]
    codecs = [c.to_dict()["name"] for c in group["obs"].compressors]
    assert codecs[-1] == "crc32c" and group["obs"].chunks == (4, 30)


def test_ring_arrays_are_sized_to_capacity_then_grow_geometrically(tmp_path):
    path = str(tmp_path / "extent.zarr")
    storage = ZarrStorage(10, path=path, chunk_rows=4)
    rb = ReplayBuffer(storage=storage)
    rb.extend(rows(0, 3))
    storage.flush()
    group = zarr.open_group(path, mode="r")
    assert group["obs"].shape[0] == 12  # capacity rounded up to whole chunks, no resize yet
    assert group.attrs["zarrl"]["commit"]["extent"] == 12
    rb.extend(rows(3, 11))  # physical rows 3..13: past the first extent
    storage.close()
    group = zarr.open_group(path, mode="r")
    assert group["obs"].shape[0] == group["next/done"].shape[0] == 24
    assert group.attrs["zarrl"]["commit"]["extent"] == 24
    data = doc_reader()["read_replay_store"](path)
    assert data["obs"][:, 0].tolist() == list(range(4, 14))


def test_commit_records_and_resizes_reach_non_local_stores():
    store = zarr.storage.MemoryStore()
    storage = ZarrStorage(None, path=store, chunk_rows=4)
    rb = ReplayBuffer(storage=storage)
    rb.extend(rows(0, 6))
    storage.flush()
    rb.extend(rows(6, 7))
    storage.flush()
    meta = zarr.open_group(store, mode="r").attrs["zarrl"]
    assert meta["commit"]["write_count"] == 13 and meta["commit"]["revision"] >= 2
    assert zarr.open_group(store, mode="r")["obs"].shape[0] == meta["commit"]["extent"] >= 13
    data = doc_reader()["read_replay_store"](store)
    assert data["obs"][:, 0].tolist() == list(range(13))
    reopened = ZarrStorage.open(store, mode="r")
    assert torch.equal(reopened[:]["obs"], rows(0, 13)["obs"])
