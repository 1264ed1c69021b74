"""Trust-PCL's relative-entropy coefficient λ tuned from a KL budget ε.

With the returns R_k and lengths L_k of recent episodes, reweighting them by w_k ∝ exp(R_k/λ)
moves the empirical episode distribution by

    KL(λ) = Σ_k w_k·R_k/λ − log mean_k exp(R_k/λ)      (nats, decreasing in λ).

λ is chosen so that KL(λ) = D = ε·mean(L_k), by bisection in [0, max_lambda].
"""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import Tensor

__all__ = ["reweighted_kl", "lambda_for_kl_budget", "KLBudgetLambda"]


def reweighted_kl(returns: Tensor, lam: Tensor | float) -> Tensor:
    """KL(λ) between the episodes reweighted by exp(R/λ) and the uniform empirical distribution.

    Args:
        returns: ``[K]`` episode returns (nats).
        lam: λ > 0, a float or a tensor of candidates ``[M]`` (then the result is ``[M]``).
    """
    returns = returns.to(torch.float64)
    lam = torch.as_tensor(lam, dtype=torch.float64, device=returns.device)
    scaled = returns / lam[..., None]  # [M, K]
    log_w = scaled.log_softmax(-1)
    K = returns.shape[-1]
    # Σ w log(w·K) = Σ w·scaled − logsumexp(scaled) + log K
    kl = (log_w.exp() * scaled).sum(-1) - torch.logsumexp(scaled, -1) + math.log(K)
    return kl.squeeze(0) if lam.ndim == 0 else kl


def lambda_for_kl_budget(
    returns: Tensor,
    lengths: Tensor,
    kl_budget: float,
    *,
    max_lambda: float = 1000.0,
    steps: int = 40,
) -> float:
    """The λ whose reweighting meets ``kl_budget·mean(lengths)`` nats (bisection, ``steps`` halvings).

    When even ``max_lambda`` exceeds the budget it returns ``max_lambda``; when every λ meets it
    (e.g. equal returns) it returns the bracket's lower end (→ 0).
    """
    returns = torch.as_tensor(returns, dtype=torch.float64).flatten()
    lengths = torch.as_tensor(lengths, dtype=torch.float64).flatten()
    if returns.numel() == 0 or returns.shape != lengths.shape:
        raise ValueError(
            f"need as many returns as lengths (≥ 1), got {returns.numel()} and {lengths.numel()}"
        )
    if kl_budget <= 0:
        raise ValueError(f"kl_budget must be > 0, got {kl_budget}")
    target = kl_budget * float(lengths.mean())
    lo, hi = 0.0, float(max_lambda)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if float(reweighted_kl(returns, mid)) > target:
            lo = mid  # too far from the data: regularize more
        else:
            hi = mid
    return hi


class KLBudgetLambda:
    """Stateful λ tuner: keeps the last ``history`` episodes and smooths λ.

    Args:
        kl_budget: ε, nats per step.
        initial_lambda: λ used until more than ``min_episodes`` episodes were seen.
        max_lambda: upper end of the bisection bracket.
        history: number of recent episodes kept.
        min_episodes: λ stays at ``initial_lambda`` while at most this many episodes were seen.
        smoothing: λ ← smoothing·λ + (1 − smoothing)·λ_new.
        steps: bisection halvings.
    """

    def __init__(
        self,
        kl_budget: float,
        *,
        initial_lambda: float = 500.0,
        max_lambda: float = 1000.0,
        history: int = 100,
        min_episodes: int = 8,
        smoothing: float = 0.99,
        steps: int = 40,
    ):
        if kl_budget <= 0:
            raise ValueError(f"kl_budget must be > 0, got {kl_budget}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.kl_budget, self.max_lambda, self.steps = kl_budget, max_lambda, steps
        self.min_episodes, self.smoothing = min_episodes, smoothing
        self.returns: deque[float] = deque(maxlen=history)
        self.lengths: deque[float] = deque(maxlen=history)
        self.value = float(initial_lambda)

    def update(self, episode_returns, episode_lengths) -> float:
        """Record finished episodes and return the new λ."""
        r = torch.as_tensor(episode_returns, dtype=torch.float64).flatten()
        n = torch.as_tensor(episode_lengths, dtype=torch.float64).flatten()
        if r.shape != n.shape:
            raise ValueError(
                f"episode_returns and episode_lengths differ in size: {r.numel()} vs {n.numel()}"
            )
        self.returns.extend(r.tolist())
        self.lengths.extend(n.tolist())
        if len(self.returns) > self.min_episodes:
            new = lambda_for_kl_budget(
                torch.tensor(list(self.returns)),
                torch.tensor(list(self.lengths)),
                self.kl_budget,
                max_lambda=self.max_lambda,
                steps=self.steps,
            )
            self.value = self.smoothing * self.value + (1.0 - self.smoothing) * new
        return self.value

    def state_dict(self) -> dict:
        return {"returns": list(self.returns), "lengths": list(self.lengths), "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.returns.clear()
        self.lengths.clear()
        self.returns.extend(state["returns"])
        self.lengths.extend(state["lengths"])
        self.value = float(state["value"])
