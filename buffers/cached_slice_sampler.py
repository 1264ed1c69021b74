"""``CachedSliceSampler``: a ``SliceSampler`` that draws slices from cached rows only.

With a ``ZarrStorage`` larger than its chunk cache, a plain ``SliceSampler`` sees every
trajectory and reads missed chunks synchronously (exact but slow). This sampler restricts each
batch to *cached segments* (maximal runs of a trajectory's rows that all lie in cached chunks,
at least one slice long), treated as the trajectories a ``SliceSampler`` draws from, and lets
the storage refill its cache in the background: the semantics ``ZarrStorage`` gives
``RandomSampler``. A slice never crosses a trajectory boundary or an uncached row; over many
batches every trajectory is visited, a single batch is drawn from the cached segments only.
With ``span`` or ``strict_length=False`` (slices that may be cut short at a trajectory end) the
unit is the whole trajectory instead: only wholly cached trajectories are drawn. When nothing
eligible is cached yet, every trajectory is (exact, synchronous reads). On any other storage,
or a fully mirrored one, it is exactly ``SliceSampler``.
"""

from __future__ import annotations

from typing import Any

import torch
from torchrl.data import SliceSampler


def resident_prefix(resident: torch.Tensor) -> torch.Tensor:
    """Cached rows before each position of the ring read twice (so wrapping trajectories need no
    special case): int64 ``[2 * n_rows + 1]`` from bool ``resident`` ``[n_rows]``."""
    n = resident.numel()
    counts = torch.zeros(2 * n + 1, dtype=torch.long)
    counts[1:] = torch.cat([resident, resident]).long().cumsum(0)
    return counts


def resident_segments(
    start: torch.Tensor, lengths: torch.Tensor, resident: torch.Tensor, min_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximal runs of resident rows inside each trajectory, at least ``min_length`` long.

    Args:
        start: first ring position of each trajectory, int64 ``[n_traj]``.
        lengths: rows per trajectory, int64 ``[n_traj]`` (a trajectory may wrap past the end).
        resident: whether each ring position is cached, bool ``[n_rows]``.
        min_length: shortest run kept (the slice length).

    Returns:
        first ring position and length of each run, int64 ``[n_runs]`` each, in trajectory
        order.
    """
    n = resident.numel()
    traj = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    step = torch.arange(traj.numel()) - (lengths.cumsum(0) - lengths)[traj]
    pos = (start[traj] + step) % n
    cached = resident[pos]
    after_uncached = torch.cat([torch.ones(1, dtype=torch.bool), ~cached[:-1]])
    new_run = cached & ((step == 0) | after_uncached)
    run_of_row = new_run.cumsum(0) - 1
    run_len = torch.bincount(run_of_row[cached], minlength=int(new_run.sum()))
    keep = run_len >= min_length
    return pos[new_run][keep], run_len[keep]


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
    """``SliceSampler`` (same arguments) that samples slices from cached rows only when the
    ``ZarrStorage`` is larger than its cache (see the module docstring for the semantics)."""

    _mask: torch.Tensor | None = None
    _prefix: torch.Tensor | None = None
    _segments: tuple | None = None

    def sample(self, storage, batch_size: int):
        self._batch_rows = batch_size  # refill credit earned by this batch
        multiplier = getattr(self, "_batch_size_multiplier", None) or 1
        self._slice_len = self._adjusted_batch_size(batch_size * multiplier)[0]
        return super().sample(storage, batch_size)

    def _by_segment(self) -> bool:
        """Whether slices may be drawn from partly cached trajectories (they never leave one)."""
        return self.strict_length and not any(self.span) and not self.fragmented

    def _cached_segments(self, start, lengths, mask, slice_len: int):
        """``resident_segments``, recomputed only when the residency or trajectories change."""
        key = self._segments[0] if self._segments is not None else None
        if not (
            key is not None
            and key[0] is mask
            and key[1] == slice_len
            and torch.equal(key[2], start)
            and torch.equal(key[3], lengths)
        ):
            segments = resident_segments(start, lengths, mask, slice_len)
            self._segments = ((mask, slice_len, start, lengths), segments)
        return self._segments[1]

    def _get_stop_and_length(self, storage, fallback=True):
        return self.trajectories(storage, fallback)

    def trajectories(
        self, storage: Any, fallback: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The trajectories slices are drawn from: ``(start [M, 1], stop [M, 1], lengths [M])``
        positions, those of ``SliceSampler`` restricted to cached rows when ``storage`` is
        larger than its cache (whole trajectories, or their cached segments when slices may
        come from part of one). Requests the storage's next refill first."""
        start, stop, lengths = super()._get_stop_and_length(storage, fallback)
        resident = getattr(storage, "resident_positions", None)
        if resident is None or start.shape[1] != 1:
            return start, stop, lengths
        # residency changes only here, so the mask below holds until the batch is gathered
        storage.request_refill(getattr(self, "_batch_rows", 1))
        mask = resident()
        if mask is None:  # fully mirrored: every row is cached
            return start, stop, lengths
        slice_len = getattr(self, "_slice_len", None)
        if self._by_segment() and isinstance(slice_len, int):
            seg_start, seg_len = self._cached_segments(
                start[:, 0].cpu(), lengths.cpu(), mask, slice_len
            )
            if not seg_start.numel():
                return start, stop, lengths
            seg_stop = (seg_start + seg_len - 1) % mask.numel()
            dev = start.device
            return seg_start.to(dev)[:, None], seg_stop.to(dev)[:, None], seg_len.to(dev)
        if mask is not self._mask:  # the storage returns the same mask until residency changes
            self._mask, self._prefix = mask, resident_prefix(mask)
        keep = fully_resident(start[:, 0].cpu(), lengths.cpu(), mask, self._prefix)
        if not bool(keep.any()):
            return start, stop, lengths
        keep = keep.to(start.device)
        return start[keep], stop[keep], lengths[keep]
