"""The compiled diffusion-MLP kernels (sampler loop, output layer, backward) agree with the ATen
path, do not depend on the thread count, and step aside where they do not apply."""

from __future__ import annotations

import math

import pytest
import torch
from zarrl.envs.gmm_posterior import native_mlp
from zarrl.envs.gmm_posterior.native_mlp import (
    mlp_sample,
    native_mlp_available,
    native_mlp_supports,
)
from zarrl.envs.gmm_posterior.policy import SIGMA2, DiffusionActor, DriftNetwork, time_grid

pytestmark = [
    pytest.mark.skipif(
        not native_mlp_available(),
        reason="no C compiler with AVX2/FMA here: the ATen path is in use",
    ),
    pytest.mark.usefixtures("single_thread"),  # restores the thread count the tests change
]


def _nets(hidden: int = 64) -> tuple[DriftNetwork, DriftNetwork]:
    torch.manual_seed(0)
    post, prior = DriftNetwork(hidden=hidden), DriftNetwork(hidden=hidden)
    for net in (post, prior):
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.3)
    return post, prior.requires_grad_(False)


def _sample(post, prior, num=130, extra_std=0.3, seed=1):
    actor = DiffusionActor(post, extra_std=extra_std)
    gen = torch.Generator().manual_seed(seed)
    return actor, actor.sample_trajectories(num, reference=prior, generator=gen)


@pytest.fixture
def aten(monkeypatch):
    """Switch the kernels off for the duration (the ATen path then runs)."""

    def off():
        monkeypatch.setattr(native_mlp.library, "loaded", None)

    return off


@pytest.mark.parametrize("threads", [1, 2])
def test_the_sampler_matches_the_aten_path(threads, aten):
    torch.set_num_threads(threads)
    post, prior = _nets()
    _, fast = _sample(post, prior)
    aten()
    _, ref = _sample(post, prior)
    for key in ("observation", "action", "action_log_prob", "ref_log_prob", ("next", "reward")):
        torch.testing.assert_close(fast[key], ref[key], rtol=1e-4, atol=1e-4, msg=str(key))


def test_the_sampler_does_not_depend_on_the_thread_count():
    post, prior = _nets()
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        _, td = _sample(post, prior, num=200)
        tables = [t.clone() for t in post.sampled.reusable_tables if t is not None]
        results.append((td, tables))
    (td1, tables1), (td2, tables2) = results
    assert torch.equal(td1["action"], td2["action"])  # each row's arithmetic is the same
    assert torch.equal(td1["ref_log_prob"], td2["ref_log_prob"])
    assert len(tables1) == 4  # the first layer is recomputed by the backward pass, not kept
    for a, b in zip(tables1, tables2, strict=True):
        assert torch.equal(a, b)


def test_the_aten_backward_recomputes_the_first_layer_the_sampler_did_not_keep(aten):
    post, prior = _nets()
    actor, td = _sample(post, prior)
    weight = torch.randn(td.shape, generator=torch.Generator().manual_seed(3))
    lp = actor.batched_log_prob(td)  # reuses the sampler's four tables
    fast = torch.autograd.grad((lp * weight).sum(), list(post.parameters()))
    lp = actor.batched_log_prob(td)
    aten()  # the same graph's backward on the ATen path
    slow = torch.autograd.grad((lp * weight).sum(), list(post.parameters()))
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


@pytest.mark.parametrize("cached", [True, False])
def test_gradients_match_the_aten_backward(cached, aten):
    torch.set_num_threads(2)
    post, prior = _nets()
    actor, td = _sample(post, prior)
    if not cached:  # the tables are forgotten: the forward pass runs again
        post.sampled.forget()
    weight = torch.randn(td.shape, generator=torch.Generator().manual_seed(2))

    def grads():
        post.zero_grad()
        lp = actor.batched_log_prob(td)
        (lp * weight).sum().backward()
        return lp.detach(), [p.grad.clone() for p in post.parameters()]

    lp, g = grads()
    aten()
    post.sampled.forget()
    lp_ref, g_ref = grads()
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_a_network_of_another_width_uses_the_aten_path():
    post, prior = _nets(hidden=32)
    assert not native_mlp_supports(post)
    assert native_mlp_supports(_nets()[0])
    assert not native_mlp_supports(_nets()[0], torch.zeros(2, dtype=torch.float64))
    _, td = _sample(post, prior, num=5)
    assert td["action"].shape == (5, 100, 2) and torch.isfinite(td["ref_log_prob"]).all()


def test_misshapen_tables_are_refused_before_the_kernel_runs():
    post, _ = _nets()
    cond = post.time_embedding(time_grid(10)[:-1]).detach()
    noise = torch.randn(7, 10, 2)
    tables = [torch.empty(10, 7, 64) for _ in range(5)] + [torch.empty(10, 6, 64)]
    with pytest.raises(ValueError, match="activation tables must be contiguous"):
        mlp_sample(post, cond, noise, 0.1, tables)
    with pytest.raises(ValueError, match="drift table"):
        mlp_sample(post, cond, noise, 0.1, drift=torch.empty(10, 7, 3))


def test_the_reference_log_density_is_a_gaussian_of_the_prior_drift():
    post, prior = _nets()
    steps, dt = 10, 0.1
    cond = post.time_embedding(time_grid(steps)[:-1]).detach()
    cond_p = prior.time_embedding(time_grid(steps)[:-1]).detach()
    noise = 0.3 * torch.randn(60, steps, 2)
    std = math.sqrt(SIGMA2 * dt)
    with torch.no_grad():
        xs, ref_lp = mlp_sample(post, cond, noise, dt, reference=(prior, cond_p, std))
        x, nxt = xs[:-1], xs[1:]
        loc = x + dt * prior(x, time_grid(steps)[:-1].view(-1, 1, 1).expand(steps, 60, 1))
        expected = torch.distributions.Normal(loc, std).log_prob(nxt).sum(-1).t()
        drift = post(x, time_grid(steps)[:-1].view(-1, 1, 1).expand(steps, 60, 1))
    torch.testing.assert_close(ref_lp, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(nxt - x - noise.transpose(0, 1), dt * drift, rtol=1e-4, atol=1e-5)


def test_the_kernels_are_off_when_asked(monkeypatch):
    monkeypatch.setenv("ZARRL_NATIVE_MLP", "0")
    assert native_mlp.compile_library() is None


def _subnormal(t: torch.Tensor) -> bool:
    return bool(((t != 0) & (t.abs() < torch.finfo(torch.float32).tiny)).any())


def test_no_table_output_or_gradient_is_subnormal_for_pre_activations_up_to_1e4():
    torch.set_num_threads(2)
    post, prior = _nets()
    with torch.no_grad():  # first-layer pre-activations of ±1e4, a small output layer
        for net in (post, prior):
            net.time_mlp[2].weight.mul_(3e3)
            net.state_embed.weight.mul_(3e3)
            net.trunk[5].weight.mul_(1e-5)
    steps, num, dt = 10, 96, 0.1
    cond = post.time_embedding(time_grid(steps)[:-1]).detach()
    cond_p = prior.time_embedding(time_grid(steps)[:-1]).detach()
    noise = 0.3 * torch.randn(num, steps, 2)
    tables = [torch.empty(steps, num, 64) for _ in range(6)]
    drift = torch.empty(steps, num, 2)
    xs, ref_lp = mlp_sample(post, cond, noise, dt, tables, (prior, cond_p, 1.0), drift)
    pre = torch.mm(tables[3].view(-1, 64), post.trunk[3].weight.detach().t())
    assert float(pre.abs().max()) > 1e3 and float(pre.abs().min()) < 13  # limits and the tail
    assert bool((tables[4] == 0).any()) and bool((tables[4] == 1).any())  # GELU' limits
    assert torch.isfinite(xs).all() and torch.isfinite(ref_lp).all()
    for name, t in [("xs", xs), ("ref_lp", ref_lp), ("drift", drift), *zip("dadada", tables)]:
        assert not _subnormal(t), name
    rows = steps * num
    grads = native_mlp.mlp_backward(
        (post.trunk[5].weight, post.trunk[3].weight, post.trunk[1].weight),
        [t.view(rows, 64) for t in tables],
        xs[:-1].reshape(rows, 2),
        torch.randn(rows, 2) * 1e-3,
        steps,
        num,
    )
    for name, g in grads.items():
        assert torch.isfinite(g).all() and not _subnormal(g), name
    # flush-to-zero was set on the kernel's threads only while it ran: torch's threads (an
    # elementwise product of 2^16 values runs on both) compute subnormals again
    half_tiny = torch.full((1 << 16,), torch.finfo(torch.float32).tiny) * 0.5
    assert bool(((half_tiny > 0) & (half_tiny < torch.finfo(torch.float32).tiny)).all())
