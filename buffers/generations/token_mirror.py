"""A RAM mirror of the token leaves a batch of whole completions reads (``action``,
``sample_log_prob``, ``ref_log_prob``): one ``index_select`` per leaf from flat tensors,
instead of the token storage's per-row chunk lookups through its chunk cache.

The mirror costs ``mirror_bytes_per_token`` bytes a stored token (8 to 16, no padding); a
buffer larger than the budget given to ``GenerationsBuffer`` is read through the storage.
"""

from __future__ import annotations

import torch

from ..storage import ZarrStorage

MIRROR_BLOCK_ROWS = 1 << 20
"""Rows read from the storage per step while the mirror is filled (bounds the temporaries)."""


def mirror_bytes_per_token(has_ref: bool, action_bytes: int = 8) -> int:
    """RAM of the mirror per token row: the stored action (int32 in new buffers, int64 in
    those made before), float32 log-prob(s)."""
    return action_bytes + 4 + (4 if has_ref else 0)


class TokenMirror:
    """Flat tensors ``{leaf: [rows]}`` of the token storage's rows ``[0, rows)``, extended by
    ``extend_to`` (rows are append-only: a committed row never changes)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = list(keys)
        self.rows = 0
        self.leaves: dict[str, torch.Tensor] = {}

    def extend_to(self, storage: ZarrStorage, rows: int) -> None:
        """Reads the storage's rows ``[self.rows, rows)`` into the mirror."""
        if rows <= self.rows:
            return
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in self.keys}
        for a in range(self.rows, rows, MIRROR_BLOCK_ROWS):
            got = storage.read(torch.arange(a, min(rows, a + MIRROR_BLOCK_ROWS)), self.keys)
            for k in self.keys:
                parts[k].append(got[k].cpu())
        for k in self.keys:
            old = [self.leaves[k]] if k in self.leaves else []
            self.leaves[k] = torch.cat(old + parts[k])
        self.rows = rows

    def read(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{leaf: [N]}`` at token rows ``rows`` (int64 ``[N]``, each below ``self.rows``)."""
        return {k: torch.index_select(v, 0, rows) for k, v in self.leaves.items()}
