"""Tests for zarrl.envs.diffusion_scoring: the fused drift-MLP + Gaussian log-density autograd
function behind ``DiffusionActor.batched_log_prob``."""

from __future__ import annotations

import pytest
import torch
from zarrl.envs.diffusion_policy import DiffusionActor, DriftNetwork

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


@pytest.mark.parametrize("view", ["trajectories", "one_step", "flat", "shuffled_times"])
def test_batched_log_prob_and_its_gradients_equal_get_dist_in_float64(view):
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


def test_fused_gradient_wrt_states_and_actions_passes_gradcheck():
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
