"""The losses on prioritized replay (weights honoured, priorities fed back), on integer rewards,
on non-finite steps, and their errors for malformed settings and batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loss_builders import discrete_actor, trajectory_batch, value_net
from tensordict import TensorDict
from torchrl.data import (
    LazyTensorStorage,
    PrioritizedSliceSampler,
    TensorDictReplayBuffer,
)
from zarrl.algorithms import KLReinforceLoss, RTBLoss, TrustPCLLoss
from zarrl.algorithms._common import check_finite


def _trust_pcl(**kwargs):
    kwargs = {"kl_coef": 0.3, "gamma": 0.9, "rollout": 2, **kwargs}
    return TrustPCLLoss(
        discrete_actor(3, 4), value_net(3), reference_network=discrete_actor(3, 4, seed=4), **kwargs
    )


def _losses(reduction: str = "mean"):
    actor, prior = discrete_actor(3, 4), discrete_actor(3, 4, seed=3)
    return {
        "trust-pcl": _trust_pcl(reduction=reduction),
        "rtb": RTBLoss(actor, prior, beta=1.5, log_z_init=0.2, reduction=reduction),
        "kl-reinforce": KLReinforceLoss(actor, prior, beta=2.0),
    }


# -- prioritized replay ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["trust-pcl", "rtb", "kl-reinforce"])
def test_importance_weights_weight_the_mean_and_a_priority_is_written(name):
    loss = _losses()[name]
    td = trajectory_batch(B=5, T=6, seed=3, terminal_only_reward=False)
    plain = loss(td.clone())["loss_objective"]
    g = torch.Generator().manual_seed(0)
    row_w = torch.rand(5, 1, generator=g, dtype=torch.float64) + 0.1  # one weight per slice
    weighted = td.clone().set("priority_weight", row_w.expand(5, 6).clone())
    got = loss(weighted)["loss_objective"]
    # the weighted mean of the per-row losses (reduction="none" for the per-row terms)
    assert not torch.allclose(got, plain)
    uniform = td.clone().set("priority_weight", torch.full((5, 6), 3.0, dtype=torch.float64))
    torch.testing.assert_close(loss(uniform)["loss_objective"], plain)  # Σ w·ℓ / Σ w
    prio = weighted["td_error"]
    assert prio.shape == (5, 6) and (prio >= 0).all()
    valid = td["collector", "mask"]
    assert (prio[~valid] == 0).all() and (prio[valid] > 0).all()
    if name in ("trust-pcl", "rtb"):
        per_row = _losses(reduction="none")[name]
        terms = per_row(td.clone())["loss_objective"]
        rows = terms.sum(-1)
        n = (terms != 0).sum(-1) if name == "trust-pcl" else torch.ones(5)
        w = row_w.squeeze(-1) * n
        torch.testing.assert_close(got, (row_w.squeeze(-1) * rows).sum() / w.sum())


def test_rtb_writes_abs_delta_on_every_step_of_the_trajectory():
    loss = _losses()["rtb"]
    td = trajectory_batch(B=4, T=5, seed=2)
    delta = loss.trajectory_balance(td)[0][:, 0].detach().abs()
    loss(td)
    valid = td["collector", "mask"]
    want = torch.where(valid, delta[:, None].expand(4, 5), 0.0).float()
    torch.testing.assert_close(td["td_error"], want)


def test_prioritized_slice_sampler_end_to_end_weights_used_and_priorities_change():
    torch.manual_seed(0)  # the slices drawn (torch and numpy draws)
    np.random.seed(0)  # noqa: NPY002 (the sampler draws from numpy's global generator)
    episodes = []
    for i, n in enumerate([8, 8, 8, 8]):
        ep = trajectory_batch(B=1, T=n, lengths=[n], seed=i, terminal_only_reward=False)[0]
        ep["traj"] = torch.full((n,), i)
        ep.pop("collector")
        episodes.append(ep)
    data = torch.cat(episodes)
    sampler = PrioritizedSliceSampler(
        max_capacity=64, alpha=1.0, beta=1.0, slice_len=4, traj_key="traj", strict_length=True
    )
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(64), sampler=sampler, batch_size=16)
    rb.extend(data)
    before = sampler.state_dict()["_sum_tree"][torch.arange(32).numpy()].copy()
    assert np.allclose(before, before[0])  # all at the default priority
    loss = _trust_pcl()
    batch = rb.sample()
    loss(batch)
    rb.update_tensordict_priority(batch)  # the call a trainer makes after each loss
    state = sampler.state_dict()  # TorchRL's public state: the trees and eps
    after = state["_sum_tree"][torch.arange(32).numpy()]
    index = batch["index"].reshape(-1)
    written = batch["td_error"].reshape(-1).to(torch.float64) + state["_eps"]
    # the tree holds |C| + eps at every sampled step (a step in two overlapping slices keeps one
    # of its values); float32 is the tree's own storage
    rtol = 2 * torch.finfo(torch.float32).eps
    for step in index.unique():
        candidates = written[index == step]
        stored = float(after[int(step)])
        assert torch.isclose(
            candidates, torch.tensor(stored, dtype=torch.float64), rtol=rtol, atol=0.0
        ).any(), (int(step), stored, candidates)
    assert not np.allclose(after[index.numpy()], before[index.numpy()])
    untouched = np.setdiff1d(np.arange(32), index.numpy())
    assert np.allclose(after[untouched], before[untouched])
    # the next batch's weights differ between slices, and the loss is their weighted mean
    for _ in range(50):  # a batch of only untouched slices has equal weights: draw another
        batch = rb.sample()
        w = batch["priority_weight"]
        if not torch.allclose(w, w[0].expand_as(w)):
            break
    assert w.shape == (16,) and not torch.allclose(w, w[0].expand_as(w))
    weighted = loss(batch)["loss_objective"]
    unweighted = loss(batch.exclude("priority_weight"))["loss_objective"]
    assert not torch.allclose(weighted, unweighted)
    per_window = _trust_pcl(reduction="none")(batch.exclude("priority_weight"))["loss_objective"]
    w = w.to(per_window.dtype)
    torch.testing.assert_close(weighted, (w * per_window).sum() / w.sum())


# -- dtypes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["trust-pcl", "rtb", "kl-reinforce"])
@pytest.mark.parametrize("reward_dtype", [torch.int64, torch.bool])
def test_integer_and_bool_rewards_give_the_float_loss_and_a_gradient(name, reward_dtype):
    loss = _losses()[name]
    td = trajectory_batch(B=5, T=6, seed=5, terminal_only_reward=False)
    reward = (
        (td["next", "reward"] * 3).round().clamp(min=0, max=1 if reward_dtype == torch.bool else 9)
    )
    as_float = td.clone()
    as_float["next", "reward"] = reward
    as_int = td.clone()
    as_int["next"].set("reward", reward.to(reward_dtype), inplace=False)
    want = loss(as_float)["loss_objective"]
    got = loss(as_int)["loss_objective"]
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want)
    assert got.requires_grad


def test_a_float32_reward_with_float64_networks_computes_in_float64():
    loss = _trust_pcl()
    td = trajectory_batch(seed=1, terminal_only_reward=False)
    low = td.clone()
    low["next"].set("reward", td["next", "reward"].float(), inplace=False)
    out = loss(low)["loss_objective"]
    assert out.dtype == torch.float64
    exact = td.clone()
    exact["next", "reward"] = td["next", "reward"].float().double()
    torch.testing.assert_close(out, loss(exact)["loss_objective"], rtol=1e-12, atol=1e-12)


# -- non-finite steps -----------------------------------------------------------------------------
def test_check_finite_names_the_key_and_the_row():
    td = trajectory_batch(B=4, T=6, seed=2)
    td["next", "reward"][2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"'next', 'reward'.*\(2, 3\).*row 2, step 3"):
        check_finite(td, [("next", "reward")])
    for loss in _losses().values():
        loss.check_finite = True
        with pytest.raises(ValueError, match=r"reward.*row 2, step 3"):
            loss(td)
    stored = trajectory_batch(B=4, T=6, seed=2).set("ref_log_prob", torch.zeros(4, 6))
    stored["ref_log_prob"][1, 4] = float("-inf")
    loss = RTBLoss(discrete_actor(3, 4), discrete_actor(3, 4, seed=3), beta=1.0, check_finite=True)
    with pytest.raises(ValueError, match=r"log p \(prior\).*row 1, step 4"):
        loss(stored)


def test_a_nan_reward_spoils_only_the_windows_that_contain_it():
    td = trajectory_batch(B=2, T=8, lengths=[8, 8], terminal_only_reward=False, seed=1)
    td["next", "terminated"][0, 3] = True  # two episodes in row 0: steps 0-3 and 4-7
    td["is_init"][0, 4] = True
    td["next", "reward"][0, 1] = float("nan")
    flat = td.reshape(-1)
    loss = _trust_pcl(rollout=2, reduction="none")
    per_window = loss(flat)["loss_objective"].reshape(2, 8)
    nan = per_window.isnan()
    want = torch.zeros(2, 8, dtype=torch.bool)
    want[0, :2] = True  # the windows starting at steps 0 and 1 contain step 1
    assert torch.equal(nan, want), nan
    assert torch.isnan(flat["td_error"]).reshape(2, 8).equal(want)


def test_a_nan_reward_spoils_only_its_trajectory_in_the_kl_reinforce_sums():
    from zarrl.algorithms._common import segment_sum
    from zarrl.algorithms.path_consistency import segment_marks

    x = torch.arange(8, dtype=torch.float64).reshape(1, 8)
    term = torch.zeros(1, 8, dtype=torch.bool)
    term[0, 3] = term[0, 7] = True
    start, _, end_index = segment_marks(term)
    x[0, 1] = float("nan")
    total = segment_sum(x, start, end_index)
    assert total[0, 0].isnan() and total[0, 4] == 4 + 5 + 6 + 7
    assert (total[0, [1, 2, 3, 5, 6, 7]] == 0).all()


# -- clear errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kl_coef=torch.tensor([0.1, 0.2])), "kl_coef must be a scalar"),
        (dict(kl_coef=float("nan")), "kl_coef must be finite"),
        (dict(kl_coef=-0.1), "kl_coef must be >= 0"),
        (dict(entropy_coef=float("nan")), "entropy_coef must be finite"),
        (dict(entropy_coef=-1.0), "entropy_coef must be >= 0"),
        (dict(critic_coef=-1.0), "critic_coef must be >= 0"),
        (dict(gamma=float("nan")), "gamma must be finite"),
        (dict(advantage_clip=float("nan")), "advantage_clip must be finite"),
        (dict(reference_lag=float("nan")), "reference_lag must be finite"),
        (dict(rollout=True), "rollout must be"),
        (dict(rollout=np.bool_(True)), "rollout must be"),
        (dict(rollout=2.0), "rollout must be"),
    ],
)
def test_trust_pcl_names_a_bad_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrustPCLLoss(discrete_actor(3, 4), value_net(3), **kwargs)


def test_numpy_settings_are_accepted():
    td = trajectory_batch(seed=2, terminal_only_reward=False)
    base = _trust_pcl(rollout=3, kl_coef=0.3)(td)["loss_objective"]
    numpy = _trust_pcl(rollout=np.int64(3), kl_coef=np.array(0.3), gamma=np.float32(0.9))
    torch.testing.assert_close(numpy(td)["loss_objective"], base, rtol=1e-7, atol=1e-9)
    RTBLoss(discrete_actor(3, 4), discrete_actor(3, 4), beta=np.array([2.0]))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda a, p: RTBLoss(a, p, beta=float("nan")), "beta must be finite"),
        (lambda a, p: RTBLoss(a, p, beta=1.0, log_z_init=float("inf")), "log_z_init"),
        (lambda a, p: KLReinforceLoss(a, p, beta=float("nan")), "beta must be finite"),
        (lambda a, p: KLReinforceLoss(a, p, beta=1.0, penalty_coef=-1.0), "penalty_coef"),
        (
            lambda a, p: KLReinforceLoss(
                a, p, beta=1.0, mode="off_policy", is_temperature=float("nan")
            ),
            "is_temperature",
        ),
    ],
)
def test_rtb_and_kl_reinforce_name_a_bad_setting(build, message):
    with pytest.raises(ValueError, match=message):
        build(discrete_actor(3, 4), discrete_actor(3, 4, seed=3))


@pytest.mark.parametrize("name", ["trust-pcl", "rtb", "kl-reinforce"])
def test_a_batch_without_time_steps_is_named(name):
    td = trajectory_batch(B=3, T=4)[:, :0]
    with pytest.raises(ValueError, match="no time steps"):
        _losses()[name](td)


def test_trust_pcl_names_a_missing_next_observation():
    td = trajectory_batch(seed=1)
    td["next"] = td["next"].exclude("observation")
    with pytest.raises(KeyError, match=r"\('next', 'observation'\)"):
        _trust_pcl()(td)


def test_a_flat_batch_without_slice_marks_is_refused():
    td = trajectory_batch(B=3, T=4, lengths=[4, 4, 4], terminal_only_reward=False)
    td["next", "terminated"][:] = False
    td["next", "done"][:] = False
    flat = td.reshape(-1)
    bare = TensorDict(
        {
            "observation": flat["observation"],
            "action": flat["action"],
            "next": flat["next"].select("observation", "reward", "terminated"),
        },
        batch_size=flat.batch_size,
    )
    with pytest.raises(ValueError, match="flat \\[N\\] batch needs"):
        _trust_pcl()(bare)
    # with the buffer's storage indices, a jump between two slices needs a mark
    indexed = flat.exclude("is_init").set("index", torch.tensor([*range(4), *range(10, 18)]))
    indexed["next", "truncated"][:] = False
    indexed["next", "truncated"][7] = True  # marks the slice end at step 7 but not at step 3
    with pytest.raises(ValueError, match="steps 3 and 4"):
        _trust_pcl()(indexed)
    indexed["next", "truncated"][3] = True
    _trust_pcl()(indexed)


@pytest.mark.parametrize("name", ["trust-pcl", "rtb", "kl-reinforce"])
def test_a_fully_padded_batch_gives_zero(name):
    td = trajectory_batch(B=3, T=4)
    td["collector", "mask"][:] = False
    out = _losses()[name](td)["loss_objective"]
    assert out == 0 and not out.isnan()
    out.backward()


# -- the declared scoring interface ---------------------------------------------------------------
def test_a_policy_implementing_batched_log_prob_is_scored_through_it():
    from zarrl.algorithms import BatchedLogProb
    from zarrl.envs.gmm_posterior import DiffusionActor, DriftNetwork

    actor = discrete_actor(3, 4)
    assert not isinstance(actor, BatchedLogProb)
    assert isinstance(DiffusionActor(DriftNetwork()), BatchedLogProb)

    calls = []

    class Hooked(type(actor)):
        shift = 0.0

        def batched_log_prob(self, td, action_key=None):
            calls.append(tuple(td.batch_size))
            return self.get_dist(td).log_prob(td[action_key or "action"]) + self.shift

    hooked = discrete_actor(3, 4)
    hooked.__class__ = Hooked
    assert isinstance(hooked, BatchedLogProb)
    td = trajectory_batch(B=3, T=4, seed=1)
    prior = discrete_actor(3, 4, seed=3)
    plain = RTBLoss(discrete_actor(3, 4), prior, beta=1.0).trajectory_balance(td)[0][:, 0]
    loss = RTBLoss(hooked, prior, beta=1.0)
    same = loss.trajectory_balance(td)[0][:, 0]
    assert calls and calls[0] == (3, 4)  # one call for the whole [B, T] batch
    torch.testing.assert_close(same, plain)
    Hooked.shift = -0.5  # the residual moves by the hook's value on every valid step
    moved = loss.trajectory_balance(td)[0][:, 0]
    steps = td["collector", "mask"].sum(-1).to(moved.dtype)
    torch.testing.assert_close(moved - plain, -0.5 * steps)
