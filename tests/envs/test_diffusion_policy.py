"""Tests for zarrl.envs.gmm_posterior.policy: the drift network, the probabilistic actor, batched scoring
and the fast trajectory sampler."""

from __future__ import annotations

import math

import pytest
import torch
from zarrl.envs.gmm_posterior.mixtures import log_reward
from zarrl.envs.gmm_posterior.policy import (
    NUM_STEPS,
    SIGMA2,
    DiffusionActor,
    DriftNetwork,
    gaussian_step_log_prob,
    sample_trajectories,
)

from tests.tolerances import assert_within, drift_network_error

pytestmark = pytest.mark.usefixtures("single_thread")


def _random_net(seed: int = 0) -> DriftNetwork:
    torch.manual_seed(seed)
    net = DriftNetwork()
    torch.nn.init.normal_(net.trunk[-1].weight, std=0.5)  # non-zero drift
    return net


@pytest.fixture(scope="module")
def actor() -> DiffusionActor:
    return DiffusionActor(_random_net())


@pytest.fixture(scope="module")
def batch(actor) -> torch.Tensor:
    return actor.sample_trajectories(64, extra_std=0.3, generator=torch.Generator().manual_seed(0))


def test_drift_network_has_reference_size_and_starts_at_zero_drift():
    net = DriftNetwork()
    n_params = sum(p.numel() for p in net.parameters())
    assert 20_000 < n_params < 22_000
    assert torch.equal(net(torch.randn(5, 2), torch.rand(5, 1)), torch.zeros(5, 2))


def test_shared_time_embedding_equals_per_row_embedding():
    net = _random_net(1)
    x = torch.randn(6, 10, 2)
    grid = torch.arange(10.0) / 10
    shared = net(x, grid.expand(6, 10).unsqueeze(-1))  # [B, T] on one time grid
    mixed_t = torch.rand(6, 10, 1)  # arbitrary times: unique/gather path
    mixed = net(x, mixed_t)
    for b in range(6):
        for i in range(10):
            t_one = grid[i].view(1)
            expected = net.drift_from_embedding(x[b, i], net.time_embedding(t_one)[0])
            assert torch.allclose(shared[b, i], expected, atol=1e-5)
            expected = net.drift_from_embedding(x[b, i], net.time_embedding(mixed_t[b, i])[0])
            assert torch.allclose(mixed[b, i], expected, atol=1e-5)


def test_no_graph_drift_of_a_frozen_or_no_grad_network_equals_the_autograd_drift():
    net = _random_net(2)
    x, t = torch.randn(5, 7, 2), (torch.arange(7.0) / 7).expand(5, 7).unsqueeze(-1)
    with_graph = net(x, t)
    assert with_graph.requires_grad
    # the same time embedding, other kernels (mm + compiled GELU vs nn.Linear + ATen's GELU)
    bound = 2 * drift_network_error(net, x, net.shared_time_embedding(t.squeeze(-1)))
    with torch.no_grad():
        assert_within(net(x, t), with_graph, bound, "no-grad drift")
    net.requires_grad_(False)
    frozen = net(x, t)
    assert not frozen.requires_grad
    assert_within(frozen, with_graph, bound, "frozen drift")


def test_batched_scoring_equals_step_by_step_scoring(actor, batch):
    batched = actor.transition_log_prob(batch)  # [B, T], one call
    assert batched.shape == (64, NUM_STEPS)
    stepwise = torch.stack(
        [actor.get_dist(batch[:, i]).log_prob(batch[:, i]["action"]) for i in range(NUM_STEPS)], 1
    )
    assert torch.allclose(batched, stepwise, atol=1e-4)
    dist_bt = actor.get_dist(batch)  # the actor's distribution on a [B, T] batch
    assert torch.allclose(dist_bt.log_prob(batch["action"]), batched, atol=1e-4)
    assert torch.allclose(actor.trajectory_log_prob(batch), batched.sum(-1), atol=1e-3)


def test_scoring_ignores_exploration_std_but_sampling_uses_it(batch):
    net = _random_net()
    explorer = DiffusionActor(net, extra_std=0.5)
    plain = DiffusionActor(net)
    assert torch.allclose(
        explorer.transition_log_prob(batch), plain.transition_log_prob(batch), atol=1e-6
    )
    td = explorer(batch[:, 5].select("observation", "time").clone())
    assert torch.allclose(td["scale"], torch.full((64, 2), math.sqrt(SIGMA2 / NUM_STEPS + 0.25)))
    expected = gaussian_step_log_prob(td["action"], td["loc"], math.sqrt(SIGMA2 / NUM_STEPS + 0.25))
    assert torch.allclose(td["action_log_prob"], expected, atol=1e-5)


def test_sampler_log_prob_is_behaviour_log_prob(actor, batch):
    # sampled with extra_std 0.3: the stored log-prob uses std sqrt(σ²dt + 0.09)
    std = math.sqrt(SIGMA2 / NUM_STEPS + 0.09)
    loc = batch["observation"] + actor.drift_net(batch["observation"], batch["time"]) / NUM_STEPS
    expected = gaussian_step_log_prob(batch["action"], loc, std)
    assert torch.allclose(batch["action_log_prob"], expected, atol=1e-4)


def test_sampler_layout_matches_the_environment(actor, batch):
    assert batch.batch_size == (64, NUM_STEPS)
    assert torch.equal(batch["observation"][:, 0], torch.zeros(64, 2))
    assert torch.equal(batch["observation"][:, 1:], batch["next", "observation"][:, :-1])
    assert torch.equal(batch["action"], batch["next", "observation"])
    assert torch.allclose(batch["time"][0, :, 0], torch.arange(NUM_STEPS) / NUM_STEPS)
    assert batch["next", "done"][:, -1].all() and not batch["next", "done"][:, :-1].any()
    reward = batch["next", "reward"]
    assert torch.allclose(reward[:, -1, 0], log_reward(batch["action"][:, -1]))
    assert torch.equal(reward[:, :-1], torch.zeros(64, NUM_STEPS - 1, 1))


def test_sampler_is_reproducible_and_runs_without_autograd(actor):
    a = actor.sample_trajectories(8, generator=torch.Generator().manual_seed(5))
    b = sample_trajectories(actor.drift_net, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a["action"], b["action"])
    assert not a["action"].requires_grad and not a["action_log_prob"].requires_grad


def test_zero_drift_sampler_has_brownian_terminal_variance():
    td = sample_trajectories(DriftNetwork(), 4000, generator=torch.Generator().manual_seed(2))
    x_t = td["next", "observation"][:, -1]
    assert x_t.var(0).sub(SIGMA2).abs().max() < 0.4  # Var x_1 = σ²·1


def test_actor_rejects_bad_exploration_std_and_missing_keys(actor, batch):
    with pytest.raises(ValueError, match="extra_std"):
        actor.extra_std = -1.0
    with pytest.raises(KeyError, match="action"):
        actor.transition_log_prob(batch.exclude("action"))
    with pytest.raises(ValueError, match="time"):
        actor.drift_net(torch.zeros(4, 2), torch.zeros(3))


@pytest.mark.parametrize("side_thread", [True, False])
def test_reference_log_prob_is_the_prior_scoring_of_the_sampled_steps(side_thread, monkeypatch):
    import zarrl.envs.gmm_posterior.policy as policy

    monkeypatch.setattr(policy, "side_thread_helps", lambda device: side_thread)
    monkeypatch.setattr(policy, "SIDE_JOB_ROWS", 7 * 40)  # several side jobs, a ragged last one
    post = DiffusionActor(_random_net(1).requires_grad_(True))
    prior = DiffusionActor(_random_net(2).requires_grad_(False))
    threads = torch.get_num_threads()
    gen = torch.Generator().manual_seed(3)
    td = post.sample_trajectories(40, extra_std=0.4, reference=prior.drift_net, generator=gen)
    assert torch.get_num_threads() == threads
    assert td["ref_log_prob"].shape == (40, NUM_STEPS)
    expected = prior.transition_log_prob(td)  # the prior's own std, exploration ignored
    torch.testing.assert_close(td["ref_log_prob"], expected, rtol=1e-5, atol=1e-4)
    plain = post.sample_trajectories(40, extra_std=0.4, generator=torch.Generator().manual_seed(3))
    assert "ref_log_prob" not in plain
    torch.testing.assert_close(plain["action"], td["action"], rtol=0, atol=0)


def test_the_side_thread_keeps_one_intra_op_thread_and_the_caller_its_own():
    from zarrl.envs.gmm_posterior.side_thread import caller_single_threaded, side_executor

    threads = torch.get_num_threads()
    assert side_executor().submit(torch.get_num_threads).result() == 1
    assert torch.get_num_threads() == threads
    torch.set_num_threads(2)
    try:
        with caller_single_threaded():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_the_side_thread_is_used_only_on_a_cpu_with_a_second_core(monkeypatch):
    from zarrl.envs.gmm_posterior import side_thread

    monkeypatch.setattr(side_thread.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert side_thread.side_thread_helps(torch.device("cpu"))
    assert not side_thread.side_thread_helps(torch.device("cuda"))
    monkeypatch.setattr(side_thread.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert not side_thread.side_thread_helps(torch.device("cpu"))
