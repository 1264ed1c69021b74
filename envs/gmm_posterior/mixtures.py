"""The seed paper's 2-D Gaussian mixtures: the 25-mode prior data p₂₅, the 9-mode target g₉, and the
terminal reward log r = log g₉ − log p₂₅ (nats).

All functions take points ``x`` of shape ``[*B, 2]`` on any device and return ``[*B]`` tensors.
"""

from __future__ import annotations

import math

import torch

#: Per-component variance of every mixture component (covariance 0.3·I).
MODE_VARIANCE = 0.3
#: Per-component standard deviation √0.3 ≈ 0.5477.
MODE_STD = math.sqrt(MODE_VARIANCE)

_GRID = (-10.0, -5.0, 0.0, 5.0, 10.0)
#: The 25 grid means {−10, −5, 0, 5, 10}², row-major in (x, y): index = 5·i_x + i_y.
GRID_MEANS = torch.tensor([[a, b] for a in _GRID for b in _GRID], dtype=torch.float32)
#: The 9 target means (a subset of GRID_MEANS).
TARGET_MEANS = torch.tensor(
    [[-10, -5], [-5, -10], [-5, 0], [10, -5], [0, 0], [0, 5], [5, -5], [5, 0], [5, 10]],
    dtype=torch.float32,
)
#: Unnormalized target weights (they sum to 61), aligned with TARGET_MEANS.
TARGET_WEIGHTS_UNNORMALIZED = torch.tensor([4, 10, 4, 5, 10, 5, 4, 15, 4], dtype=torch.float32)
#: Normalized target weights.
TARGET_WEIGHTS = TARGET_WEIGHTS_UNNORMALIZED / TARGET_WEIGHTS_UNNORMALIZED.sum()
#: Index into GRID_MEANS of each target mode, aligned with TARGET_MEANS.
TARGET_GRID_INDEX = torch.tensor(
    [int(((GRID_MEANS - m).abs().sum(-1) == 0).nonzero()) for m in TARGET_MEANS]
)
#: Upper bound of the reward: max r = 25 · 15 / 61 ≈ 6.15 (reached at the (5, 0) mode's centre limit).
MAX_REWARD = 25.0 * 15.0 / 61.0


class GaussianMixture:
    """An isotropic 2-D Gaussian mixture with shared variance.

    Args:
        means: ``[K, 2]`` component means.
        weights: ``[K]`` non-negative weights (normalized here).
        variance: per-dimension variance shared by every component.
    """

    def __init__(self, means: torch.Tensor, weights: torch.Tensor, variance: float) -> None:
        if means.ndim != 2 or means.shape[-1] != 2:
            raise ValueError(f"means must have shape [K, 2], got {tuple(means.shape)}")
        if weights.shape != means.shape[:1]:
            raise ValueError(
                f"weights must have shape [{means.shape[0]}] to match means, got {tuple(weights.shape)}"
            )
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        if variance <= 0:
            raise ValueError(f"variance must be positive, got {variance}")
        self.means = means.float()
        self.weights = (weights / weights.sum()).float()
        self.log_weights = self.weights.log()
        self.variance = float(variance)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density (nats) of points ``x: [*B, 2]`` -> ``[*B]``."""
        _check_points(x)
        means = self.means.to(device=x.device, dtype=x.dtype)
        log_w = self.log_weights.to(device=x.device, dtype=x.dtype)
        sq = (x.unsqueeze(-2) - means).pow(2).sum(-1)  # [*B, K]
        log_norm = -math.log(2 * math.pi * self.variance)
        return torch.logsumexp(log_w + log_norm - 0.5 * sq / self.variance, dim=-1)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        stratified: bool = False,
    ) -> torch.Tensor:
        """Draw ``n`` samples -> ``[n, 2]`` float32 on ``device``.

        ``stratified=False``: exact i.i.d. samples. ``stratified=True``: the number of samples per
        component is fixed to ``n·w_k`` (largest remainders), in random order — a low-variance
        reference sample for distances between empirical distributions. The generator, when given,
        must live on ``device``.
        """
        weights = self.weights.to(device)
        if stratified:
            comp = self._stratified_components(n, generator, device)
        else:
            comp = torch.multinomial(weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, 2, generator=generator, device=device)
        return self.means.to(device)[comp] + math.sqrt(self.variance) * noise

    def _stratified_components(
        self, n: int, generator: torch.Generator | None, device: torch.device | str
    ) -> torch.Tensor:
        expected = self.weights.double() * n
        counts = expected.floor().long()
        remainder = n - int(counts.sum())
        if remainder > 0:
            counts[torch.argsort(expected - counts, descending=True)[:remainder]] += 1
        comp = torch.repeat_interleave(torch.arange(len(counts)), counts).to(device)
        return comp[torch.randperm(n, generator=generator, device=device)]


PRIOR = GaussianMixture(GRID_MEANS, torch.ones(25), MODE_VARIANCE)
TARGET = GaussianMixture(TARGET_MEANS, TARGET_WEIGHTS_UNNORMALIZED, MODE_VARIANCE)


def _check_points(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"points must be a tensor of shape [*B, 2], got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"points must be floating point, got dtype {x.dtype}")


def prior_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log p₂₅(x) (nats), ``[*B, 2] -> [*B]``."""
    return PRIOR.log_prob(x)


def target_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log g₉(x) (nats), ``[*B, 2] -> [*B]``."""
    return TARGET.log_prob(x)


def log_reward(x: torch.Tensor) -> torch.Tensor:
    """log r(x) = log g₉(x) − log p₂₅(x) (nats, β = 1), ``[*B, 2] -> [*B]``; at most log(375/61)."""
    return TARGET.log_prob(x) - PRIOR.log_prob(x)


def sample_prior(
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    stratified: bool = False,
) -> torch.Tensor:
    """``n`` samples of p₂₅ -> ``[n, 2]`` (exact i.i.d., or stratified over the components)."""
    return PRIOR.sample(n, generator=generator, device=device, stratified=stratified)


def sample_target(
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    stratified: bool = False,
) -> torch.Tensor:
    """``n`` samples of g₉ -> ``[n, 2]`` (exact i.i.d., or stratified over the components)."""
    return TARGET.sample(n, generator=generator, device=device, stratified=stratified)
