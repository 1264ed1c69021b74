"""Evaluation metrics of the GMM posterior task (computed on on-policy samples, no exploration).

Samples are ``x: [N, 2]``; trajectory log-likelihoods are ``[N]`` nats.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .mixtures import GRID_MEANS, MODE_STD, TARGET_GRID_INDEX, TARGET_WEIGHTS

#: A sample is "near" a grid mode when within this distance of its mean (3 std ≈ 1.64).
NEAR_MODE_RADIUS = 3.0 * MODE_STD
#: A target mode counts as hit when its estimated weight exceeds this.
MODE_HIT_THRESHOLD = 0.01


def _check_samples(x: torch.Tensor, name: str = "samples") -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[-1] != 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a non-empty tensor of shape [N, 2], got {shape}")


def assign_modes(x: torch.Tensor, radius: float = NEAR_MODE_RADIUS) -> torch.Tensor:
    """Index ``[N]`` (long) of the nearest of the 25 grid means, or -1 when farther than ``radius``."""
    _check_samples(x)
    dist = torch.cdist(x.float(), GRID_MEANS.to(x.device))
    d_min, idx = dist.min(-1)
    return torch.where(d_min <= radius, idx, torch.full_like(idx, -1))


def grid_mode_counts(x: torch.Tensor) -> torch.Tensor:
    """Number of samples near each grid mode -> ``[25]`` (off-mode samples are not counted)."""
    modes = assign_modes(x)
    return torch.bincount(modes[modes >= 0], minlength=GRID_MEANS.shape[0]).cpu()


def near_mode_fraction(x: torch.Tensor) -> float:
    """Share of samples within 3 std of any grid mode."""
    return float((assign_modes(x) >= 0).float().mean())


def target_mass(x: torch.Tensor) -> float:
    """Share of all samples near one of the 9 target modes."""
    return float(grid_mode_counts(x)[TARGET_GRID_INDEX].sum() / x.shape[0])


def wrong_mode_mass(x: torch.Tensor) -> float:
    """Share of all samples near one of the 16 non-target grid modes."""
    counts = grid_mode_counts(x)
    return float((counts.sum() - counts[TARGET_GRID_INDEX].sum()) / x.shape[0])


def mode_weights(x: torch.Tensor) -> torch.Tensor:
    """Estimated weight ``[9]`` of each target mode (aligned with ``TARGET_MEANS``): its share of the
    near-mode samples (all zeros when no sample is near a mode)."""
    counts = grid_mode_counts(x).float()
    total = counts.sum()
    if total == 0:
        return torch.zeros(TARGET_GRID_INDEX.shape[0])
    return counts[TARGET_GRID_INDEX] / total


def target_modes_hit(x: torch.Tensor, threshold: float = MODE_HIT_THRESHOLD) -> int:
    """Number of target modes whose estimated weight exceeds ``threshold``."""
    return int((mode_weights(x) > threshold).sum())


def mode_weight_tv(x: torch.Tensor) -> float:
    """Total variation ½·Σ_k |ŵ_k − w_k| over the 9 target modes plus the wrong-mode share of the
    near-mode samples (whose true weight is 0)."""
    counts = grid_mode_counts(x).float()
    total = counts.sum()
    if total == 0:
        return 1.0
    w_hat = counts[TARGET_GRID_INDEX] / total
    wrong = 1.0 - w_hat.sum()
    return float(0.5 * ((w_hat - TARGET_WEIGHTS).abs().sum() + wrong.clamp_min(0)))


def _log_weights(
    log_p_prior: torch.Tensor, log_q: torch.Tensor, log_r: torch.Tensor, beta: float
) -> torch.Tensor:
    shapes = {t.shape for t in (log_p_prior, log_q, log_r)}
    if len(shapes) != 1 or log_q.ndim != 1 or log_q.numel() == 0:
        raise ValueError(
            "log_p_prior, log_q and log_r must be non-empty [N] tensors of one shape, got "
            f"{[tuple(t.shape) for t in (log_p_prior, log_q, log_r)]}"
        )
    return log_p_prior + beta * log_r - log_q


def elbo(
    log_p_prior: torch.Tensor, log_q: torch.Tensor, log_r: torch.Tensor, beta: float = 1.0
) -> float:
    """ELBO = mean(log p(τ) + β·log r(x) − log q(τ)) over trajectories sampled from q (nats)."""
    return float(_log_weights(log_p_prior, log_q, log_r, beta).mean())


def is_log_z(
    log_p_prior: torch.Tensor, log_q: torch.Tensor, log_r: torch.Tensor, beta: float = 1.0
) -> float:
    """Importance-sampled log Ẑ = log-mean-exp(log p(τ) + β·log r(x) − log q(τ)) (nats)."""
    log_w = _log_weights(log_p_prior, log_q, log_r, beta).double()
    return float(torch.logsumexp(log_w, 0) - math.log(log_w.shape[0]))


def wasserstein2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact W₂ between two equal-size empirical distributions ``[N, 2]`` (optimal assignment)."""
    _check_samples(x, "x")
    _check_samples(y, "y")
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    cost = torch.cdist(x.double().cpu(), y.double().cpu()).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


def task_metrics(
    x: torch.Tensor,
    reference: torch.Tensor | None = None,
    log_p_prior: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
    log_r: torch.Tensor | None = None,
    beta: float = 1.0,
) -> dict[str, float]:
    """All task metrics of samples ``x: [N, 2]`` as a flat dict of floats.

    Always: ``near_mode``, ``target_mass``, ``wrong_mode_mass``, ``modes_hit``, ``tv`` and
    ``weight_<k>`` for the 9 target modes. With ``reference`` (``[N, 2]``, e.g. samples of g₉): ``w2``.
    With the three trajectory log-likelihood tensors: ``elbo`` and ``is_log_z``.
    """
    weights = mode_weights(x)
    out = {
        "near_mode": near_mode_fraction(x),
        "target_mass": target_mass(x),
        "wrong_mode_mass": wrong_mode_mass(x),
        "modes_hit": float(target_modes_hit(x)),
        "tv": mode_weight_tv(x),
    }
    out.update({f"weight_{k}": float(w) for k, w in enumerate(weights)})
    if reference is not None:
        out["w2"] = wasserstein2(x, reference)
    if log_p_prior is not None and log_q is not None and log_r is not None:
        out["elbo"] = elbo(log_p_prior, log_q, log_r, beta)
        out["is_log_z"] = is_log_z(log_p_prior, log_q, log_r, beta)
    return out
