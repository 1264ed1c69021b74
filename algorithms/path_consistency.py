"""The d-step path-consistency residual of PCL / Trust-PCL, for every window of a ``[*B, T]`` batch.

For a window starting at step t and stopping at step k (at most ``d`` steps, never past the end of
its episode segment),

    C(t) = -V(s_t) + Σ_{i=t}^{k} γ^{i-t}·[r_i - (τ_H+λ)·log π(a_i|s_i) + λ·log π̃(a_i|s_i)]
           + γ^{k-t+1}·V(s_{k+1})·(1 - terminated_k)

All windows are computed at once from a discounted prefix sum along T: O(B·T) work, no loop over
t, d or the batch. Quantities are accumulated in float64 and returned in the input dtype; discounts
are anchored at each segment's start, so accuracy depends on the segment (episode or slice) length,
not on the length of a flattened row.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["path_consistency", "segment_marks"]

Rollout = int | Literal["full"]


def _check_mask(name: str, mask: Tensor | None, shape: torch.Size, device) -> Tensor:
    if mask is None:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    if mask.shape != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    return mask.to(torch.bool)


def segment_marks(
    terminated: Tensor,
    truncated: Tensor | None = None,
    valid: Tensor | None = None,
    is_init: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Where the episode segments of a ``[*B, T]`` batch start and end.

    A valid step ends its segment when it is terminated or truncated, when it is the last step of
    its row, or when the next step is padding or starts a new episode (``is_init``).

    Returns:
        ``(start, end, end_index)``: ``start`` and ``end`` are bool ``[*B, T]`` flags of the first and
        last valid step of every segment; ``end_index`` (int64 ``[*B, T]``) is, for each step, the
        index of the last step of its segment (``T`` for trailing padding).
    """
    shape = terminated.shape
    if len(shape) < 1:
        raise ValueError("terminated must have a time dimension [*B, T]")
    device = terminated.device
    T = shape[-1]
    end = terminated.to(torch.bool).clone()
    if truncated is not None:
        end |= _check_mask("truncated", truncated, shape, device)
    end[..., -1] = True
    start = torch.zeros_like(end)
    start[..., 0] = True
    start[..., 1:] |= end[..., :-1]
    if is_init is not None:
        is_init = _check_mask("is_init", is_init, shape, device)
        end[..., :-1] |= is_init[..., 1:]
        start |= is_init
    if valid is not None:
        valid = _check_mask("valid", valid, shape, device)
        end[..., :-1] |= ~valid[..., 1:]
        end &= valid
        start[..., 1:] |= ~valid[..., :-1]
        start &= valid
    steps = torch.arange(T, device=device).expand(shape)
    idx = torch.where(end, steps, torch.full_like(steps, T))
    end_index = idx.flip(-1).cummin(-1).values.flip(-1)
    return start, end, end_index


def path_consistency(
    reward: Tensor,
    log_prob: Tensor,
    ref_log_prob: Tensor | None,
    value: Tensor,
    next_value: Tensor,
    *,
    terminated: Tensor,
    truncated: Tensor | None = None,
    valid: Tensor | None = None,
    is_init: Tensor | None = None,
    gamma: float = 1.0,
    entropy_coef: float = 0.0,
    kl_coef: float | Tensor = 0.0,
    rollout: Rollout = 1,
    window_starts: Literal["all", "first"] = "all",
) -> Tensor:
    """Path-consistency residual C(t, d) for every window start t.

    Args:
        reward: ``[*B, T]`` rewards r_t (nats).
        log_prob: ``[*B, T]`` log π(a_t|s_t) of the trained policy (summed over action dims).
        ref_log_prob: ``[*B, T]`` log π̃(a_t|s_t) of the reference policy; may be ``None`` when
            ``kl_coef == 0``.
        value: ``[*B, T]`` V(s_t).
        next_value: ``[*B, T]`` V(s_{t+1}), the value of the state after each step. It is read only
            where a window stops without reaching a terminal state (bootstrap).
        terminated: ``[*B, T]`` bool, step t ends its episode in a terminal state (V = 0 after it).
        truncated: ``[*B, T]`` bool, the episode is cut after step t (time limit, slice end):
            windows stop there and bootstrap from ``next_value``.
        valid: ``[*B, T]`` bool, ``False`` on padding; padded steps start no window and stop any.
        is_init: ``[*B, T]`` bool, step t is the first of an episode (for flattened slices).
        gamma: discount γ.
        entropy_coef: τ_H ≥ 0.
        kl_coef: λ ≥ 0 (a float or a 0-dim tensor).
        rollout: window length d ≥ 1, or ``"full"`` for windows running to the segment end.
        window_starts: ``"all"`` (every valid step starts a window) or ``"first"`` (only the first
            step of each segment: one whole-segment window, as in RTB).

    Returns:
        ``[*B, T]`` residuals C, in the dtype of ``reward``; 0 where no window starts.
    """
    shape = reward.shape
    for name, tensor in (
        ("log_prob", log_prob),
        ("value", value),
        ("next_value", next_value),
        ("terminated", terminated),
    ):
        if tensor.shape != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    if ref_log_prob is None:
        if not (isinstance(kl_coef, (int, float)) and kl_coef == 0):
            raise ValueError("ref_log_prob is required when kl_coef != 0")
    elif ref_log_prob.shape != shape:
        raise ValueError(
            f"ref_log_prob has shape {tuple(ref_log_prob.shape)}, expected {tuple(shape)}"
        )
    if rollout != "full" and not (isinstance(rollout, int) and rollout >= 1):
        raise ValueError(f"rollout must be an int >= 1 or 'full', got {rollout!r}")
    if window_starts not in ("all", "first"):
        raise ValueError(f"window_starts must be 'all' or 'first', got {window_starts!r}")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")

    out_dtype = reward.dtype
    f64 = torch.float64
    device = reward.device
    T = shape[-1]
    start, _, end_index = segment_marks(terminated, truncated, valid, is_init)
    valid_b = (
        torch.ones(shape, dtype=torch.bool, device=device)
        if valid is None
        else valid.to(torch.bool)
    )

    tau = entropy_coef + kl_coef
    step = reward.to(f64) - tau * log_prob.to(f64)
    if ref_log_prob is not None:
        step = step + kl_coef * ref_log_prob.to(f64)
    step = torch.where(valid_b, step, torch.zeros((), dtype=f64, device=device))

    t = torch.arange(T, device=device)
    zero = torch.zeros((), dtype=f64, device=device)
    discounted = gamma != 1.0
    if discounted:
        # weight step i by γ^(i − start of its segment): windows never leave their segment, so the
        # prefix-sum differences only ever divide by γ^(segment age), not by γ^t of the whole row
        table = torch.full((T + 1,), gamma, dtype=f64, device=device).pow(
            torch.arange(T + 1, device=device, dtype=f64)
        )
        table = table.expand(*shape[:-1], T + 1)
        anchor = start | ~valid_b  # padding restarts the count too
        seg_start = torch.where(anchor, t, torch.zeros_like(t)).cummax(-1).values
        age = t - seg_start
        weight = table.gather(-1, age)
        step = step * weight
    prefix = torch.cat([torch.zeros(*shape[:-1], 1, dtype=f64, device=device), step.cumsum(-1)], -1)
    last = end_index.clamp(max=T - 1)
    if rollout != "full":
        last = torch.minimum(last, t + (rollout - 1))
    boot = torch.where(
        terminated.to(torch.bool).gather(-1, last), zero, next_value.to(f64).gather(-1, last)
    )
    if discounted:
        boot = boot * table.gather(-1, age.gather(-1, last) + 1)
    # Σ_{i=t}^{k} γ^{i−t}·x_i + γ^{k−t+1}·V(s_{k+1}), from the weighted prefix sums
    ahead = prefix.gather(-1, last + 1) - prefix[..., :T] + boot
    if discounted:
        ahead = ahead / weight
    residual = ahead - value.to(f64)

    starts = start if window_starts == "first" else valid_b
    residual = torch.where(starts, residual, zero)
    return residual.to(out_dtype)
