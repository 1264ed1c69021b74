"""Format version 3: chunks bound to their array, index and commit; metadata bound to its
checksums; ``verify_store`` / ``zarrl verify`` list every problem, one line each."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import ReplayBuffer
from zarrl.buffers import CorruptChunkError, StoreFormatError, ZarrStorage
from zarrl.buffers.verify import verify_store

R = 8  # chunk rows


def batch(n: int, start: int = 0) -> TensorDict:
    i = torch.arange(start, start + n)
    obs = i.float()[:, None] * torch.arange(1, 9).float()
    return TensorDict(
        {
            "obs": obs,
            ("next", "obs"): obs + 1,
            ("next", "done"): (i % 5 == 4)[:, None],
        },
        batch_size=[n],
    )


def build(path: Path, rows: int = 40, capacity: int = 64, **kwargs) -> Path:
    with ZarrStorage(capacity, path=path, chunk_rows=R, **kwargs) as storage:
        ReplayBuffer(storage=storage).extend(batch(rows))
    return path


@pytest.fixture
def store(tmp_path) -> Path:
    return build(tmp_path / "buf.zarr")  # 40 rows: chunks 0..4 full


def chunk(store: Path, array: str, index: int) -> Path:
    return store / array / f"c.{index}.0"


def read_all(store: Path) -> TensorDict:
    storage = ZarrStorage.open(store, "r")
    try:
        return storage.get(torch.arange(len(storage)))
    finally:
        storage.close()


def edit_attrs(store: Path, edit) -> None:
    doc = json.loads((store / "zarr.json").read_text())
    edit(doc["attributes"]["zarrl"])
    (store / "zarr.json").write_text(json.dumps(doc))


def test_a_new_store_is_version_3_and_reads_back(store):
    meta = json.loads((store / "zarr.json").read_text())["attributes"]["zarrl"]
    assert meta["format_version"] == 3 and meta["chunk_seals"]["array"] == ".zarrl/seals"
    assert torch.equal(read_all(store)["obs"], batch(40)["obs"])
    assert verify_store(store) == []


def test_swapped_chunks_are_detected_naming_array_and_chunk(store):
    a, b = chunk(store, "obs", 1), chunk(store, "obs", 2)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    with pytest.raises(CorruptChunkError, match=r"array 'obs', chunk 1 \(rows 8:16\)"):
        read_all(store)
    problems = verify_store(store)
    assert [(p.array, p.chunk) for p in problems] == [("obs", 1), ("obs", 2)]


def test_a_chunk_copied_from_another_array_is_detected(store):
    shutil.copyfile(chunk(store, "obs", 1), chunk(store, "next/obs", 1))
    with pytest.raises(CorruptChunkError, match=r"array 'next/obs', chunk 1 .*copied"):
        read_all(store)


def test_a_stale_chunk_from_an_earlier_commit_is_detected(tmp_path):
    path = tmp_path / "buf.zarr"
    storage = ZarrStorage(64, path=path, chunk_rows=R)
    rb = ReplayBuffer(storage=storage)
    rb.extend(batch(12))
    storage.flush()  # chunk 1 committed with rows 8..11
    old = chunk(path, "obs", 1).read_bytes()
    rb.extend(batch(12, 12))
    storage.close()  # chunk 1 rewritten full
    chunk(path, "obs", 1).write_bytes(old)
    with pytest.raises(CorruptChunkError, match=r"array 'obs', chunk 1 .*earlier commit"):
        read_all(path)


def test_a_stale_head_chunk_is_detected(tmp_path):
    path = tmp_path / "buf.zarr"
    storage = ZarrStorage(64, path=path, chunk_rows=R)
    rb = ReplayBuffer(storage=storage)
    rb.extend(batch(10))
    storage.flush()
    old = chunk(path, "obs", 1).read_bytes()
    rb.extend(batch(3, 10))
    storage.close()  # chunk 1 still the partly filled head, now 5 rows
    chunk(path, "obs", 1).write_bytes(old)
    with pytest.raises(CorruptChunkError, match=r"array 'obs', chunk 1 .*head chunk"):
        read_all(path)


def test_an_in_place_rewrite_leaves_only_the_new_version_valid(store):
    old = chunk(store, "obs", 1).read_bytes()
    storage = ZarrStorage.open(store, "r+")
    storage.set(torch.tensor([9]), batch(1, 100), set_cursor=False)
    storage.close()
    assert read_all(store)["obs"][9, 0] == 100
    chunk(store, "obs", 1).write_bytes(old)
    with pytest.raises(CorruptChunkError, match=r"array 'obs', chunk 1"):
        read_all(store)


def test_a_deleted_committed_chunk_raises_on_read(store):
    chunk(store, "obs", 1).unlink()
    with pytest.raises(CorruptChunkError, match=r"array 'obs', chunk 1 \(rows 8:16\) is missing"):
        read_all(store)


def test_a_deleted_index_column_chunk_raises_on_open(store):
    chunk(store, "next/done", 2).unlink()  # an index column: read when the store opens
    with pytest.raises(CorruptChunkError, match=r"array 'next/done', chunk 2 .*missing"):
        ZarrStorage.open(store, "r")


def test_a_deleted_chunk_is_reported_by_verify(store):
    chunk(store, "obs", 3).unlink()
    problems = verify_store(store)
    assert len(problems) == 1
    assert (problems[0].array, problems[0].chunk) == ("obs", 3)
    assert "missing" in str(problems[0])


@pytest.mark.parametrize(
    "edit, attr",
    [
        (lambda m: m["commit"].update(length=10), "'commit'"),
        (lambda m: m["commit"].update(write_count=36, length=36), "'commit'"),
        (lambda m: m.update(capacity=48, max_size=48), "'capacity'"),
        (lambda m: m["checksums"].pop("codec") and m.pop("codec"), "'checksums'"),
    ],
    ids=["length-smaller", "write-count-smaller", "capacity", "attribute-and-checksum-removed"],
)
def test_attributes_edited_within_their_ranges_are_detected(store, edit, attr):
    edit_attrs(store, edit)
    for mode in ("r", "r+"):
        with pytest.raises(StoreFormatError, match=re.escape(attr)) as err:
            ZarrStorage.open(store, mode)
        assert "zarr.json" in str(err.value)
    assert len(verify_store(store)) == 1


def test_an_array_codec_chain_edited_is_detected(store):
    """Without the row-delta filters the same bytes decode (crc32c intact) to wrong values."""
    meta_file = store / "obs" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["codecs"] = [c for c in meta["codecs"] if c["name"] != "numcodecs.delta"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match=r"obs/zarr.json: codecs"):
        ZarrStorage.open(store, "r")
    (problem,) = verify_store(store)
    assert problem.array == "obs" and "chunk_seals" in str(problem)


def test_xor_previous_removed_is_detected(tmp_path):
    path = build(tmp_path / "dedupe.zarr", dedupe_next=True)
    assert "xor_previous" in json.loads((path / "zarr.json").read_text())["attributes"]["zarrl"]
    assert torch.equal(read_all(path)["obs"], batch(40)["obs"])
    edit_attrs(path, lambda m: m.pop("xor_previous"))
    with pytest.raises(StoreFormatError, match=r"zarr.json: .*'xor_previous'.* removed"):
        ZarrStorage.open(path, "r")


def test_a_commit_record_without_head_checksums_is_refused(tmp_path):
    path = build(tmp_path / "buf.zarr", rows=13)  # chunk 1 partly filled
    edit_attrs(path, lambda m: m["commit"].pop("head"))
    with pytest.raises(StoreFormatError, match=r"'commit'\]\['head'\]"):
        ZarrStorage.open(path, "r")


def downgrade(path: Path, version: int) -> None:
    """The same store as zarrl wrote it before version 3 (no seals, no checksums)."""

    def edit(meta):
        for name in ("chunk_seals", "checksums"):
            meta.pop(name)
        meta["commit"].pop("head")
        meta["format_version"] = version

    edit_attrs(path, edit)
    shutil.rmtree(path / ".zarrl")


@pytest.mark.parametrize("version", [1, 2])
def test_version_1_and_2_stores_still_open_read_and_continue(tmp_path, version):
    path = build(tmp_path / "old.zarr", dedupe_next=version == 2)
    downgrade(path, version)
    assert torch.equal(read_all(path)["obs"], batch(40)["obs"])
    storage = ZarrStorage.open(path, "r+")
    ReplayBuffer(storage=storage).extend(batch(4, 40))
    storage.close()
    meta = json.loads((path / "zarr.json").read_text())["attributes"]["zarrl"]
    assert meta["format_version"] == version and "checksums" not in meta
    assert torch.equal(read_all(path)["next", "obs"], batch(44)["next", "obs"])
    assert verify_store(path) == []
    chunk(path, "obs", 1).unlink()  # unbound: versions 1 and 2 may omit all-zero chunks
    assert verify_store(path) == []


def test_verify_reads_corrupt_bytes_as_a_problem(store):
    raw = bytearray(chunk(store, "next/obs", 2).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk(store, "next/obs", 2).write_bytes(bytes(raw))
    (problem,) = verify_store(store)
    assert (problem.array, problem.chunk) == ("next/obs", 2) and "crc32c" in str(problem)


def test_verify_reports_an_unreadable_chunk_and_goes_on(store):
    chunk(store, "obs", 2).unlink()
    chunk(store, "obs", 2).mkdir()  # a directory where the chunk file belongs
    chunk(store, "next/obs", 3).unlink()
    problems = verify_store(store)
    assert [(p.array, p.chunk) for p in problems] == [("obs", 2), ("next/obs", 3)]
    assert "could not be read" in str(problems[0]) and "missing" in str(problems[1])


def test_zarrl_verify_exit_codes_and_one_line_per_problem(store, capsys):
    from zarrl.engine.cli import main

    assert main(["verify", str(store)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "OK" in out[0] and "40 rows" in out[0]
    a, b = chunk(store, "obs", 1), chunk(store, "obs", 2)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    chunk(store, "next/obs", 4).unlink()
    assert main(["verify", str(store)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 3
    assert "'obs', chunk 1" in lines[0] and "'obs', chunk 2" in lines[1]
    assert "'next/obs', chunk 4" in lines[2] and "missing" in lines[2]
    assert "3 problem(s)" in captured.err
    assert main(["inspect", "--check", str(store)]) == 1
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_zarrl_verify_of_invalid_metadata_is_one_line(store, capsys):
    from zarrl.engine.cli import main

    edit_attrs(store, lambda m: m["commit"].update(length=10))
    assert main(["verify", str(store)]) == 1
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert "zarr.json" in line and "'commit'" in line
    assert main(["verify", str(store / "absent")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_a_concurrent_reader_sees_no_false_corruption(tmp_path):
    """Head rewrites, completed chunks, in-place rewrites and recycled chunks while a reader
    reads: every read returns the committed values or is retried, never a false error."""
    path = tmp_path / "ring.zarr"
    writer = ZarrStorage(48, path=path, chunk_rows=R, gc_grace_seconds=0.0, min_commit_interval=0)
    rb = ReplayBuffer(storage=writer)
    rb.extend(batch(5))
    writer.flush()
    reader = ZarrStorage.open(path, "r")
    for step in range(40):
        rb.extend(batch(5, 5 + 5 * step))
        if step % 3 == 0:
            last = torch.tensor([len(writer) - 1])
            writer.set(last, batch(1, 5 + 5 * step + 4), set_cursor=False)
        writer.flush()
        reader.refresh()
        got = reader.get(torch.arange(len(reader)))
        assert torch.equal(got["obs"] + 1, got["next", "obs"])
    writer.close()
    reader.close()
    assert verify_store(path) == []
