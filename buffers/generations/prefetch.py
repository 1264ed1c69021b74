"""Read-ahead of an import's blocks: the next block is read and decoded on a thread while the
caller validates and appends the current one (pyarrow's Parquet decoding releases the GIL)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


def prefetched(blocks: Iterable[T], depth: int = 1) -> Iterator[T]:
    """The items of ``blocks`` in order, each produced on a reader thread up to ``depth``
    items ahead of the caller (``depth`` bounds the items held in RAM beyond the current one).
    An error of the reading is raised at the item where it happened; a caller that stops early
    (``close()`` of this generator, or an error of its own) stops the reader at its next item,
    which closes ``blocks`` (a generator) on the reader thread."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    source = iter(blocks)

    def read() -> None:
        try:
            for item in source:
                if not put((item, None)):
                    return
        except BaseException as err:  # raised in the caller, at this item
            put((_DONE, err))
            return
        finally:
            if isinstance(source, Generator):  # its cleanup runs here, not in another thread
                source.close()
        put((_DONE, None))

    reader = threading.Thread(target=read, name="zarrl-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            item, err = slots.get()
            if item is _DONE:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        reader.join()
