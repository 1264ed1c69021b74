"""Variable-length token sequences as fixed-width rows: padded values plus lengths.

Zarr arrays are rectangular, so a generation of ``L <= width`` tokens is stored as a row of
``width`` values (``pad`` after position ``L``) and its length; ``unpad`` gives the list back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict


def pad_sequences(
    sequences: Sequence[torch.Tensor], width: int, *, pad: float | int = 0, key: str = "tokens"
) -> TensorDict:
    """``[B]`` TensorDict with ``key`` ``[B, width, *feature]`` and ``"length"`` ``[B]`` (int64).

    Raises ``ValueError`` naming the sequence that is longer than ``width``.
    """
    if not sequences:
        raise ValueError("pad_sequences needs at least one sequence")
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    too_long = (lengths > width).nonzero().flatten()
    if too_long.numel():
        i = int(too_long[0])
        raise ValueError(f"sequence {i} has {int(lengths[i])} steps, more than width={width}")
    first = torch.as_tensor(sequences[0])
    out = torch.full((len(sequences), width, *first.shape[1:]), pad, dtype=first.dtype)
    mask = torch.arange(width) < lengths.unsqueeze(-1)
    out[mask] = torch.cat([torch.as_tensor(s, dtype=first.dtype) for s in sequences])
    return TensorDict({key: out, "length": lengths}, batch_size=[len(sequences)])


def unpad(values: torch.Tensor, length: torch.Tensor) -> list[torch.Tensor]:
    """Inverse of ``pad_sequences``: ``values`` ``[B, width, ...]``, ``length`` ``[B]``."""
    return list(values[torch.arange(values.shape[1]) < length.unsqueeze(-1)].split(length.tolist()))
