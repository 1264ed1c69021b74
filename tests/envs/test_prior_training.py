"""Tests for zarrl.envs.gmm_posterior.prior: Brownian-bridge noising, batched path likelihood, training,
checkpoint round trip, and the shipped prior's quality."""

from __future__ import annotations

import math

import pytest
import torch
from zarrl.envs.gmm_posterior.metrics import near_mode_fraction, target_mass, wasserstein2
from zarrl.envs.gmm_posterior.mixtures import sample_prior
from zarrl.envs.gmm_posterior.policy import NUM_STEPS, SIGMA2, DiffusionActor, DriftNetwork
from zarrl.envs.gmm_posterior.prior import (
    DEFAULT_PRIOR_PATH,
    brownian_bridge_paths,
    load_prior,
    load_prior_metadata,
    path_log_likelihood,
    pretrain_prior,
    save_prior,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_bridge_paths_are_pinned_and_have_bridge_marginals():
    x1 = torch.tensor([[4.0, -2.0]]).expand(20_000, 2)
    xs = brownian_bridge_paths(x1, generator=torch.Generator().manual_seed(0))
    assert xs.shape == (20_000, NUM_STEPS + 1, 2)
    assert torch.equal(xs[:, 0], torch.zeros(20_000, 2))
    assert torch.allclose(xs[:, -1], x1, atol=1e-5)
    mid = xs[:, NUM_STEPS // 2]  # t = 1/2: mean x1/2, variance σ²·t(1 − t)
    assert torch.allclose(mid.mean(0), x1[0] / 2, atol=0.05)
    assert torch.allclose(mid.var(0), torch.full((2,), SIGMA2 / 4), rtol=0.05)
    # backward one-step law from t to t − dt: variance σ²·dt·(t − dt)/t given x_t
    t, dt = 0.5, 1 / NUM_STEPS
    resid = xs[:, 49] - mid * (t - dt) / t
    assert torch.allclose(resid.var(0), torch.full((2,), SIGMA2 * dt * (t - dt) / t), rtol=0.05)


def test_path_likelihood_equals_the_actor_scoring_of_the_same_transitions():
    torch.manual_seed(0)
    net = DriftNetwork()
    torch.nn.init.normal_(net.trunk[-1].weight, std=0.5)
    actor = DiffusionActor(net)
    td = actor.sample_trajectories(16, generator=torch.Generator().manual_seed(1))
    xs = torch.cat([td["observation"], td["next", "observation"][:, -1:]], dim=1)
    expected = actor.transition_log_prob(td).sum(-1)
    assert torch.allclose(path_log_likelihood(net, xs), expected, atol=1e-3)


def test_short_pretraining_lowers_the_negative_log_likelihood():
    losses: list[float] = []
    pretrain_prior(
        num_updates=60,
        batch_size=64,
        lr=3e-3,
        seed=0,
        callback=lambda update, loss: losses.append(loss),
    )
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 1.0


def test_checkpoint_round_trip_restores_the_same_drift(tmp_path):
    torch.manual_seed(3)
    net = DriftNetwork()
    torch.nn.init.normal_(net.trunk[-1].weight)
    path = tmp_path / "prior.pt"
    save_prior(net, path, {"note": "test"})
    loaded = load_prior(path)
    x, t = torch.randn(7, 2), torch.rand(7, 1)
    assert torch.allclose(loaded(x, t), net(x, t), atol=1e-5)  # frozen: the no-graph path
    assert not any(p.requires_grad for p in loaded.parameters())
    assert load_prior_metadata(path) == {"note": "test"}
    with pytest.raises(FileNotFoundError, match=r"zarrl\.envs\.gmm_posterior\.prior"):
        load_prior(tmp_path / "missing.pt")


def test_shipped_prior_loads_with_weights_only_and_meets_the_task_acceptance():
    ckpt = torch.load(DEFAULT_PRIOR_PATH, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"state_dict", "config", "metadata"}
    prior = load_prior()
    n = 3000
    gen = torch.Generator().manual_seed(123)
    x = DiffusionActor(prior).sample_trajectories(n, generator=gen)["next", "observation"][:, -1]
    assert near_mode_fraction(x) >= 0.90
    assert 0.30 <= target_mass(x) <= 0.42
    reference = sample_prior(n, generator=gen, stratified=True)
    assert wasserstein2(x, reference) < 1.0
    assert math.isfinite(ckpt["metadata"]["metrics"]["near_mode"])
