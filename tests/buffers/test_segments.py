"""Per-writer segments (``buffers/segments.py``): several processes append to one logical buffer,
each to its own segment; a reader sees the union in a defined order."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import zarr
from tensordict import TensorDict
from zarrl.buffers.errors import StoreFormatError
from zarrl.buffers.segments import (
    SegmentedReader,
    list_segments,
    open_segment_writer,
    segment_path,
)


def rows(writer: int, start: int, n: int) -> TensorDict:
    i = torch.arange(start, start + n)
    return TensorDict(
        {"id": writer * 1_000_000 + i, "obs": torch.stack([i.float(), float(writer) + 0 * i], -1)},
        batch_size=[n],
    )


WRITER = textwrap.dedent(
    """
    import json, sys, torch
    from tensordict import TensorDict
    from torchrl.data import ReplayBuffer
    from zarrl.buffers.segments import open_segment_writer
    root, writer, options = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    st = open_segment_writer(root, f"w{writer}", chunk_rows=16, storage_options=options)
    rb = ReplayBuffer(storage=st)
    for b in range(6):
        i = torch.arange(b * 25, b * 25 + 25)
        rb.extend(TensorDict({"id": writer * 1_000_000 + i,
                              "obs": torch.stack([i.float(), float(writer) + 0 * i], -1)}, [25]))
        st.flush()
    st.close()
    """
)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_writer_processes_append_to_one_logical_buffer(tmp_path, where, request):
    root, options = str(tmp_path / "buf"), None
    if where == "s3":
        bucket, options = request.getfixturevalue("s3")
        root = f"{bucket}/buf"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, root, str(k), json.dumps(options)])
        for k in (1, 0)
    ]
    assert [p.wait(timeout=240) for p in procs] == [0, 0]
    assert list_segments(root, options) == ["w0", "w1"]
    with SegmentedReader(root, options) as reader:
        assert reader.lengths() == {"w0": 150, "w1": 150}
        got = reader.get(torch.arange(300))
        want = torch.cat([rows(0, 0, 150), rows(1, 0, 150)])  # writer order, then write order
        assert torch.equal(got["id"], want["id"]) and torch.equal(got["obs"], want["obs"])
        picked = torch.tensor([299, 0, 150, 149])
        assert torch.equal(reader.get(picked)["id"], want["id"][picked])
        with pytest.raises(IndexError, match=r"\[0, 300\)"):
            reader.get(torch.tensor([300]))


def test_a_reader_refresh_sees_new_commits_and_new_segments(tmp_path):
    from torchrl.data import ReplayBuffer

    root = tmp_path / "buf"
    a = open_segment_writer(root, "a", chunk_rows=8)
    ReplayBuffer(storage=a).extend(rows(0, 0, 10))
    a.flush()
    reader = SegmentedReader(root)
    assert len(reader) == 10
    b = open_segment_writer(root, "b", chunk_rows=8)
    ReplayBuffer(storage=b).extend(rows(1, 0, 5))
    b.flush()
    ReplayBuffer(storage=a).extend(rows(0, 10, 3))
    a.flush()
    assert reader.refresh() and reader.lengths() == {"a": 13, "b": 5}
    a.close()
    b.close()
    again = open_segment_writer(root, "a")  # continues its own segment
    assert again.rows_at_open == 13
    again.close()
    reader.close()


def test_a_segment_being_created_is_skipped_until_it_is_a_zarrl_store(tmp_path):
    """A writer that has created its segment's group but not yet written zarrl's record (or was
    killed right there) holds no committed row: readers skip it instead of failing, and the
    writer (or its restart) still creates its segment there."""
    from torchrl.data import ReplayBuffer

    root = tmp_path / "buf"
    a = open_segment_writer(root, "a", chunk_rows=8)
    ReplayBuffer(storage=a).extend(rows(0, 0, 4))
    a.flush()
    zarr.open_group(segment_path(root, "b"), mode="w")  # the bare group, as at creation
    assert list_segments(root) == ["a"]
    reader = SegmentedReader(root)
    assert reader.lengths() == {"a": 4}
    b = open_segment_writer(root, "b", chunk_rows=8)
    ReplayBuffer(storage=b).extend(rows(1, 0, 3))
    b.flush()
    assert reader.refresh() and reader.lengths() == {"a": 4, "b": 3}
    assert reader.get(torch.arange(7))["id"].tolist() == [
        0,
        1,
        2,
        3,
        1_000_000,
        1_000_001,
        1_000_002,
    ]
    for storage in (a, b, reader):
        storage.close()


def test_a_foreign_group_among_the_segments_is_named(tmp_path):
    root = tmp_path / "buf"
    group = zarr.open_group(segment_path(root, "x"), mode="w")
    group.attrs["owner"] = "someone else"
    with pytest.raises(StoreFormatError, match="not a zarrl replay store"):
        SegmentedReader(root)


def test_writer_names_are_checked():
    for bad in ["", ".hidden", "a/b", "x.zarr", "a" * 129]:
        with pytest.raises(ValueError, match="writer name"):
            segment_path("/tmp/r", bad)
    assert segment_path("s3://b/r", "w-1") == "s3://b/r/segments/w-1.zarr"
