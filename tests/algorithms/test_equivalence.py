"""RTB ⇔ Trust-PCL (Deleu et al. 2025): equal losses up to α² = 1/β², in value and in every gradient."""

from __future__ import annotations

import pytest
import torch
from loss_builders import continuous_actor, discrete_actor, trajectory_batch, value_net
from tensordict import TensorDict
from zarrl.algorithms import RTBLoss, TrustPCLLoss, rtb_from_trust_pcl, trust_pcl_from_rtb


def _grads(loss_module, td, params):
    for p in params:
        p.grad = None
    out = loss_module(td)
    out["loss_objective"].backward()
    return out["loss_objective"].detach(), [p.grad.clone() for p in params]


@pytest.mark.parametrize("beta", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_trust_pcl_equals_alpha_squared_rtb_in_value_and_gradients(beta, kind):
    if kind == "discrete":
        actor, prior = discrete_actor(3, 4, seed=0), discrete_actor(3, 4, seed=9)
        td = trajectory_batch(B=6, T=7, seed=int(beta * 10))
    else:
        actor, prior = continuous_actor(3, 2, seed=0), continuous_actor(3, 2, seed=9)
        td = trajectory_batch(B=6, T=7, seed=int(beta * 10), continuous=2)
    rtb = RTBLoss(actor, prior, beta=beta, log_z_init=0.7)
    tpcl = trust_pcl_from_rtb(rtb)
    params = [*actor.parameters(), rtb.log_z]
    assert all(p.dtype == torch.float64 for p in params)
    v_rtb, g_rtb = _grads(rtb, td, params)
    v_tp, g_tp = _grads(tpcl, td, params)
    alpha2 = 1.0 / beta**2
    assert abs(float(v_tp - alpha2 * v_rtb)) <= 1e-6 * abs(float(v_tp))
    for a, b in zip(g_tp, g_rtb):
        scale = b.abs().max().clamp(min=1e-300)
        assert float((a - alpha2 * b).abs().max() / (alpha2 * scale)) <= 1e-6
    # the prior is not trained by either loss
    assert all(p.grad is None for p in prior.parameters())


def test_equivalence_holds_on_flat_slices_with_is_init_marks():
    actor, prior = discrete_actor(3, 4, seed=0), discrete_actor(3, 4, seed=9)
    td = trajectory_batch(B=4, T=5, seed=3, lengths=[5, 5, 5, 5])
    flat = td.reshape(-1)
    del flat["collector"]
    rtb = RTBLoss(actor, prior, beta=0.5, log_z_init=-0.2)
    tpcl = trust_pcl_from_rtb(rtb)
    torch.testing.assert_close(
        tpcl(flat)["loss_objective"], 4.0 * rtb(flat)["loss_objective"], rtol=1e-10, atol=0
    )
    torch.testing.assert_close(rtb(flat)["loss_objective"], rtb(td)["loss_objective"])


def test_round_trip_keeps_beta_log_z_and_the_loss():
    actor, prior = discrete_actor(3, 4, seed=0), discrete_actor(3, 4, seed=9)
    td = trajectory_batch(seed=5)
    rtb = RTBLoss(actor, prior, beta=1.7, log_z_init=0.4)
    back = rtb_from_trust_pcl(
        trust_pcl_from_rtb(rtb), TensorDict({"observation": td["observation"][0, 0]}, [])
    )
    assert back.beta == pytest.approx(1.7)
    assert float(back.log_z.detach()) == pytest.approx(0.4)
    torch.testing.assert_close(back(td)["loss_objective"], rtb(td)["loss_objective"])


def test_trust_pcl_with_a_value_network_maps_to_rtb_with_log_z_from_v_s0():
    actor, prior, value = discrete_actor(3, 4), discrete_actor(3, 4, seed=9), value_net(3)
    loss = TrustPCLLoss(
        actor, value, reference_network=prior, kl_coef=0.5, rollout="full", window_starts="first"
    )
    s0 = TensorDict({"observation": torch.zeros(3, dtype=torch.float64)}, [])
    rtb = rtb_from_trust_pcl(loss, s0)
    v0 = value(s0.copy())["state_value"].detach()
    assert float(rtb.log_z.detach()) == pytest.approx(float(v0) / 0.5)
    assert rtb.beta == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kl_coef=0.5, rollout=3, window_starts="first"), "rollout must be 'full'"),
        (dict(kl_coef=0.5, rollout="full"), "window_starts must be 'first'"),
        (dict(kl_coef=0.5, rollout="full", window_starts="first", gamma=0.9), "gamma must be 1"),
        (
            dict(kl_coef=0.5, rollout="full", window_starts="first", entropy_coef=0.1),
            "entropy_coef must be 0",
        ),
    ],
)
def test_rtb_from_trust_pcl_names_the_setting_that_breaks_the_equivalence(kwargs, message):
    actor, prior, value = discrete_actor(3, 4), discrete_actor(3, 4, seed=9), value_net(3)
    loss = TrustPCLLoss(actor, value, reference_network=prior, **kwargs)
    with pytest.raises(ValueError, match=message):
        rtb_from_trust_pcl(loss)
    lagged = TrustPCLLoss(actor, value, kl_coef=0.5, rollout="full", window_starts="first")
    with pytest.raises(ValueError, match="fixed reference_network"):
        rtb_from_trust_pcl(lagged)
