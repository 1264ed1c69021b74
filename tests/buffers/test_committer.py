"""The commit policy (``buffers/committer.py``) through its public methods."""

from types import SimpleNamespace

import pytest
import torch
from parts_support import store_parts
from zarrl.buffers.chunk_writer import ChunkWriter
from zarrl.buffers.committer import Committer
from zarrl.buffers.guard import StoreGuard
from zarrl.buffers.hot_tier import HotTier

R, ROWS = 4, 32


def _committer(path, **settings) -> Committer:
    log, ring, chunks = store_parts(path, ROWS, R, (2,))
    hot = HotTier(ring, log, chunks, cache="ram", device=torch.device("cpu"))
    hot.build(log.header)
    options = {
        "durability": "process",
        "commit_durability": "process",
        "flush_every_rows": None,
        "flush_every_seconds": None,
        "min_commit_interval": 0.0,
        "gc_grace_seconds": 0.0,
        **settings,
    }
    writer = ChunkWriter(ring, log, chunks, hot)
    guard = StoreGuard(str(path), read_only=False)
    return Committer(ring, log, chunks, writer, guard, SimpleNamespace(**options))


def _append(committer: Committer, n: int) -> None:
    rows = committer.ring.append_positions(n)
    obs = (committer.ring.end + torch.arange(n))[:, None].repeat(1, 2)
    committer.writer.write_rows(rows, {"obs": obs}, append=True)
    committer.after_write(committer.ring.live_len())


def test_completed_chunks_are_committed_and_the_head_chunk_stays_staged(tmp_path):
    committer = _committer(tmp_path / "c.zarr")
    _append(committer, 3)  # no chunk completed: nothing committed
    assert committer.log.commit.revision == 0 and committer.writer.staged
    _append(committer, 6)  # rows 0..8: chunks 0 and 1 complete, the head (row 8) staged
    commit = committer.log.commit
    assert (commit.revision, commit.write_count, commit.length) == (1, 8, 8)
    assert committer.writer.first_staged(99) == 2
    committer.flush("os", committer.ring.live_len())
    assert committer.log.latest().write_count == 9 and not committer.writer.staged
    revision = committer.log.commit.revision
    committer.flush("os", 9)  # nothing changed since: no new commit
    assert committer.log.commit.revision == revision


def test_a_deferred_commit_waits_for_min_commit_interval_and_flush_every_rows_forces_one(tmp_path):
    committer = _committer(tmp_path / "d.zarr", min_commit_interval=3600.0)
    _append(committer, 9)  # two chunks completed, but the last commit is not an hour old
    assert committer.log.commit.revision == 0 and not committer.completed_chunks_due()
    committer.commit_deferred(9)
    assert committer.log.commit.revision == 0
    forced = _committer(tmp_path / "f.zarr", min_commit_interval=3600.0, flush_every_rows=2)
    _append(forced, 3)
    assert forced.log.commit.write_count == 3  # an explicit trigger writes the head chunk too


def test_publish_refuses_an_unknown_durability_and_commits_nothing(tmp_path):
    committer = _committer(tmp_path / "p.zarr")
    _append(committer, 2)
    with pytest.raises(ValueError, match="durability must be 'os' or 'process', got 'disk'"):
        committer.flush("disk", 2)
    assert committer.log.commit.revision == 0 and "zarrl" not in committer.log.fresh_group().attrs
