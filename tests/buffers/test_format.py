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
    assert meta["format"] == "zarrl.replay" and meta["format_version"] == 3
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


def transitions(start: int, n: int) -> TensorDict:
    """Row ``i``: obs ``f(i)`` and next obs ``f(i + 1)``, except at trajectory ends (every 7th
    row), where the next obs is a terminal value; some values are NaN and ±inf."""
    i = torch.arange(start, start + n)

    def f(j):
        j = j.float()
        x = torch.stack([j * 0.5, torch.sin(j), -j, j / 3, torch.cos(j)], -1)  # 20 bytes
        x[j % 5 == 3, 1] = float("nan")
        x[j % 11 == 4, 2] = float("inf")
        return x

    end = (i % 7 == 6).unsqueeze(-1)
    return TensorDict(
        {
            "obs": f(i),
            "done": end,
            ("next", "obs"): torch.where(end, torch.full((n, 5), -7.0), f(i + 1)),
            ("next", "done"): end,
        },
        batch_size=[n],
    )


def bits(t: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t).view(torch.int32)


def test_next_duplicates_are_stored_xored_and_read_back_bit_exactly(tmp_path):
    path = str(tmp_path / "dedupe.zarr")
    with ZarrStorage(10, path=path, chunk_rows=4, dedupe_next=True) as storage:
        rb = ReplayBuffer(storage=storage)
        for start, n in [(0, 3), (3, 6), (9, 1), (10, 5), (15, 8)]:  # partial chunks, wraps
            rb.extend(transitions(start, n))
            storage.flush()
    meta = zarr.open_group(path, mode="r").attrs["zarrl"]
    assert meta["format_version"] == 3  # version 2 before chunk seals
    assert meta["xor_previous"] == {"obs": "next/obs"}  # "done" is an index column: not paired
    want = transitions(13, 10)
    data = doc_reader()["read_replay_store"](path)  # plain zarr undoes the XOR
    for key in ("obs", "next/obs"):
        assert torch.equal(bits(data[key]), bits(want[tuple(key.split("/"))]))
    stored = zarr.open_group(path, mode="r")["obs"][13:23]
    continued = (torch.arange(13, 23) % 4 != 0) & (torch.arange(12, 22) % 7 != 6)
    assert not stored[continued.numpy()].any()  # duplicates cost zero bytes before compression
    reader = ZarrStorage.open(path, mode="r", cache=1)
    got = reader.get(torch.arange(13, 23) % 10)
    assert torch.equal(bits(got["obs"]), bits(want["obs"]))
    assert torch.equal(bits(got["next", "obs"]), bits(want["next", "obs"]))


def test_dedupe_next_false_writes_stores_without_xor_previous(tmp_path):
    path = str(tmp_path / "plain.zarr")
    with ZarrStorage(10, path=path, chunk_rows=4, dedupe_next=False) as storage:
        ReplayBuffer(storage=storage).extend(transitions(0, 6))
    group = zarr.open_group(path, mode="r")
    meta = group.attrs["zarrl"]
    assert meta["format_version"] == 3 and "xor_previous" not in meta
    assert torch.equal(bits(group["obs"][:6]), bits(transitions(0, 6)["obs"]))
