"""The d-step path-consistency residual of PCL / Trust-PCL, for every window of a ``[*B, T]`` batch.

For a window starting at step t and stopping at step k (at most ``d`` steps, never past the end of
its episode segment),

    C(t) = -V(s_t) + Σ_{i=t}^{k} γ^{i-t}·[r_i - (τ_H+λ)·log π(a_i|s_i) + λ·log π̃(a_i|s_i)]
           + γ^{k-t+1}·V(s_{k+1})·(1 - terminated_k)

All windows are computed at once, O(B·T) work, no loop over t, d or the batch, accumulated in
float64 and returned in the input dtype. With γ = 1 a window is a difference of one prefix sum.
With γ < 1 the kernel computes the discounted suffix sum of every segment,
S(t) = x_t + γ·S(t+1) (reset at segment ends), in blocks of K steps with γ^−K ≤ 2^8: inside a block
a γ-weighted prefix sum is divided by at most γ^−(K−1), and the carry between blocks is a linear
recurrence over the T/K block values solved by a Hillis–Steele scan (no division). A window
t..k is then S(t) − γ^(k−t+1)·S(k+1) plus its bootstrap, so rounding never grows with the segment
length: the error stays ≲ 2^8·min(K, 1/(1−γ))·ε₆₄ relative to the largest step value, for every
γ ∈ (0, 1] and every T.

A non-finite step value (reward, log-probability or reference log-probability of a valid step) is
contained: it is excluded from the sums and exactly the windows that contain the step are NaN.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = ["path_consistency", "segment_marks"]

Rollout = int | Literal["full"]

# Largest factor γ^−(K−1) that a block's weighted prefix sum is divided by (γ < 1).
_BLOCK_GROWTH = 2.0**8


def _block_length(gamma: float, T: int) -> int:
    """Steps K per block for discount ``gamma`` < 1: the largest K ≤ T with γ^−K ≤ 2^8 (≥ 1)."""
    return max(1, min(T, int(math.log(_BLOCK_GROWTH) / -math.log(gamma))))


def _discounted_suffix_sums(x: Tensor, end_index: Tensor, gamma: float) -> Tensor:
    """S(t) = Σ_{i=t}^{e(t)} γ^{i−t}·x_i for every t of a ``[*B, T]`` float64 ``x``, γ < 1.

    ``end_index`` (int64 ``[*B, T]``, ``e(t) ≥ t``) is the last step of t's segment, as returned by
    :func:`segment_marks`. Returns float64 ``[*B, T]``.
    """
    *lead, T = x.shape
    device, f64 = x.device, x.dtype
    K = _block_length(gamma, T)
    nb = -(-T // K)
    pad = nb * K - T
    if pad:
        x = torch.cat([x, x.new_zeros(*lead, pad)], -1)
        end_index = torch.cat([end_index, end_index.new_full((*lead, pad), nb * K - 1)], -1)
    pos = torch.arange(K, device=device)
    power = torch.tensor(gamma, dtype=f64, device=device).pow(torch.arange(K + 1, device=device))
    weight = power[:K]  # γ^(position in block), ≥ γ^(K−1) ≥ 2^−8
    # within each block: Σ_{i=t}^{k} γ^{i−t}·x_i = (P(k+1) − P(t)) / γ^(t − block start)
    xb = (x.reshape(*lead, nb, K) * weight).cumsum(-1)
    prefix = torch.cat([xb.new_zeros(*lead, nb, 1), xb], -1)
    block_start = torch.arange(nb, device=device).unsqueeze(-1) * K
    seg_end = end_index.reshape(*lead, nb, K) - block_start  # segment end, relative to the block
    last = seg_end.clamp(max=K - 1)
    local = (prefix.gather(-1, last + 1) - prefix[..., :K]) / weight
    if nb > 1:
        # carry C(b) = S(start of block b) = L(b) + A(b)·C(b+1), A(b) = γ^K if block b's first
        # segment runs past its end: a Hillis–Steele scan of (A, L) pairs from the last block back
        crosses = seg_end > K - 1
        level = local[..., 0].flip(-1)
        factor = torch.where(crosses[..., 0], power[K], power.new_zeros(())).flip(-1)
        shift = 1
        while shift < nb:
            level = torch.cat(
                [
                    level[..., :shift],
                    level[..., shift:] + factor[..., shift:] * level[..., :-shift],
                ],
                -1,
            )
            factor = torch.cat(
                [factor[..., :shift], factor[..., shift:] * factor[..., :-shift]], -1
            )
            shift *= 2
        carry = torch.cat([level.flip(-1)[..., 1:], level.new_zeros(*lead, 1)], -1)
        # a step whose segment runs past its block end adds γ^(block end − t + 1)·C(b+1)
        reach = torch.where(crosses, power[K - pos], power.new_zeros(()))
        local = local + reach * carry.unsqueeze(-1)
    return local.reshape(*lead, nb * K)[..., :T]


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
    zero = torch.zeros((), dtype=f64, device=device)

    tau = entropy_coef + kl_coef
    step = reward.to(f64) - tau * log_prob.to(f64)
    if ref_log_prob is not None:
        step = step + kl_coef * ref_log_prob.to(f64)
    step = torch.where(valid_b, step, zero)
    # one reduction detects any non-finite step (an overflowing sum only takes the slower path)
    contain = not math.isfinite(float(step.detach().sum()))
    if contain:  # a non-finite step value is left out of every sum
        finite = torch.isfinite(step)
        step = torch.where(finite, step, zero)

    t = torch.arange(T, device=device)
    last = end_index.clamp(max=T - 1)
    if rollout != "full":
        last = torch.minimum(last, t + (rollout - 1))
    boot = torch.where(
        terminated.to(torch.bool).gather(-1, last), zero, next_value.to(f64).gather(-1, last)
    )
    if gamma == 1.0:
        # Σ_{i=t}^{k} x_i + V(s_{k+1}) from one prefix sum
        prefix = torch.cat([step.new_zeros(*shape[:-1], 1), step.cumsum(-1)], -1)
        ahead = prefix.gather(-1, last + 1) - prefix[..., :T] + boot
    else:
        # S(t) − γ^n·S(k+1) + γ^n·V(s_{k+1}), n = k − t + 1 steps; S(k+1) only inside the segment
        suffix = _discounted_suffix_sums(step, end_index, gamma)
        power = torch.tensor(gamma, dtype=f64, device=device).pow(
            torch.arange(T + 1, device=device)
        )
        after = suffix.gather(-1, (last + 1).clamp(max=T - 1))
        tail = boot - torch.where(last < end_index, after, zero)
        ahead = suffix + power[last - t + 1] * tail
    residual = ahead - value.to(f64)

    if contain:
        # windows that contain a non-finite step value are NaN, all others stay exact
        count = (~finite).cumsum(-1)
        count = torch.cat([count.new_zeros(*shape[:-1], 1), count], -1)
        hit = count.gather(-1, last + 1) > count[..., :T]
        residual = torch.where(hit, torch.full((), math.nan, dtype=f64, device=device), residual)

    starts = start if window_starts == "first" else valid_b
    residual = torch.where(starts, residual, zero)
    return residual.to(out_dtype)
