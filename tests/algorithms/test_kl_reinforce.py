"""KLReinforceLoss: on-policy, off-policy (self-normalized, length-tempered) and original baselines."""

from __future__ import annotations

import pytest
import torch
from loss_builders import discrete_actor, trajectory_batch
from zarrl.algorithms import KLReinforceLoss


def _sums(td, actor, prior):
    valid = td["collector", "mask"]
    zero = torch.zeros((), dtype=torch.float64)
    lq = torch.where(valid, actor.get_dist(td.copy()).log_prob(td["action"]), zero)
    with torch.no_grad():
        lp = torch.where(valid, prior.get_dist(td.copy()).log_prob(td["action"]), zero)
    lb = torch.where(valid, td["action_log_prob"], zero)
    r = torch.where(valid, td["next", "reward"].squeeze(-1), zero)
    return lq.sum(-1), lp.sum(-1), lb.sum(-1), r.sum(-1), valid.sum(-1).double()


@pytest.mark.parametrize("mode", ["on_policy", "off_policy", "original"])
def test_loss_matches_the_trajectory_level_formula(mode):
    actor, prior = discrete_actor(3, 4), discrete_actor(3, 4, seed=3)
    td = trajectory_batch(B=6, seed=8)
    beta = 2.0
    loss = KLReinforceLoss(actor, prior, beta=beta, mode=mode)
    lq, lp, lb, R, length = _sums(td, actor, prior)
    if mode == "original":
        adv = R.exp() - R.exp().mean()
        want = -(adv * lq).mean() + 0.01 * (lq - lp).pow(2).mean()
    else:
        adv = R - (lq - lp).detach() / beta
        adv = adv - adv.mean()
        if mode == "on_policy":
            want = -(adv * lq).mean()
        else:
            w = ((lq.detach() - lb) / length).softmax(0)
            want = -(w * adv * lq).sum()
    torch.testing.assert_close(loss(td)["loss_objective"], want)


def test_off_policy_with_unit_temperature_uses_plain_importance_weights():
    actor, prior = discrete_actor(3, 4), discrete_actor(3, 4, seed=3)
    td = trajectory_batch(B=6, seed=8)
    loss = KLReinforceLoss(actor, prior, beta=1.0, mode="off_policy", is_temperature=1.0)
    lq, lp, lb, R, _ = _sums(td, actor, prior)
    w = (lq.detach() - lb).softmax(0)
    adv = R - (lq - lp).detach()
    adv = adv - adv.mean()
    out = loss(td)
    torch.testing.assert_close(out["loss_objective"], -(w * adv * lq).sum())
    torch.testing.assert_close(out["ess"], 1.0 / w.pow(2).sum().detach())


def test_off_policy_needs_the_behaviour_log_prob():
    loss = KLReinforceLoss(discrete_actor(3, 4), discrete_actor(3, 4), beta=1.0, mode="off_policy")
    with pytest.raises(KeyError, match="action_log_prob"):
        loss(trajectory_batch().exclude("action_log_prob"))


def test_bad_settings_are_rejected():
    a = discrete_actor(3, 4)
    with pytest.raises(ValueError, match="mode"):
        KLReinforceLoss(a, a, beta=1.0, mode="offline")
    with pytest.raises(ValueError, match="is_temperature"):
        KLReinforceLoss(a, a, beta=1.0, mode="off_policy", is_temperature=0.0)
    with pytest.raises(ValueError, match="beta"):
        KLReinforceLoss(a, a, beta=-1.0)
