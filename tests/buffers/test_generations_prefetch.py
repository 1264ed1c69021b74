"""The import's read-ahead (``buffers/generations/prefetch.py``): items in order, an error at
the item where the reading failed, and a caller that stops early stops the reader."""

from __future__ import annotations

import contextlib
import threading

import pytest
from zarrl.buffers.generations.prefetch import prefetched


def test_items_come_in_order_from_another_thread():
    threads = []

    def blocks():
        for i in range(50):
            threads.append(threading.get_ident())
            yield i

    assert list(prefetched(blocks(), depth=2)) == list(range(50))
    assert set(threads) == {threads[0]} and threads[0] != threading.get_ident()


def test_an_error_of_the_reading_is_raised_at_its_item():
    def blocks():
        yield 1
        yield 2
        raise ValueError("line 3 is cut short")

    got = []
    with pytest.raises(ValueError, match="line 3 is cut short"):
        for item in prefetched(blocks()):
            got.append(item)
    assert got == [1, 2]


def test_a_caller_that_stops_early_stops_the_reader():
    read = []
    finished = threading.Event()
    closed_on = []

    def blocks():
        try:
            for i in range(1000):
                read.append(i)
                yield i
        finally:
            closed_on.append(threading.get_ident())
            finished.set()

    with contextlib.closing(prefetched(blocks(), depth=1)) as items:
        for item in items:
            if item == 3:
                break
    assert finished.wait(5) and closed_on != [threading.get_ident()]  # on the reader thread
    assert len(read) <= 3 + 1 + 2  # the current item, the one slot, the one being read
