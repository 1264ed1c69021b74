"""The commit log (``buffers/commit_log.py``) through its public methods."""

import time

import pytest
import zarr
from zarrl.buffers.commit_log import CommitLog, open_group
from zarrl.buffers.errors import StoreFormatError
from zarrl.buffers.format import Commit


def _log(path, mode="a") -> CommitLog:
    return CommitLog(open_group(path, mode), str(path), max_size=16, ndim=1)


def test_a_published_commit_is_what_another_log_of_the_store_reads(tmp_path):
    path = tmp_path / "s.zarr"
    writer = _log(path)
    writer.write()  # an empty store: no schema yet
    reader = _log(path, "r")
    header, commit = reader.read()
    assert header is None and (commit.revision, commit.write_count) == (0, 0)
    writer.publish(Commit(revision=1, write_count=5, length=5), durable=False, live_start=0)
    assert reader.latest().write_count == 5 and reader.latest().revision == 1
    assert reader.read()[1].write_count == 0  # the group as it was opened
    reader.reopen(reader.fresh_group())
    assert reader.read()[1].write_count == 5


def test_gc_threshold_waits_for_the_grace_period(tmp_path):
    log = _log(tmp_path / "s.zarr")
    log.publish(Commit(revision=1, write_count=8), durable=False, live_start=8)
    assert log.gc_threshold(grace_seconds=60) == 0  # a reader may still read rows 0..7
    time.sleep(0.01)
    assert log.gc_threshold(grace_seconds=0) == 8


def test_layout_checks_name_what_differs(tmp_path):
    log = _log(tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="max_size=32"):
        log.check_layout({"max_size": 32, "ndim": 1})
    log.check_layout({"max_size": 16, "ndim": 1})
    zarr.open_array(tmp_path / "a.zarr", mode="w", shape=(1,), dtype="f4", zarr_format=3)
    with pytest.raises(StoreFormatError, match="not a zarrl store"):
        open_group(tmp_path / "a.zarr", "r")
    with pytest.raises(FileNotFoundError, match="no zarrl store"):
        open_group(tmp_path / "missing", "r")
