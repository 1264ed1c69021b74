"""The ring (``buffers/ring.py``) through its public methods: capacity, positions and moves."""

import pytest
import torch
from zarrl.buffers.ring import Ring


def test_capacity_counts_rows_of_the_tail_and_growing_has_none():
    ring = Ring(10)
    assert ring.capacity == 10 and ring.max_size == 10 and not ring.growing  # tail unknown yet
    ring.tail = (4,)
    assert ring.capacity == 3 and ring.capacity_for((4,)) == 3  # 10 elements: 3 rows of 4
    assert ring.rows_of(5) == 2 and ring.live_len(2) == 8 and ring.live_len(7) == 12
    growing = Ring(None)
    assert growing.growing and growing.capacity is None and growing.max_size is None
    with pytest.raises(ValueError, match="max_size"):
        Ring(0)


def test_positions_and_physical_rows_are_inverse_after_wrapping():
    ring = Ring(8)
    ring.tail = ()
    ring.advance(13)  # positions 0..4 hold rows 8..12, positions 5..7 rows 5..7
    pos = torch.arange(8)
    assert ring.phys(pos).tolist() == [8, 9, 10, 11, 12, 5, 6, 7]
    assert torch.equal(ring.position(ring.phys(pos)), pos)
    assert ring.live_range(8) == (5, 13) and ring.live_start(0, 13) == 5
    assert ring.cursor() == 4 and ring.next_position() == 5
    assert ring.append_positions(4).tolist() == [5, 6, 7, 0]


def test_restart_moves_base_to_the_next_chunk_boundary():
    ring = Ring(None)
    ring.tail = ()
    ring.advance(13)
    assert ring.end == 13 and ring.live_range(13) == (0, 13) and ring.cursor() == 12
    ring.restart(chunk_rows=8)  # no physical row of the old content is reused
    assert (ring.base, ring.write_count, ring.end) == (16, 0, 16)
    ring.advance(3)
    assert ring.phys(torch.arange(3)).tolist() == [16, 17, 18]
    ring.adopt(0, 5)
    assert (ring.base, ring.write_count) == (0, 5)
