"""Lossless de-duplication of ``X`` against ``("next", X)`` (format version 2).

In transition data the observation of row ``j`` usually equals the next observation of row
``j - 1`` (the same trajectory went on), so one of the two copies compresses to almost nothing
once it is stored as the bitwise XOR with the other. A *derived* leaf ``X`` paired with its
*source* ``next/X`` is stored as::

    stored[j] = X[j] XOR next/X[j - 1]    for rows j that are not the first of their chunk
    stored[j] = X[j]                      for the first row of each chunk (j % chunk_rows == 0)

where ``j`` is the physical row. The XOR is bitwise over each row's bytes, so every dtype, NaN
and ±inf round-trips bit-exactly; decoding applies the same XOR. A chunk decodes from its own
rows only, and a row depends on earlier rows only, so rewriting the partly filled head chunk
with new rows never changes how an already committed row decodes (the commit protocol holds).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .format import LeafSpec

NEXT = "next/"


def pairs_for(schema: Mapping[str, LeafSpec], exclude: set[str]) -> dict[str, str]:
    """``{X: "next/X"}`` for every leaf ``X`` stored with an identically shaped and typed
    ``next/X``; leaves in ``exclude`` (the RAM index columns, read without chunk decoding)
    take no part."""
    out = {}
    for path, spec in schema.items():
        source = NEXT + path
        if (
            not path.startswith(NEXT)
            and schema.get(source) == spec
            and path not in exclude
            and source not in exclude
        ):
            out[path] = source
    return out


def _row_bytes(a: np.ndarray) -> np.ndarray:
    """``[rows, ...]`` -> ``[rows, bytes per row]`` uint8 view (copies only non-contiguous)."""
    return np.ascontiguousarray(a).reshape(a.shape[0], -1).view(np.uint8)


def xor_previous(derived: np.ndarray, source: np.ndarray) -> np.ndarray:
    """One whole chunk: ``derived[j] XOR source[j - 1]`` for ``j >= 1``, row 0 unchanged.
    Encodes and decodes (the XOR is its own inverse). Returns a new array shaped like
    ``derived``; ``derived`` and ``source``: ``[chunk_rows, ...]``, same dtype and shape."""
    out = _row_bytes(derived).copy()
    np.bitwise_xor(out[1:], _row_bytes(source)[:-1], out=out[1:])
    return out.view(derived.dtype).reshape(derived.shape)


def apply(block: Mapping[str, np.ndarray], pairs: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The chunk ``block`` ({leaf: [chunk_rows, ...]}) with every derived leaf XORed (stored
    form <-> values); other leaves are passed through. ``block`` is not modified."""
    if not pairs:
        return dict(block)
    out = dict(block)
    for derived, source in pairs.items():
        out[derived] = xor_previous(block[derived], block[source])
    return out
