"""A batch carrying ``ref_log_prob`` (the fixed prior's per-step log-probability, stored when the
data was generated) gives the loss of scoring the prior, and the stored values are what is used;
the lagged EMA reference of Trust-PCL changes, so it ignores them."""

from __future__ import annotations

import pytest
import torch
from loss_builders import discrete_actor, trajectory_batch, value_net
from zarrl.algorithms import KLReinforceLoss, RTBLoss, TrustPCLLoss


def _with_stored_prior(td, prior):
    lp = prior.get_dist(td.copy()).log_prob(td["action"]).detach()
    return td.clone().set("ref_log_prob", lp)


def _losses():
    actor, prior = discrete_actor(3, 4), discrete_actor(3, 4, seed=3)
    return {
        "rtb": RTBLoss(actor, prior, beta=1.5, log_z_init=0.2),
        "kl-reinforce": KLReinforceLoss(actor, prior, beta=2.0, mode="off_policy"),
        "trust-pcl": TrustPCLLoss(
            actor, value_net(3), reference_network=prior, kl_coef=0.5, rollout=2
        ),
    }, prior


@pytest.mark.parametrize("name", ["rtb", "kl-reinforce", "trust-pcl"])
def test_the_stored_prior_log_prob_gives_the_scored_loss_and_is_used(name):
    losses, prior = _losses()
    loss = losses[name]
    td = trajectory_batch(B=6, seed=8, terminal_only_reward=False)
    stored = _with_stored_prior(td, prior)
    torch.testing.assert_close(loss(stored)["loss_objective"], loss(td)["loss_objective"])
    stored["ref_log_prob"] = stored["ref_log_prob"] + 0.3
    assert not torch.allclose(loss(stored)["loss_objective"], loss(td)["loss_objective"])
    loss.tensor_keys.ref_log_prob = None  # always score
    torch.testing.assert_close(loss(stored)["loss_objective"], loss(td)["loss_objective"])


def test_the_lagged_reference_of_trust_pcl_ignores_stored_values():
    actor, prior = discrete_actor(3, 4), discrete_actor(3, 4, seed=3)
    loss = TrustPCLLoss(actor, value_net(3), kl_coef=0.5, rollout=2)  # EMA reference
    td = trajectory_batch(B=6, seed=8, terminal_only_reward=False)
    stored = _with_stored_prior(td, prior)
    stored["ref_log_prob"] = stored["ref_log_prob"] + 5.0
    torch.testing.assert_close(loss(stored)["loss_objective"], loss(td)["loss_objective"])
