"""Storage indices as ring positions (``buffers/indexing.py``)."""

import pytest
import torch
from tensordict import TensorDict
from zarrl.buffers.indexing import apply_reindex, checked_rows, rows_and_reindex


def test_indices_become_positions_and_a_reindexing_of_the_gathered_block():
    rows, reindex = rows_and_reindex(-1, n0=10)
    assert rows.tolist() == [9] and reindex == (0,)
    rows, reindex = rows_and_reindex(slice(2, 8, 3), n0=10)
    assert rows.tolist() == [2, 5] and reindex is None
    rows, reindex = rows_and_reindex(torch.tensor([[1, -1], [0, 2]]), n0=10)
    assert rows.tolist() == [1, 9, 0, 2] and reindex == ("reshape", (2, 2))
    block = TensorDict({"x": torch.arange(4)}, [4])
    assert apply_reindex(block, reindex)["x"].tolist() == [[0, 1], [2, 3]]
    rows, _ = rows_and_reindex(torch.tensor([True, False, True]), n0=3)
    assert rows.tolist() == [0, 2]
    with pytest.raises(IndexError, match="10 rows"):
        rows_and_reindex(10, n0=10)
    with pytest.raises(IndexError, match="out of range"):
        checked_rows(torch.tensor([3, -11]), n0=10)
