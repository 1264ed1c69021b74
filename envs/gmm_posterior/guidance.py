"""Classifier-guidance baseline of the GMM task: sample the fixed prior with its drift corrected by
the reward gradient, ``f(x_i, t_i) + s·σ²·(i/(i+1))·∇ log r(x_i)`` (step index ``i = 0..T−1``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tensordict import TensorDict

from .mixtures import log_reward as gmm_log_reward
from .policy import (
    NUM_STEPS,
    SIGMA2,
    DriftNetwork,
    gaussian_step_log_prob,
    integrate,
    trajectories_to_tensordict,
)


def reward_gradient(
    x: torch.Tensor, log_reward: Callable[[torch.Tensor], torch.Tensor] = gmm_log_reward
) -> torch.Tensor:
    """∇ₓ log r(x) for points ``[N, 2]`` -> ``[N, 2]`` (detached)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_reward(x).sum(), x)
    return grad


def classifier_guidance_sample(
    prior_net: DriftNetwork,
    num: int,
    *,
    scale: float = 1.0,
    log_reward: Callable[[torch.Tensor], torch.Tensor] = gmm_log_reward,
    sigma2: float = SIGMA2,
    num_steps: int = NUM_STEPS,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TensorDict:
    """``num`` guided trajectories -> TensorDict ``[num, T]`` in the env's key layout; its
    ``action_log_prob`` is the log-likelihood under the guided sampler (std ``sqrt(σ²·dt)``), so
    ``log p_prior − action_log_prob + log r`` gives the ELBO of the guided sampler."""

    def correction(x: torch.Tensor, i: int) -> torch.Tensor:
        if i == 0 or scale == 0:
            return torch.zeros_like(x)
        return (scale * sigma2 * i / (i + 1)) * reward_gradient(x, log_reward)

    xs, noise, std = integrate(
        prior_net,
        num,
        sigma2=sigma2,
        num_steps=num_steps,
        drift_correction=correction,
        generator=generator,
        device=device,
    )
    assert math.isclose(std, math.sqrt(sigma2 / num_steps))
    log_prob = gaussian_step_log_prob(noise, torch.zeros((), device=noise.device), std)
    return trajectories_to_tensordict(xs, log_prob, log_reward)
