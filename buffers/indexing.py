"""Storage indices (what ``storage[index]`` and ``storage.get(index)`` accept: ints, slices,
lists, int or bool tensors, tuples over the batch dims) as dim-0 ring positions to gather and
the indexing of the gathered block."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase


def rows_and_reindex(index: Any, n0: int) -> tuple[torch.Tensor, Any]:
    """dim-0 positions (int64 ``[N]``) that ``storage[index]`` reads from a storage of ``n0``
    rows, and how to index the gathered ``[N, *tail]`` block (``apply_reindex``)."""
    if (  # what samplers pass: a CPU int64 vector
        isinstance(index, torch.Tensor)
        and index.ndim == 1
        and index.dtype == torch.long
        and index.device.type == "cpu"
    ):
        return checked_rows(index, n0), None
    rest = ()
    if isinstance(index, tuple):
        if len(index) == 0:
            index = slice(None)
        else:
            index, rest = index[0], tuple(index[1:])
    if index is Ellipsis:
        index = slice(None)
    if isinstance(index, (int, np.integer)) or (
        isinstance(index, torch.Tensor) and index.ndim == 0 and not index.is_floating_point()
    ):
        i = int(index)
        if i < -n0 or i >= n0:
            raise IndexError(f"index {i} out of range for a storage of {n0} rows")
        rows = torch.tensor([i % n0 if i < 0 else i])
        return rows, (0, *rest)
    if isinstance(index, slice):
        rows = torch.arange(*index.indices(n0))
        return rows, ((slice(None), *rest) if rest else None)
    idx = torch.as_tensor(np.asarray(index) if isinstance(index, list) else index)
    if idx.dtype == torch.bool:
        idx = idx.nonzero().squeeze(-1)
    idx = checked_rows(idx.to("cpu", torch.long), n0)
    flat = idx.reshape(-1)
    if rest:
        return flat, (torch.arange(flat.numel()).reshape(idx.shape), *rest)
    return flat, ("reshape", tuple(idx.shape))


def checked_rows(idx: torch.Tensor, n0: int) -> torch.Tensor:
    """``idx`` (CPU int64, any shape) with negative positions wrapped; raises
    ``IndexError`` outside ``[-len0, len0)``."""
    if not idx.numel():
        return idx
    lo, hi = (int(v) for v in torch.aminmax(idx))
    if hi >= n0 or lo < -n0:
        raise IndexError(f"index out of range for a storage of {n0} rows")
    return torch.where(idx < 0, idx + n0, idx) if lo < 0 else idx


def apply_reindex(td: TensorDictBase, reindex: Any) -> TensorDictBase:
    """The gathered block ``td`` indexed as ``rows_and_reindex`` said."""
    if reindex is None:
        return td
    if isinstance(reindex, tuple) and reindex and isinstance(reindex[0], str):
        shape = reindex[1]
        return td if len(shape) == 1 else td.reshape(*shape, *td.batch_size[1:])
    return td[reindex]
