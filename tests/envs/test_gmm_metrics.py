"""Tests for zarrl.envs.gmm_posterior.metrics: mode assignment, mode weights, TV, ELBO / IS log Ẑ, W₂."""

from __future__ import annotations

import math

import pytest
import torch
from zarrl.envs.gmm_posterior.metrics import (
    assign_modes,
    elbo,
    is_log_z,
    mode_weight_tv,
    mode_weights,
    near_mode_fraction,
    target_modes_hit,
    task_metrics,
    wasserstein2,
    wrong_mode_mass,
)
from zarrl.envs.gmm_posterior.mixtures import (
    GRID_MEANS,
    TARGET_GRID_INDEX,
    TARGET_WEIGHTS,
    sample_prior,
    sample_target,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_assign_modes_finds_grid_means_and_flags_far_points():
    assert torch.equal(assign_modes(GRID_MEANS), torch.arange(25))
    far = torch.tensor([[2.5, 2.5], [30.0, 0.0], [1.0, 1.0]])
    assert assign_modes(far).tolist() == [-1, -1, 12]


def test_exact_target_samples_score_near_perfectly():
    x = sample_target(20_000, torch.Generator().manual_seed(0))
    m = task_metrics(x)
    assert m["wrong_mode_mass"] == 0.0
    assert m["modes_hit"] == 9
    assert m["tv"] < 0.02
    assert m["near_mode"] > 0.98


def test_exact_prior_samples_put_about_9_25_on_target_modes():
    x = sample_prior(20_000, torch.Generator().manual_seed(1))
    m = task_metrics(x)
    assert m["target_mass"] == pytest.approx(9 / 25 * 0.989, abs=0.02)
    assert m["wrong_mode_mass"] == pytest.approx(16 / 25 * 0.989, abs=0.02)
    expected_tv = 0.5 * (16 / 25 + (TARGET_WEIGHTS - 1 / 25).abs().sum().item())
    assert m["tv"] == pytest.approx(expected_tv, abs=0.03)


def test_collapse_onto_one_mode_is_detected():
    x = GRID_MEANS[TARGET_GRID_INDEX[7]].expand(100, 2).clone()  # all on (5, 0)
    assert target_modes_hit(x) == 1
    assert mode_weights(x)[7] == 1.0
    assert wrong_mode_mass(x) == 0.0
    assert mode_weight_tv(x) == pytest.approx(1 - 15 / 61, abs=1e-6)
    assert near_mode_fraction(x) == 1.0


def test_elbo_and_is_log_z_follow_their_formulas():
    log_p = torch.tensor([-1.0, -2.0, -3.0])
    log_q = torch.tensor([-1.5, -1.0, -3.5])
    log_r = torch.tensor([0.2, -0.1, 0.0])
    log_w = log_p + log_r - log_q
    assert elbo(log_p, log_q, log_r) == pytest.approx(float(log_w.mean()))
    assert is_log_z(log_p, log_q, log_r) == pytest.approx(
        math.log(float(log_w.exp().mean())), rel=1e-6
    )
    assert elbo(log_p, log_q, log_r) <= is_log_z(log_p, log_q, log_r)
    with pytest.raises(ValueError, match="log_p_prior, log_q and log_r"):
        elbo(log_p, log_q[:2], log_r)


def test_w2_is_zero_for_equal_sets_and_the_shift_for_translated_sets():
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    assert wasserstein2(x, x[torch.randperm(300)]) == pytest.approx(0.0, abs=1e-9)
    assert wasserstein2(x, x + torch.tensor([0.3, -0.4])) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        wasserstein2(x, x[:10])


def test_metrics_reject_badly_shaped_samples():
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        assign_modes(torch.zeros(5, 3))
