"""The index leaves of a buffer's token rows, derived from its imports' lengths: ``completion``
(int64, the completion a row belongs to; -1 on rows no import counts, left by an import killed
after committing its token rows), ``position`` (int32, 0 at each completion's first token) and
``next/done`` (bool, a completion's last token; true on uncounted rows).

Format version 3 buffers store none of them (13 bytes a token less to build, encode, write and
fsync at import); ``GenerationsBuffer.storage`` attaches them to the token storage
(``ZarrStorage.attach_columns``), so that TorchRL's slice samplers find them as stored keys.
Version 1 and 2 buffers store them in the token storage itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .layout import INDEX_LEAVES

INDEX_DTYPES = {"completion": np.int64, "position": np.int32, "next/done": np.bool_}
"""The index leaves' dtypes by path (stored by format version 1 and 2 buffers, derived by
readers of newer ones)."""


def stores_index(schema: dict) -> bool:
    """Whether a token storage's schema (leaf path -> spec) holds the index leaves (format
    version 1 or 2)."""
    return all(path in schema for path in INDEX_DTYPES)


def lazy_index(
    start: np.ndarray, length: np.ndarray, rows: int
) -> dict[Any, Callable[[], torch.Tensor]]:
    """``derived_index`` as one callable per leaf (``ZarrStorage.attach_columns``), the three
    computed together at the first call of any."""
    computed = functools.cache(lambda: derived_index(start, length, rows))

    def leaf(key: Any) -> Callable[[], torch.Tensor]:
        return lambda: computed()[key]

    return {key: leaf(key) for key in INDEX_LEAVES}


def derived_index(start: np.ndarray, length: np.ndarray, rows: int) -> dict[Any, torch.Tensor]:
    """The index leaves ``{key: [rows]}`` of a token storage of ``rows`` rows whose
    completions start at rows ``start`` with ``length`` tokens each (int64 ``[C]``, completion
    order; their rows disjoint and below ``rows``, as ``layout.load_tables`` checks)."""
    n = int(length.sum())
    completion = np.full(rows, -1, dtype=INDEX_DTYPES["completion"])
    position = np.zeros(rows, dtype=INDEX_DTYPES["position"])
    done = np.ones(rows, dtype=INDEX_DTYPES["next/done"])
    if n:
        first = np.cumsum(length) - length  # each completion's offset in the flat tokens
        flat = np.arange(n)
        row = np.repeat(start - first, length) + flat  # each token's row
        completion[row] = np.repeat(np.arange(len(length)), length)
        position[row] = flat - np.repeat(first, length)
        done[row] = False
        done[start + length - 1] = True
    return {
        "completion": torch.from_numpy(completion),
        "position": torch.from_numpy(position),
        ("next", "done"): torch.from_numpy(done),
    }
