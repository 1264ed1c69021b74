"""RTBLoss: δ(τ) per whole trajectory, the learned log Z, and refusal of incomplete trajectories."""

from __future__ import annotations

import pytest
import torch
from loss_builders import discrete_actor, trajectory_batch
from zarrl.algorithms import RTBLoss


def _manual_delta(td, actor, prior, beta, log_z):
    valid = td["collector", "mask"]
    lq = actor.get_dist(td.copy()).log_prob(td["action"])
    lp = prior.get_dist(td.copy()).log_prob(td["action"])
    zero = torch.zeros((), dtype=lq.dtype)
    lq, lp = torch.where(valid, lq, zero), torch.where(valid, lp, zero)
    r = torch.where(valid, td["next", "reward"].squeeze(-1), zero)
    return log_z + lq.sum(-1) - lp.sum(-1) - beta * r.sum(-1)


def test_rtb_loss_is_half_mean_squared_trajectory_balance():
    actor, prior = discrete_actor(3, 4), discrete_actor(3, 4, seed=3)
    td = trajectory_batch(seed=4)
    loss = RTBLoss(actor, prior, beta=1.5, log_z_init=0.2)
    out = loss(td)
    delta = _manual_delta(td, actor, prior, 1.5, loss.log_z)
    torch.testing.assert_close(out["loss_objective"], 0.5 * delta.pow(2).mean())
    out["loss_objective"].backward()
    torch.testing.assert_close(loss.log_z.grad, delta.detach().mean())
    assert out["num_trajectories"] == 5
    torch.testing.assert_close(out["delta_abs"], delta.detach().abs().mean())


def test_log_z_is_a_trainable_parameter_and_the_prior_is_frozen():
    actor, prior = discrete_actor(3, 4), discrete_actor(3, 4, seed=3)
    loss = RTBLoss(actor, prior, beta=1.0)
    names = dict(loss.named_parameters())
    assert "log_z" in names and names["log_z"].requires_grad
    prior_ids = {id(p) for p in prior.parameters()}
    assert not prior_ids & {id(p) for p in loss.parameters()}
    loss(trajectory_batch())["loss_objective"].backward()
    assert all(p.grad is None for p in prior.parameters())


def test_rtb_refuses_trajectories_that_do_not_end_in_a_terminal_state():
    loss = RTBLoss(discrete_actor(3, 4), discrete_actor(3, 4, seed=3), beta=1.0)
    td = trajectory_batch(lengths=[6, 6, 6, 6, 6])
    td["next", "terminated"][2, -1] = False
    td["next", "truncated"][2, -1] = True
    with pytest.raises(ValueError, match="complete trajectories.*\\(2, 5\\)"):
        loss(td)
    mid = trajectory_batch(lengths=[6, 6, 6, 6, 6])
    mid["is_init"][1, 0] = False
    with pytest.raises(ValueError, match="starts mid-episode"):
        loss(mid)


def test_rtb_rejects_bad_settings():
    with pytest.raises(ValueError, match="beta"):
        RTBLoss(discrete_actor(3, 4), discrete_actor(3, 4), beta=0.0)
    with pytest.raises(ValueError, match="reduction"):
        RTBLoss(discrete_actor(3, 4), discrete_actor(3, 4), beta=1.0, reduction="max")


def test_rtb_scores_through_the_batched_log_prob_hook_with_the_same_loss_and_gradients():
    from zarrl.envs.gmm_posterior import DiffusionActor, DriftNetwork

    torch.manual_seed(0)
    net = DriftNetwork().double()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    prior = DiffusionActor(DriftNetwork().double().requires_grad_(False))
    td = DiffusionActor(net.float()).sample_trajectories(5)
    td = td.apply(lambda t: t.double() if t.is_floating_point() else t)
    net.double()
    losses, grads = [], []
    for use_hook in (True, False):
        actor = DiffusionActor(net)
        if not use_hook:
            actor.batched_log_prob = None  # hide the hook: get_dist scoring
        loss = RTBLoss(actor, prior, beta=1.0, log_z_init=0.3)
        out = loss(td)["loss_objective"]
        losses.append(out)
        grads.append(torch.autograd.grad(out, list(net.parameters())))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(*grads, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


def test_rtb_rejects_a_hook_returning_the_wrong_shape():
    from zarrl.envs.gmm_posterior import DiffusionActor, DriftNetwork

    actor = DiffusionActor(DriftNetwork())
    prior = DiffusionActor(DriftNetwork().requires_grad_(False))
    td = actor.sample_trajectories(3)
    actor.batched_log_prob = lambda td, key: torch.zeros(3)
    with pytest.raises(ValueError, match="batched_log_prob returned shape"):
        RTBLoss(actor, prior, beta=1.0)(td)


def test_a_stored_prior_log_prob_replaces_scoring_the_prior():
    from zarrl.envs.gmm_posterior import DiffusionActor, DriftNetwork

    torch.manual_seed(1)
    post_net, prior_net = DriftNetwork(), DriftNetwork().requires_grad_(False)
    for p in (*post_net.parameters(), *prior_net.parameters()):
        torch.nn.init.normal_(p, std=0.3)
    actor, prior = DiffusionActor(post_net), DiffusionActor(prior_net)
    td = actor.sample_trajectories(6, extra_std=0.3, reference=prior_net)
    scored = td.exclude("ref_log_prob")
    loss = RTBLoss(actor, prior, beta=1.0, log_z_init=0.3)
    out_stored, out_scored = loss(td)["loss_objective"], loss(scored)["loss_objective"]
    # the two log p differ by float32 rounding only: each of the T per-step log-densities carries
    # about √H·ε relative error of its magnitude (H = 64 hidden units per layer, a few layers),
    # so each δ by at most e = 32·ε·Σ_t(|log p_t| + 1), the loss by e·mean|δ| and every gradient
    # entry by e·mean_b |∂Σ_t log q_b| (∂loss = mean δ_b·∂Σ_t log q_b)
    eps = torch.finfo(torch.float32).eps
    log_p = td["ref_log_prob"].detach().double()
    e = float(32 * eps * (log_p.abs() + 1).sum(-1).max())
    delta = loss.trajectory_balance(td)[0].sum(-1).detach().double()
    torch.testing.assert_close(
        out_stored, out_scored, rtol=0.0, atol=e * float(delta.abs().mean() + e)
    )
    params = list(post_net.parameters())
    g_stored = torch.autograd.grad(out_stored, params)
    g_scored = torch.autograd.grad(out_scored, params)
    log_q = actor.batched_log_prob(td, "action").sum(-1)
    per_traj = [torch.autograd.grad(lq, params, retain_graph=True) for lq in log_q]
    for i, (a, b) in enumerate(zip(g_stored, g_scored, strict=True)):
        scale = torch.stack([g[i].abs() for g in per_traj]).mean(0)
        assert ((a - b).abs() <= e * scale + 4 * eps * b.abs()).all(), (a - b).abs().max()
    # the stored entry is what is used: shifting it by c per step moves δ by −T·c
    shifted = td.clone()
    shifted["ref_log_prob"] = td["ref_log_prob"] + 0.01
    delta = loss.trajectory_balance(td)[0].sum(-1).detach()
    moved = loss.trajectory_balance(shifted)[0].sum(-1)
    torch.testing.assert_close(moved, delta - 0.01 * td.shape[-1], rtol=4 * eps, atol=e)
    loss.tensor_keys.ref_log_prob = None  # always score
    torch.testing.assert_close(
        loss.trajectory_balance(shifted)[0].sum(-1), delta, rtol=4 * eps, atol=e
    )


def test_a_stored_prior_log_prob_of_the_wrong_shape_is_named():
    from zarrl.envs.gmm_posterior import DiffusionActor, DriftNetwork

    actor, prior = (
        DiffusionActor(DriftNetwork()),
        DiffusionActor(DriftNetwork().requires_grad_(False)),
    )
    td = actor.sample_trajectories(3)
    td.set("ref_log_prob", torch.zeros(3, td.shape[-1], 2))
    with pytest.raises(ValueError, match="'ref_log_prob'"):
        RTBLoss(actor, prior, beta=1.0)(td)
