"""Tests for zarrl.envs.gmm_posterior.scoring: the fused drift-MLP + Gaussian log-density autograd
function behind ``DiffusionActor.batched_log_prob``."""

from __future__ import annotations

import pytest
import torch
from zarrl.envs.gmm_posterior import policy as diffusion_policy
from zarrl.envs.gmm_posterior import scoring
from zarrl.envs.gmm_posterior.policy import DiffusionActor, DriftNetwork

from tests.tolerances import assert_within, drift_network_error

pytestmark = pytest.mark.usefixtures("single_thread")


def _actor_and_batch(dtype=torch.float64, extra_std=0.2):
    torch.manual_seed(0)
    net = DriftNetwork()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    actor = DiffusionActor(net, extra_std=extra_std)
    td = actor.sample_trajectories(6, generator=torch.Generator().manual_seed(1))
    td = td.apply(lambda t: t.to(dtype) if t.is_floating_point() else t)
    return actor, net.to(dtype), td


def _get_dist_log_prob(actor, td):
    lp = actor.get_dist(td.copy()).log_prob(td["action"])
    return lp.sum(-1) if lp.ndim > td.ndim else lp


@pytest.mark.parametrize("block_rows", [None, 7])
@pytest.mark.parametrize("view", ["trajectories", "one_step", "flat", "shuffled_times"])
def test_batched_log_prob_and_its_gradients_equal_get_dist_in_float64(
    view, block_rows, monkeypatch
):
    if block_rows is not None:  # many uneven row blocks in the backward pass
        monkeypatch.setattr(scoring, "BLOCK_ROWS", block_rows)
    actor, net, td = _actor_and_batch()
    sub = {
        "trajectories": td,
        "one_step": td[:, 5],
        "flat": td.reshape(-1),
        "shuffled_times": td[:, torch.randperm(td.shape[1], generator=torch.Generator())],
    }[view]
    params = list(net.parameters())
    ref = _get_dist_log_prob(actor, sub)
    ref_grads = torch.autograd.grad((ref.sum() + 0.1 * ref.pow(2).sum()), params)
    fused = actor.batched_log_prob(sub)
    node = fused.grad_fn
    names = {type(node).__name__, *(type(n).__name__ for n, _ in node.next_functions if n)}
    assert any("Fused" in name for name in names)
    grads = torch.autograd.grad((fused.sum() + 0.1 * fused.pow(2).sum()), params)
    torch.testing.assert_close(fused, ref, rtol=0, atol=1e-10)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("block_rows", [None, 4])
def test_fused_gradient_wrt_states_and_actions_passes_gradcheck(block_rows, monkeypatch):
    if block_rows is not None:
        monkeypatch.setattr(scoring, "BLOCK_ROWS", block_rows)
    actor, _, td = _actor_and_batch()
    sub = td[:2, :3]

    def f(obs, action):
        return actor.batched_log_prob(sub.update({"observation": obs, "action": action}))

    obs = sub["observation"].clone().requires_grad_()
    action = sub["action"].clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (obs, action))


def test_batched_log_prob_without_grad_uses_the_plain_path_and_agrees():
    actor, _, td = _actor_and_batch(torch.float32)
    with torch.no_grad():
        plain = actor.batched_log_prob(td)
    assert plain.grad_fn is None
    torch.testing.assert_close(plain, _get_dist_log_prob(actor, td).detach(), atol=1e-4, rtol=0)


def test_batched_log_prob_names_a_missing_key_and_a_bad_time_shape():
    actor, _, td = _actor_and_batch()
    with pytest.raises(KeyError, match="'action'"):
        actor.batched_log_prob(td.exclude("action"))
    bad = td.clone()
    bad.set("time", torch.zeros(6, 100, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="time must have shape"):
        actor.batched_log_prob(bad)


def _sampled(seed=0):
    torch.manual_seed(seed)
    net = DriftNetwork()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    actor = DiffusionActor(net)
    td = actor.sample_trajectories(8, extra_std=0.3, generator=torch.Generator().manual_seed(2))
    return actor, net, td


def _log_prob_and_grads(actor, net, td):
    lp = actor.batched_log_prob(td)
    return lp, torch.autograd.grad(lp.sum(-1).pow(2).sum(), list(net.parameters()))


def test_scoring_the_sampled_trajectories_reuses_the_sampler_activations_with_same_result():
    actor, net, td = _sampled()
    obs, time = td["observation"], td["time"].squeeze(-1)
    assert net.sampled.reuse(net, obs, time, actor.step.num_steps) is not None
    reused, reused_grads = _log_prob_and_grads(actor, net, td.clone())
    net.sampled.forget()
    fresh, fresh_grads = _log_prob_and_grads(actor, net, td)
    torch.testing.assert_close(reused, fresh, rtol=0, atol=1e-5)
    for g, g_ref in zip(reused_grads, fresh_grads, strict=True):  # float32 summation order
        torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-4 * float(g_ref.abs().max()))


def test_sampler_activations_are_not_reused_after_a_parameter_update_or_for_other_states():
    actor, net, td = _sampled()
    obs, time, steps = td["observation"], td["time"].squeeze(-1), actor.step.num_steps
    assert net.sampled.reuse(net, obs + 1e-3, time, steps) is None
    assert net.sampled.reuse(net, obs[:4], time[:4], steps) is None
    assert net.sampled.reuse(net, obs, time.flip(-1), steps) is None
    with torch.no_grad():
        net.trunk[1].bias.add_(0.1)  # an optimizer step is in place
    assert net.sampled.reuse(net, obs, time, steps) is None
    fresh, _ = _log_prob_and_grads(actor, net, td)  # recomputed under the new parameters
    torch.testing.assert_close(fresh, _get_dist_log_prob(actor, td), rtol=0, atol=1e-4)


def test_a_frozen_network_keeps_no_sampler_activations():
    actor, net, _ = _sampled()
    net.requires_grad_(False)
    net.sampled.forget()
    actor.sample_trajectories(4)
    assert net.sampled.states() is None


def test_samples_too_large_for_the_activation_budget_are_not_kept(monkeypatch):
    import zarrl.envs.gmm_posterior.policy as policy

    actor, net, _ = _sampled()
    monkeypatch.setattr(policy, "MAX_KEPT_ACTIVATION_BYTES", 6 * 8 * 100 * 64 * 4 - 1)
    actor.sample_trajectories(8)
    assert net.sampled.states() is None


@pytest.mark.parametrize("embedding", ["shared_grid", "per_row"])
def test_a_frozen_network_scores_large_batches_in_blocks_with_the_same_result(
    embedding, monkeypatch
):
    torch.manual_seed(0)
    net = DriftNetwork().requires_grad_(False)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(9, 10, 2)
    time = torch.arange(10).div(10).expand(9, 10)
    if embedding == "shared_grid":
        t_emb = net.time_embedding(time[0])  # [T, H], broadcast over the 9 trajectories
    else:
        t_emb = net.time_embedding(time.reshape(-1)).view(9, 10, -1)
    whole = net.drift_no_graph(x, t_emb)
    monkeypatch.setattr(diffusion_policy, "DRIFT_BLOCK_ROWS", 25)  # blocks of 2 trajectories
    blocked = net.drift_no_graph(x, t_emb)
    # other row counts per product: other GEMM blockings, so float32 rounding apart (each within
    # the network's error estimate of the exact drift; a wrong block would be off by O(1))
    error = drift_network_error(net, x, t_emb)
    assert_within(blocked, whole, 2 * error, "blocked drift")
    assert_within(whole, net.drift_from_embedding(x, t_emb), 2 * error, "drift via nn.Linear")
    exact = net.double().drift_from_embedding(x.double(), t_emb.double())
    assert_within(whole, exact, error, "drift")


def test_the_sampler_reuses_its_activation_tables_and_a_stale_graph_fails_loudly():
    actor, net, td = _sampled()
    first = [t.data_ptr() for t in net.sampled.reusable_tables if t is not None]
    stale = actor.batched_log_prob(td).sum()  # its backward needs the first sample's activations
    td2 = actor.sample_trajectories(8, extra_std=0.3, generator=torch.Generator().manual_seed(3))
    assert [
        t.data_ptr() for t in net.sampled.reusable_tables if t is not None
    ] == first  # no new 77 MB
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        stale.backward()
    fresh, grads = _log_prob_and_grads(actor, net, td2.clone())  # the new sample scores fine
    net.sampled.forget()
    ref, ref_grads = _log_prob_and_grads(actor, net, td2)
    torch.testing.assert_close(fresh, ref, rtol=0, atol=1e-5)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-4 * float(g_ref.abs().max()))
