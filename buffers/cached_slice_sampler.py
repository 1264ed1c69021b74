"""``CachedSliceSampler``: a ``SliceSampler`` that draws slices from cached trajectories only.

With a ``ZarrStorage`` larger than its chunk cache, a plain ``SliceSampler`` sees every
trajectory and reads missed chunks synchronously (exact but slow). This sampler restricts each
batch to trajectories whose rows all lie in cached chunks and lets the storage refill its cache
in the background, the same semantics ``ZarrStorage`` gives ``RandomSampler``: over many batches
every trajectory is visited, a single batch is uniform over the cached trajectories only. On any
other storage, or a fully mirrored one, it is exactly ``SliceSampler``.
"""

from __future__ import annotations

import torch
from torchrl.data import SliceSampler


def resident_prefix(resident: torch.Tensor) -> torch.Tensor:
    """Cached rows before each position of the ring read twice (so wrapping trajectories need no
    special case): int64 ``[2 * n_rows + 1]`` from bool ``resident`` ``[n_rows]``."""
    n = resident.numel()
    counts = torch.zeros(2 * n + 1, dtype=torch.long)
    counts[1:] = torch.cat([resident, resident]).long().cumsum(0)
    return counts


def fully_resident(
    start: torch.Tensor,
    lengths: torch.Tensor,
    resident: torch.Tensor,
    prefix: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which trajectories lie wholly in resident rows.

    Args:
        start: first ring position of each trajectory, int64 ``[n_traj]``.
        lengths: rows per trajectory, int64 ``[n_traj]`` (a trajectory may wrap past the end).
        resident: whether each ring position is cached, bool ``[n_rows]``.
        prefix: ``resident_prefix(resident)`` when already computed.

    Returns:
        bool ``[n_traj]``.
    """
    counts = resident_prefix(resident) if prefix is None else prefix
    stop = (start + lengths).clamp_max(2 * resident.numel())
    return (counts[stop] - counts[start]) == lengths


class CachedSliceSampler(SliceSampler):
    """``SliceSampler`` (same arguments) that samples only trajectories whose rows are cached
    when the ``ZarrStorage`` is larger than its cache; falls back to every trajectory when
    none is wholly cached yet."""

    _mask: torch.Tensor | None = None
    _prefix: torch.Tensor | None = None

    def sample(self, storage, batch_size: int):
        self._batch_rows = batch_size  # refill credit earned by this batch
        return super().sample(storage, batch_size)

    def _get_stop_and_length(self, storage, fallback=True):
        start, stop, lengths = super()._get_stop_and_length(storage, fallback)
        resident = getattr(storage, "resident_positions", None)
        if resident is None or start.shape[1] != 1:
            return start, stop, lengths
        # residency changes only here, so the mask below holds until the batch is gathered
        storage.request_refill(getattr(self, "_batch_rows", 1))
        mask = resident()
        if mask is None:  # fully mirrored: every row is cached
            return start, stop, lengths
        if mask is not self._mask:  # the storage returns the same mask until residency changes
            self._mask, self._prefix = mask, resident_prefix(mask)
        keep = fully_resident(start[:, 0].cpu(), lengths.cpu(), mask, self._prefix)
        if not bool(keep.any()):
            return start, stop, lengths
        keep = keep.to(start.device)
        return start[keep], stop[keep], lengths[keep]
