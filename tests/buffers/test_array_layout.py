"""Creating a store's arrays at once (``buffers/array_layout.py``): the documents zarr would
write, readable by plain zarr; leftovers are replaced, never reused."""

from __future__ import annotations

import json

import numpy as np
import zarr
import zarr.storage
from zarrl.buffers.array_layout import create_arrays
from zarrl.buffers.store_io import sync_log


def specs() -> dict:
    common = dict(fill_value=0, chunk_key_encoding={"name": "default", "separator": "."})
    return {
        "obs": dict(shape=(8, 3), chunks=(4, 3), dtype="float32", **common),
        "next/done": dict(shape=(8,), chunks=(4,), dtype="bool", dimension_names=["row"], **common),
        "a/b/c": dict(shape=(8, 2), chunks=(4, 2), dtype="int64", **common),
    }


def test_the_arrays_match_what_zarr_creates_and_plain_zarr_reads_them(tmp_path):
    ours = zarr.open_group(tmp_path / "ours.zarr", mode="w")
    ours.attrs["keep"] = 1
    made = create_arrays(ours, specs())
    theirs = zarr.open_group(tmp_path / "zarr.zarr", mode="w")
    for path, kw in specs().items():
        theirs.create_array(path, **kw)
    for path in specs():  # the same documents, parents included
        for node in {path, path.rpartition("/")[0]} - {""}:
            mine = json.loads((tmp_path / "ours.zarr" / node / "zarr.json").read_text())
            ref = json.loads((tmp_path / "zarr.zarr" / node / "zarr.json").read_text())
            assert mine == ref, node
    assert json.loads((tmp_path / "ours.zarr/zarr.json").read_text())["attributes"] == {"keep": 1}
    made["obs"][:] = np.arange(24, dtype=np.float32).reshape(8, 3)
    reread = zarr.open_group(tmp_path / "ours.zarr", mode="r")
    assert reread["obs"][:].ravel().tolist() == list(range(24))
    assert reread["next/done"].metadata.dimension_names == ("row",)
    assert reread["a/b/c"].shape == (8, 2)


def test_files_written_wait_for_the_next_durable_commit(tmp_path):
    group = zarr.open_group(tmp_path / "s.zarr", mode="w")
    log = sync_log(group.store)
    log.files.clear()
    create_arrays(group, specs())
    assert tmp_path / "s.zarr" / "obs" / "zarr.json" in log.files


def test_leftovers_of_an_uncommitted_first_write_are_replaced(tmp_path):
    group = zarr.open_group(tmp_path / "s.zarr", mode="w")
    old = group.create_array("obs", **specs()["obs"])
    old[:] = 7.0  # chunk files an identical new layout would read back
    made = create_arrays(group, specs())
    assert made["obs"][:].sum() == 0  # nothing of the old chunks survives


def test_other_stores_get_the_arrays_through_zarr():
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    made = create_arrays(group, specs())
    made["next/done"][:] = True
    assert group["next/done"][:].all() and group["a/b/c"].dtype == np.int64
