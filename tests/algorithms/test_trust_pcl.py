"""TrustPCLLoss / PCLLoss: the loss is ½·mean C² of the kernel, gradients are routed as documented,
every batch layout and action type works, the lagged reference and λ tuning behave."""

from __future__ import annotations

import pytest
import torch
from loss_builders import continuous_actor, discrete_actor, trajectory_batch, value_net
from zarrl.algorithms import PCLLoss, TrustPCLLoss, path_consistency


def _manual_residual(td, actor, value, ref_actor, *, gamma, tau_h, lam, rollout, valid=True):
    lp = actor.get_dist(td.copy()).log_prob(td["action"])
    if lp.ndim > 2:
        lp = lp.sum(-1)
    with torch.no_grad():
        rlp = ref_actor.get_dist(td.copy()).log_prob(td["action"])
        if rlp.ndim > 2:
            rlp = rlp.sum(-1)
    v = value(td.copy())["state_value"].squeeze(-1)
    nv = value(td["next"].copy())["state_value"].squeeze(-1)
    return path_consistency(
        td["next", "reward"].squeeze(-1),
        lp,
        rlp,
        v,
        nv,
        terminated=td["next", "terminated"].squeeze(-1),
        truncated=td["next", "truncated"].squeeze(-1),
        valid=td["collector", "mask"] if valid else None,
        is_init=td["is_init"].squeeze(-1),
        gamma=gamma,
        entropy_coef=tau_h,
        kl_coef=lam,
        rollout=rollout,
    )


@pytest.mark.parametrize("kind", ["categorical", "one_hot", "continuous"])
@pytest.mark.parametrize("rollout", [1, 3, "full"])
def test_loss_is_half_mean_squared_residual_for_every_action_type(kind, rollout):
    if kind == "continuous":
        actor, prior = continuous_actor(3, 2), continuous_actor(3, 2, seed=4)
        td = trajectory_batch(continuous=2, terminal_only_reward=False)
    else:
        one_hot = kind == "one_hot"
        actor, prior = (
            discrete_actor(3, 4, one_hot=one_hot),
            discrete_actor(3, 4, one_hot=one_hot, seed=4),
        )
        td = trajectory_batch(one_hot=one_hot, terminal_only_reward=False)
    value = value_net(3)
    loss = TrustPCLLoss(
        actor,
        value,
        reference_network=prior,
        gamma=0.9,
        entropy_coef=0.05,
        kl_coef=0.3,
        rollout=rollout,
    )
    out = loss(td)
    c = _manual_residual(td, actor, value, prior, gamma=0.9, tau_h=0.05, lam=0.3, rollout=rollout)
    valid = td["collector", "mask"]
    want = 0.5 * c[valid].pow(2).mean()
    torch.testing.assert_close(out["loss_objective"], want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out["residual_abs"], c[valid].abs().mean().detach())
    assert out["num_windows"] == valid.sum()
    assert {"entropy", "kl_estimate", "kl_coef"} <= set(out.keys())


def test_critic_coef_scales_only_the_value_gradient_and_clipping_only_the_policy_gradient():
    actor, prior, value = discrete_actor(3, 4), discrete_actor(3, 4, seed=4), value_net(3)
    td = trajectory_batch(terminal_only_reward=False, seed=2)

    def grads(**kwargs):
        loss = TrustPCLLoss(actor, value, reference_network=prior, kl_coef=0.2, rollout=2, **kwargs)
        for p in [*actor.parameters(), *value.parameters()]:
            p.grad = None
        out = loss(td)
        out["loss_objective"].backward()
        return (
            out["loss_objective"].detach(),
            [p.grad.clone() for p in actor.parameters()],
            [p.grad.clone() for p in value.parameters()],
        )

    base_v, base_a, base_c = grads()
    v, a, c = grads(critic_coef=0.25)
    torch.testing.assert_close(v, base_v)
    for x, y in zip(a, base_a):
        torch.testing.assert_close(x, y)
    for x, y in zip(c, base_c):
        torch.testing.assert_close(x, 0.25 * y)
    # a clip wider than every residual changes nothing
    v, a, c = grads(advantage_clip=1e6)
    torch.testing.assert_close(v, base_v)
    for x, y in zip(a + c, base_a + base_c):
        torch.testing.assert_close(x, y)
    # a tiny clip ε: the policy gradient becomes ε·Σ sign(C)·∇C, the value gradient is untouched
    eps = 1e-4
    v, a, c = grads(advantage_clip=eps)
    torch.testing.assert_close(v, base_v)
    for x, y in zip(c, base_c):
        torch.testing.assert_close(x, y)
    residual = _manual_residual(td, actor, value, prior, gamma=1.0, tau_h=0.0, lam=0.2, rollout=2)
    valid = td["collector", "mask"]
    surrogate = (residual.detach().sign() * eps * residual)[valid].sum() / valid.sum()
    want = torch.autograd.grad(surrogate, list(actor.parameters()))
    for x, y in zip(a, want):
        torch.testing.assert_close(x, y)


def test_flat_slices_give_the_same_loss_as_the_reshaped_batch():
    actor, value = discrete_actor(3, 4), value_net(3)
    td = trajectory_batch(B=4, T=6, lengths=[6, 6, 6, 6], terminal_only_reward=False)
    td["next", "terminated"][:] = False  # slices cut from longer episodes
    td["next", "done"][:] = False
    td["next", "truncated"][:, -1] = True  # SliceSampler marks every slice end
    td["is_init"][:] = False
    loss = TrustPCLLoss(
        actor,
        value,
        reference_network=discrete_actor(3, 4, seed=2),
        kl_coef=0.1,
        gamma=0.95,
        rollout=4,
    )
    shaped = loss(td)["loss_objective"]
    flat = td.reshape(-1)
    torch.testing.assert_close(loss(flat)["loss_objective"], shaped)


def test_lagged_reference_starts_at_the_actor_and_follows_the_soft_update():
    actor, value = discrete_actor(3, 4), value_net(3)
    td = trajectory_batch(seed=1)
    loss = TrustPCLLoss(actor, value, kl_coef=0.5, reference_lag=0.9)
    updater = loss.make_target_updater()
    assert abs(float(loss(td)["kl_estimate"])) < 1e-12
    before = loss.target_actor_network_params.clone()
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(1.0)
    updater.step()
    for key, target in loss.target_actor_network_params.items(True, True):
        source = loss.actor_network_params.get(key)
        torch.testing.assert_close(target, 0.9 * before.get(key) + 0.1 * source.data)
    assert abs(float(loss(td)["kl_estimate"])) > 1e-3
    assert all(not t.requires_grad for t in loss.target_actor_network_params.values(True, True))


def test_bootstrap_from_target_reads_the_lagged_values():
    actor, value = discrete_actor(3, 4), value_net(3)
    td = trajectory_batch(lengths=[6, 6, 6, 6, 6], terminal_only_reward=False)
    td["next", "terminated"][:] = False
    td["next", "truncated"][:, -1] = True
    loss = TrustPCLLoss(actor, value, rollout=2, bootstrap_from_target=True)
    loss.make_target_updater()
    base = loss(td)["loss_objective"].detach()
    loss.target_value_network_params.apply_(lambda t: t.zero_())  # V_target ≡ 0
    changed = loss(td)["loss_objective"].detach()
    assert changed != base
    no_boot = TrustPCLLoss(actor, value, rollout=2)
    # with V_target = 0 the residual misses the γ^d·V(s_{t+d}) term of the online loss
    assert no_boot(td)["loss_objective"].detach() != changed


def test_pcl_is_trust_pcl_without_relative_entropy():
    actor, value = discrete_actor(3, 4), value_net(3)
    td = trajectory_batch(seed=6, terminal_only_reward=False)
    pcl = PCLLoss(actor, value, entropy_coef=0.2, rollout=3, gamma=0.9)
    tpcl = TrustPCLLoss(actor, value, entropy_coef=0.2, kl_coef=0.0, rollout=3, gamma=0.9)
    torch.testing.assert_close(pcl(td)["loss_objective"], tpcl(td)["loss_objective"])
    assert "kl_estimate" not in pcl(td)
    with pytest.raises(ValueError, match="entropy_coef > 0"):
        PCLLoss(actor, value, entropy_coef=0.0)


def test_update_lambda_moves_kl_coef_from_the_budget():
    actor, value = discrete_actor(3, 4), value_net(3)
    loss = TrustPCLLoss(
        actor, value, kl_budget=0.01, lambda_tuner_kwargs=dict(initial_lambda=50.0, smoothing=0.0)
    )
    assert float(loss.kl_coef) == 50.0
    g = torch.Generator().manual_seed(0)
    lam = loss.update_lambda(torch.randn(20, generator=g) * 30, torch.full((20,), 100))
    assert float(loss.kl_coef) == pytest.approx(lam) and lam != 50.0
    assert "kl_coef" in loss.state_dict()
    restored = TrustPCLLoss(actor, value, kl_budget=0.01)
    restored.load_state_dict(loss.state_dict())
    assert float(restored.kl_coef) == pytest.approx(lam)
    assert list(restored.lambda_tuner.returns) == list(loss.lambda_tuner.returns)
    fixed = TrustPCLLoss(actor, value, kl_coef=0.1)
    with pytest.raises(RuntimeError, match="kl_budget"):
        fixed.update_lambda([1.0], [1])


def test_set_keys_renames_the_entries_read():
    actor, value = discrete_actor(3, 4), value_net(3)
    td = trajectory_batch(seed=2)
    loss = TrustPCLLoss(actor, value, kl_coef=0.1)
    base = loss(td)["loss_objective"]
    td.rename_key_(("next", "reward"), ("next", "score"))
    with pytest.raises(KeyError, match="reward"):
        loss(td)
    loss.set_keys(reward="score")
    torch.testing.assert_close(loss(td)["loss_objective"], base)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kl_coef=0.1, kl_budget=0.01), "not both"),
        (dict(kl_coef=-1.0), "kl_coef must be >= 0"),
        (dict(rollout=0), "rollout must be"),
        (dict(gamma=1.5), "gamma must be"),
        (dict(advantage_clip=0.0), "advantage_clip"),
        (dict(reduction="max"), "reduction"),
        (dict(window_starts="some"), "window_starts"),
    ],
)
def test_constructor_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrustPCLLoss(discrete_actor(3, 4), value_net(3), **kwargs)


def test_forward_rejects_malformed_batches():
    loss = TrustPCLLoss(discrete_actor(3, 4), value_net(3), kl_coef=0.1)
    td = trajectory_batch()
    bad = td.clone()
    bad["next"].set("reward", torch.zeros(5, 6, 2, dtype=torch.float64), inplace=False)
    with pytest.raises(ValueError, match="reward"):
        loss(bad)
    no_next = td.exclude("next")
    with pytest.raises(KeyError, match="next"):
        loss(no_next)
    with pytest.raises(KeyError, match="action"):
        loss(td.exclude("action"))


def test_padded_slices_from_torchrl_slice_sampler():
    """SliceSampler(pad_output=True) returns a flat [B·T] batch with ("collector", "mask"): only
    the real steps start windows, and each slice equals the loss of its unpadded steps."""
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer

    lengths = [3, 9, 5, 12]
    episodes = [trajectory_batch(B=1, T=n, lengths=[n], seed=i)[0] for i, n in enumerate(lengths)]
    for i, ep in enumerate(episodes):
        ep["traj"] = torch.full((ep.shape[0],), i)
        ep.pop("collector")
    data = torch.cat(episodes)
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(100),
        sampler=SliceSampler(slice_len=6, traj_key="traj", strict_length=False, pad_output=True),
        batch_size=24,
    )
    rb.extend(data)
    batch = rb.sample()
    mask = batch["collector", "mask"].reshape(-1)
    assert not mask.all()  # the 3-step episode was padded
    actor, value, prior = discrete_actor(3, 4), value_net(3), discrete_actor(3, 4, seed=4)
    loss = TrustPCLLoss(actor, value, reference_network=prior, kl_coef=0.3, gamma=0.9, rollout=2)
    out = loss(batch)
    assert out["num_windows"] == mask.sum()
    # the same windows computed slice by slice on the real steps only
    per_slice = loss.__class__(
        actor, value, reference_network=prior, kl_coef=0.3, gamma=0.9, rollout=2, reduction="sum"
    )
    total = 0.0
    for row in batch.reshape(4, 6).unbind(0):
        real = row[row["collector", "mask"]]
        real = TensorDict({k: v for k, v in real.items() if k != "collector"}, real.batch_size)
        real["next", "truncated"][-1] = True
        total = total + per_slice(real)["loss_objective"]
    torch.testing.assert_close(out["loss_objective"], total / mask.sum())


def test_values_of_consecutive_steps_are_computed_once_per_state():
    actor, prior, value = discrete_actor(3, 4), discrete_actor(3, 4, seed=4), value_net(3)
    td = trajectory_batch(terminal_only_reward=False)  # next observation = the row's next step
    shapes = []
    value.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.batch_size)))
    loss = TrustPCLLoss(actor, value, reference_network=prior, gamma=0.9, kl_coef=0.3, rollout=3)
    shared = loss(td)["loss_objective"]
    assert shapes == [(5, 7)]  # T + 1 states, not 2T
    c = _manual_residual(td, actor, value, prior, gamma=0.9, tau_h=0.0, lam=0.3, rollout=3)
    valid = td["collector", "mask"]
    torch.testing.assert_close(shared, 0.5 * c[valid].pow(2).mean(), rtol=1e-10, atol=1e-12)
    broken = td.clone()
    broken["next", "observation"][:, 2] += 1.0  # no longer the next row's state
    shapes.clear()
    loss(broken)
    assert shapes == [(10, 6)]  # both sets of states, evaluated separately
