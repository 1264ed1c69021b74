"""Corrupt or hostile stores: a clear error naming the file and attribute, never wrong data,
never a write outside the store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import ReplayBuffer
from zarrl.buffers import StoreFormatError, UnsafeStoreError, ZarrStorage
from zarrl.buffers.seals import attribute_checksums


def batch(n: int, start: int = 0) -> TensorDict:
    i = torch.arange(start, start + n)
    return TensorDict(
        {"obs": i.float()[:, None].repeat(1, 8), ("next", "done"): (i % 5 == 4)[:, None]},
        batch_size=[n],
    )


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "buf.zarr"
    with ZarrStorage(64, path=path, chunk_rows=8) as storage:
        ReplayBuffer(storage=storage).extend(batch(20))
    return path


def test_a_link_at_the_next_chunk_name_is_refused_and_the_outside_file_kept(store, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    (store / "obs" / "c.3.0").symlink_to(outside)  # rows 24..31: the next chunk to be written
    storage = ZarrStorage.open(store, "r+")
    ReplayBuffer(storage=storage).extend(batch(20, 20))
    with pytest.raises(UnsafeStoreError, match=re.escape(str(store / "obs" / "c.3.0"))):
        storage.flush()
    assert outside.read_text() == "precious"


def test_a_linked_array_directory_is_refused(store, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (store / "obs").rename(elsewhere)
    (store / "obs").symlink_to(elsewhere, target_is_directory=True)
    storage = ZarrStorage.open(store, "r+")
    ReplayBuffer(storage=storage).extend(batch(20, 20))
    with pytest.raises(UnsafeStoreError, match="symbolic link"):
        storage.flush()


def _edit(path: Path, edit) -> None:
    doc = json.loads((path / "zarr.json").read_text())
    edit(doc["attributes"]["zarrl"])
    (path / "zarr.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "edit, attr",
    [
        (lambda m: m["commit"].update(write_count=-5), "'write_count'"),
        (lambda m: m["commit"].update(length="20"), "'length'"),
        (lambda m: m["commit"].update(length=10_000), "'length'"),
        (lambda m: m.update(commit=None), "'commit'"),
        (lambda m: m.pop("commit"), "'commit'"),
        (lambda m: m.update(chunk_rows=0), "'chunk_rows'"),
        (lambda m: m.update(chunk_rows=2**40), "'chunk_rows'"),
        (lambda m: m.update(capacity=-1), "'capacity'"),
        (lambda m: m.update(index_keys=["ghost"]), "'index_keys'"),
        (lambda m: m["schema"]["obs"].update(dtype="float128"), "'obs'"),
        (lambda m: m.update(tail=[4]), "'tail'"),
        (lambda m: m["commit"].update(extent=3), "'extent'"),
        (lambda m: m.update(format_version="2"), "'format_version'"),
    ],
    ids=[
        "negative-write-count",
        "string-length",
        "length-past-rows",
        "null-commit",
        "missing-commit",
        "zero-chunk-rows",
        "huge-chunk-rows",
        "negative-capacity",
        "ghost-index-key",
        "unknown-dtype",
        "tail-vs-ndim",
        "extent-below-rows",
        "string-version",
    ],
)
def test_invalid_attributes_name_the_file_and_attribute(store, edit, attr):
    _edit(store, edit)
    for mode in ("r", "r+"):
        with pytest.raises(StoreFormatError, match=re.escape(attr)) as err:
            ZarrStorage.open(store, mode)
        assert "zarr.json" in str(err.value)


def test_schema_dtype_edited_against_the_array_metadata_is_refused(store):
    _edit(store, lambda m: m["schema"]["obs"].update(dtype="float64"))
    with pytest.raises(StoreFormatError, match=r"zarr.json: .*\['schema'\] does not match"):
        ZarrStorage.open(store, "r")  # the checksum of the schema (format version 3)

    def recompute(meta):  # a writer that recomputes the checksums is caught by the arrays
        meta["checksums"] = attribute_checksums(meta)

    _edit(store, recompute)
    with pytest.raises(StoreFormatError, match=r"obs/zarr.json: data_type float32"):
        ZarrStorage.open(store, "r")


def test_array_data_type_edited_is_refused(store):
    meta = json.loads((store / "obs" / "zarr.json").read_text())
    meta["data_type"] = "int32"
    (store / "obs" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match=r"obs/zarr.json: data_type int32"):
        ZarrStorage.open(store, "r")


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00"], ids=["json", "utf8"])
def test_array_metadata_that_is_not_json_names_the_file(store, content):
    (store / "obs" / "zarr.json").write_bytes(content)
    with pytest.raises(StoreFormatError, match=r"obs/zarr.json"):
        ZarrStorage.open(store, "r")


def test_inspect_of_a_corrupt_store_prints_one_line_and_fails(store, capsys):
    from zarrl.engine.cli import main

    assert main(["inspect", str(store)]) == 0
    capsys.readouterr()
    _edit(store, lambda m: m["commit"].update(write_count=-5))
    assert main(["inspect", str(store)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'write_count'" in err
