"""Tests for zarrl.envs.gmm_posterior.guidance: the classifier-guidance sampler."""

from __future__ import annotations

import pytest
import torch
from zarrl.envs.gmm_posterior.guidance import classifier_guidance_sample, reward_gradient
from zarrl.envs.gmm_posterior.mixtures import log_reward
from zarrl.envs.gmm_posterior.policy import DriftNetwork, sample_trajectories

pytestmark = pytest.mark.usefixtures("single_thread")


def test_reward_gradient_matches_finite_differences():
    x = torch.tensor([[4.2, -0.3], [-4.6, 0.4]], dtype=torch.float64)
    grad = reward_gradient(x)
    eps = 1e-5
    for d in range(2):
        shift = torch.zeros(2, dtype=torch.float64)
        shift[d] = eps
        fd = (log_reward(x + shift) - log_reward(x - shift)) / (2 * eps)
        assert torch.allclose(grad[:, d], fd, rtol=1e-4)


def test_zero_scale_reproduces_the_unguided_prior_sampler():
    net = DriftNetwork()
    torch.nn.init.normal_(net.trunk[-1].weight, std=0.3)
    guided = classifier_guidance_sample(
        net, 32, scale=0.0, generator=torch.Generator().manual_seed(0)
    )
    plain = sample_trajectories(net, 32, generator=torch.Generator().manual_seed(0))
    # same noise; the unguided sampler runs a fused loop, so equal up to float rounding
    assert torch.allclose(guided["action"], plain["action"], atol=1e-4)
    assert torch.equal(guided["action_log_prob"], plain["action_log_prob"])


def test_guidance_raises_the_mean_terminal_log_reward():
    net = DriftNetwork()  # zero drift: Brownian motion
    gen = torch.Generator().manual_seed(1)
    plain = sample_trajectories(net, 400, generator=gen)
    guided = classifier_guidance_sample(net, 400, scale=1.0, generator=gen)
    r_plain = plain["next", "reward"][:, -1].mean()
    r_guided = guided["next", "reward"][:, -1].mean()
    assert r_guided > r_plain + 1.0
    assert not guided["action"].requires_grad
