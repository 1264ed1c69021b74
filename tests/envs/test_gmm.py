"""Tests for zarrl.envs.gmm_posterior.mixtures: exact densities, reward bound, exact sampling."""

from __future__ import annotations

import math

import pytest
import torch
from zarrl.envs.gmm_posterior.mixtures import (
    GRID_MEANS,
    MAX_REWARD,
    MODE_STD,
    TARGET_GRID_INDEX,
    TARGET_MEANS,
    TARGET_WEIGHTS,
    GaussianMixture,
    log_reward,
    prior_log_prob,
    sample_prior,
    sample_target,
    target_log_prob,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _grid(step: float = 0.05, half_width: float = 13.0) -> torch.Tensor:
    axis = torch.arange(-half_width, half_width + step / 2, step, dtype=torch.float64)
    return torch.cartesian_prod(axis, axis)


@pytest.mark.parametrize("log_prob", [prior_log_prob, target_log_prob])
def test_density_integrates_to_one_on_a_grid(log_prob):
    step = 0.05
    mass = log_prob(_grid(step)).exp().sum() * step**2
    assert mass.item() == pytest.approx(1.0, abs=1e-4)


def test_reward_is_target_over_prior_and_bounded_by_max_reward():
    x = torch.cat([_grid(0.1, 14.0).float(), 30 * torch.randn(1000, 2)])
    lr = log_reward(x)
    assert torch.allclose(lr, target_log_prob(x) - prior_log_prob(x))
    assert torch.isfinite(lr).all()
    assert lr.max().item() <= math.log(MAX_REWARD) + 1e-5
    # the bound is approached at the (5, 0) mode, the heaviest target mode
    assert log_reward(torch.tensor([5.0, 0.0])).item() == pytest.approx(
        math.log(MAX_REWARD), abs=1e-3
    )


def test_reward_is_tiny_on_non_target_modes():
    non_target = [i for i in range(25) if i not in TARGET_GRID_INDEX.tolist()]
    assert log_reward(GRID_MEANS[non_target]).max().item() < -30


def test_exact_prior_samples_give_importance_log_z_near_zero():
    x = sample_prior(200_000, torch.Generator().manual_seed(0))
    log_z = torch.logsumexp(log_reward(x), 0) - math.log(x.shape[0])
    assert abs(log_z.item()) < 0.02


def test_target_samples_follow_target_mode_weights():
    x = sample_target(100_000, torch.Generator().manual_seed(1))
    nearest = torch.cdist(x, TARGET_MEANS).argmin(-1)
    freq = torch.bincount(nearest, minlength=9).float() / x.shape[0]
    assert torch.allclose(freq, TARGET_WEIGHTS, atol=0.01)
    spread = (x - TARGET_MEANS[nearest]).std(0)
    assert torch.allclose(spread, torch.full((2,), MODE_STD), atol=0.01)


def test_sampling_is_reproducible_with_a_seeded_generator():
    a = sample_target(50, torch.Generator().manual_seed(3))
    b = sample_target(50, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_log_prob_keeps_batch_shape():
    assert prior_log_prob(torch.zeros(4, 3, 2)).shape == (4, 3)


@pytest.mark.parametrize(
    "bad", [torch.zeros(3), torch.zeros(4, 3), torch.zeros(2, 2, dtype=torch.long)]
)
def test_log_prob_rejects_points_not_shaped_or_typed_as_2d_floats(bad):
    with pytest.raises(ValueError, match="points"):
        prior_log_prob(bad)


def test_mixture_rejects_mismatched_weights():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(GRID_MEANS, torch.ones(3), 0.3)
