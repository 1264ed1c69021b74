"""The RAM index columns (``buffers/index_columns.py``) through their public methods."""

import torch
from zarrl.buffers.format import Header, LeafSpec
from zarrl.buffers.index_columns import IndexColumns


def test_columns_grow_on_demand_and_keep_their_rows():
    schema = {"obs": LeafSpec("float32", (8,)), "done": LeafSpec("bool", (1,))}
    index = IndexColumns()
    index.build(Header(None, 1, (), 4, schema, ["done"], False))
    assert "done" in index and "obs" not in index and list(index) == ["done"]
    assert index.head("done", 2000).shape[0] == 1024  # a growing store starts at 1024 rows
    index.write(slice(0, 3), {"done": torch.tensor([[True], [False], [True]])})
    index.ensure_rows(3000)
    assert index.head("done", 3000).shape == (3000, 1)
    assert index.gather("done", torch.tensor([2, 1, 0])).view(-1).tolist() == [True, False, True]
    index.clear()
    assert not index.head("done", 3).any()
    assert not index.head("done", 3000)[3:].any()  # rows past those written read as zeros


def test_a_disabled_mirror_builds_no_column():
    schema = {"obs": LeafSpec("float32", (8,)), "done": LeafSpec("bool", (1,))}
    index = IndexColumns(enabled=False)
    index.build(Header(None, 1, (), 4, schema, ["done"], False))
    assert not index and "done" not in index
    index.ensure_rows(10)
    index.write(slice(0, 1), {"done": torch.tensor([[True]])})  # nothing to write into
    assert not index.columns
