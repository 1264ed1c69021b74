"""The ring of a ``ZarrStorage``: capacity, write cursor and the map between ring positions
and physical rows.

Rows are stored in *physical* order (a write-order log: physical row ``base + i`` is the
``i``-th row appended since ``base``); a bounded ring of ``capacity`` rows (along dim 0) maps
physical row ``p`` to ring position ``(p - base) % capacity``. ``base`` moves (to a chunk
boundary) only when the buffer is emptied, so the physical rows of the old content are never
reused. A growing ring (``max_size=None``) has no capacity: positions are ``p - base``.
"""

from __future__ import annotations

import math

import torch


class Ring:
    """Capacity, ``base`` and ``write_count`` of one storage (rows along dim 0).

    Args:
        max_size: capacity in elements (rows × ``prod(tail)``); ``None``: grows without bound.
    """

    def __init__(self, max_size: int | None) -> None:
        if max_size is not None and int(max_size) <= 0:
            raise ValueError(f"max_size must be a positive int or None, got {max_size!r}")
        self.max_size: int | None = None if max_size is None else int(max_size)
        self.tail = None  # batch dims after dim 0, once known
        self.base = 0  # physical row of ring position 0 of the current generation 0
        self.write_count = 0  # rows appended since ``base`` (staged, may be ahead of a commit)

    # ------------------------------------------------------------------ capacity
    @property
    def growing(self) -> bool:
        return self.max_size is None

    @property
    def tail(self) -> tuple[int, ...] | None:
        """Batch dims after dim 0 (``None`` until the first write decides them)."""
        return self._tail

    @tail.setter
    def tail(self, tail: tuple[int, ...] | None) -> None:
        self._tail = None if tail is None else tuple(tail)
        self.row_elements = max(1, math.prod(self._tail or ()))  # elements per row
        # rows of the ring along dim 0 (None when growing); before the first write (tail
        # unknown) the capacity in elements
        self.capacity: int | None = self.capacity_for(self._tail or ())

    def capacity_for(self, tail: tuple[int, ...]) -> int | None:
        """Rows along dim 0 of a ring whose rows have batch dims ``tail``."""
        if self.max_size is None:
            return None
        return -(self.max_size // -max(1, math.prod(tail)))

    # ------------------------------------------------------------------ lengths
    def rows_of(self, elements: int) -> int:
        """Rows along dim 0 holding ``elements`` elements (rounded up)."""
        return -(elements // -self.row_elements)

    def live_len(self, write_count: int | None = None) -> int:
        """Elements live after ``write_count`` rows (default: this ring's) were appended."""
        wc = self.write_count if write_count is None else write_count
        cap0 = self.capacity
        return (wc if cap0 is None else min(wc, cap0)) * self.row_elements

    @property
    def end(self) -> int:
        """Physical row after the last appended row."""
        return self.base + self.write_count

    def cursor(self) -> int:
        """Ring position of the last appended row (``-1`` before any)."""
        cap0 = self.capacity
        return (self.write_count - 1) % cap0 if cap0 else self.write_count - 1

    def next_position(self, write_count: int | None = None) -> int:
        """Ring position a round-robin writer appends at after ``write_count`` rows."""
        wc = self.write_count if write_count is None else write_count
        cap0 = self.capacity
        return wc % cap0 if cap0 else wc

    # ------------------------------------------------------------------ positions
    def phys(self, pos: torch.Tensor) -> torch.Tensor:
        """Physical row of each ring position ``pos`` (int64, any shape)."""
        cap0, wc = self.capacity, self.write_count
        if cap0 is None or wc <= cap0:  # not wrapped yet: one generation
            return pos + self.base
        gen = torch.div(wc - 1 - pos, cap0, rounding_mode="floor").clamp_min(0)
        return self.base + gen * cap0 + pos

    def position(self, phys: torch.Tensor) -> torch.Tensor:
        """Ring position of each physical row ``phys`` (int64, any shape)."""
        rel = phys - self.base
        cap0 = self.capacity
        return rel if cap0 is None else rel % cap0

    def append_positions(self, n: int) -> torch.Tensor:
        """Ring positions of the next ``n`` appended rows (int64 ``[n]``)."""
        expected = self.write_count + torch.arange(n)
        cap0 = self.capacity
        return expected if cap0 is None else expected % cap0

    def live_range(self, rows: int) -> tuple[int, int]:
        """Physical rows ``[start, end)`` of the ``rows`` live rows (along dim 0)."""
        cap0, wc = self.capacity, self.write_count
        end = self.base + wc
        start = end - rows if cap0 is None else self.base + max(0, wc - cap0)
        if cap0 is not None and rows < min(wc, cap0):
            start = end - rows
        return start, max(start, end)

    def live_start(self, base: int, write_count: int) -> int:
        """First live physical row after ``write_count`` rows appended since ``base``."""
        cap0 = self.capacity
        return base if cap0 is None else base + max(0, write_count - cap0)

    # ------------------------------------------------------------------ moves
    def advance(self, n: int) -> None:
        """``n`` rows were appended."""
        self.write_count += n

    def restart(self, chunk_rows: int) -> None:
        """Emptied: the next generation starts at the chunk boundary after the last row, so no
        physical row (nor chunk) of the old content is reused."""
        self.base = -(-self.end // chunk_rows) * chunk_rows
        self.write_count = 0

    def adopt(self, base: int, write_count: int) -> None:
        """The state of a commit (reopened or refreshed)."""
        self.base, self.write_count = int(base), int(write_count)
