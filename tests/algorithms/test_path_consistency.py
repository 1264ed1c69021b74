"""The vectorized path-consistency kernel against a naive per-window loop (float64)."""

from __future__ import annotations

import operator

import pytest
import torch
from loss_builders import discrete_actor, trajectory_batch, value_net
from zarrl.algorithms import TrustPCLLoss, path_consistency, segment_marks


def _random_batch(B: int = 7, T: int = 13, seed: int = 0, dtype=torch.float64) -> dict:
    g = torch.Generator().manual_seed(seed)
    reward = torch.randn(B, T, generator=g, dtype=dtype)
    log_prob = -torch.rand(B, T, generator=g, dtype=dtype) * 3
    ref_log_prob = -torch.rand(B, T, generator=g, dtype=dtype) * 3
    value = torch.randn(B, T, generator=g, dtype=dtype)
    next_value = torch.randn(B, T, generator=g, dtype=dtype)
    terminated = torch.rand(B, T, generator=g) < 0.12
    truncated = torch.rand(B, T, generator=g) < 0.08
    is_init = torch.rand(B, T, generator=g) < 0.05
    valid = torch.ones(B, T, dtype=torch.bool)
    if B >= 7 and T >= 10:
        valid[1, 9:] = False  # trailing padding
        valid[3, 4:7] = False  # padding in the middle of a row
        valid[5, :] = False  # an all-padding row in the middle of the batch
        terminated[2, 5] = True
        truncated[4, 6] = True
    return dict(
        reward=reward,
        log_prob=log_prob,
        ref_log_prob=ref_log_prob,
        value=value,
        next_value=next_value,
        terminated=terminated,
        truncated=truncated,
        valid=valid,
        is_init=is_init,
    )


def _naive(batch: dict, gamma, tau_h, lam, d, first_only: bool) -> torch.Tensor:
    """Every window summed term by term in float64 Python floats (NaN and inf propagate)."""
    cols = ("reward", "log_prob", "ref_log_prob", "value", "next_value")
    r, lp, rlp, V, NV = (batch[k].double().reshape(-1, batch[k].shape[-1]).tolist() for k in cols)
    term, trunc, valid, init = (
        batch[k].reshape(-1, batch[k].shape[-1]).tolist()
        for k in ("terminated", "truncated", "valid", "is_init")
    )
    B, T = len(r), len(r[0])
    powers = [gamma**n for n in range(T + 1)]
    out = [[0.0] * T for _ in range(B)]
    for b in range(B):
        x = [r[b][i] - (tau_h + lam) * lp[b][i] + lam * rlp[b][i] for i in range(T)]
        ends = [
            term[b][i] or trunc[b][i] or i == T - 1 or not valid[b][i + 1] or init[b][i + 1]
            for i in range(T)
        ]
        seg_end = list(range(T))
        for i in range(T - 2, -1, -1):
            if not ends[i]:
                seg_end[i] = seg_end[i + 1]
        for t in range(T):
            if not valid[b][t]:
                continue
            is_first = t == 0 or not valid[b][t - 1] or ends[t - 1] or init[b][t]
            if first_only and not is_first:
                continue
            k = seg_end[t] if d == "full" else min(seg_end[t], t + d - 1)
            n = k - t + 1
            total = -V[b][t] + sum(map(operator.mul, powers[:n], x[t : k + 1]))
            if not term[b][k]:
                total += powers[n] * NV[b][k]
            out[b][t] = total
    return torch.tensor(out, dtype=torch.float64).reshape(batch["reward"].shape)


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.5, 0.3])  # 1, 1, 2 and 4 blocks of steps
@pytest.mark.parametrize("first_only", [False, True])
def test_kernel_matches_naive_loop_for_every_rollout_length(gamma, first_only):
    batch = _random_batch()
    T = batch["reward"].shape[-1]
    for d in [*range(1, T + 1), "full"]:
        got = path_consistency(
            **batch,
            gamma=gamma,
            entropy_coef=0.3,
            kl_coef=0.7,
            rollout=d,
            window_starts="first" if first_only else "all",
        )
        want = _naive(batch, gamma, 0.3, 0.7, d, first_only)
        err = (got - want).abs().max() / want.abs().max()
        assert err <= 1e-10, (d, float(err))


def test_kernel_is_zero_on_padding_and_ignores_garbage_there():
    batch = _random_batch()
    valid = batch["valid"]
    ref = path_consistency(**batch, gamma=0.95, kl_coef=0.5, rollout=4)
    poisoned = dict(batch)
    for key in ("reward", "log_prob", "ref_log_prob", "value", "next_value"):
        poisoned[key] = torch.where(valid, batch[key], torch.full_like(batch[key], float("nan")))
    got = path_consistency(**poisoned, gamma=0.95, kl_coef=0.5, rollout=4)
    assert torch.equal(got, ref)
    assert torch.all(got[~valid] == 0)


def test_terminal_next_value_is_never_read():
    batch = _random_batch()
    nv = batch["next_value"].clone()
    nv[batch["terminated"]] = float("nan")
    got = path_consistency(**{**batch, "next_value": nv}, rollout="full", kl_coef=1.0)
    assert torch.isfinite(got).all()


def test_flat_slices_with_truncation_marks_equal_the_reshaped_layout():
    batch = _random_batch(B=4, T=10, seed=3)
    batch["valid"] = torch.ones(4, 10, dtype=torch.bool)
    batch["is_init"] = torch.zeros(4, 10, dtype=torch.bool)
    shaped = path_consistency(**batch, gamma=0.9, entropy_coef=0.1, kl_coef=0.2, rollout=5)
    flat = {k: v.reshape(1, -1) for k, v in batch.items()}
    flat["truncated"] = flat["truncated"].clone().reshape(4, 10)
    flat["truncated"][:, -1] = True  # SliceSampler marks every slice end
    flat["truncated"] = flat["truncated"].reshape(1, -1)
    got = path_consistency(**flat, gamma=0.9, entropy_coef=0.1, kl_coef=0.2, rollout=5)
    torch.testing.assert_close(got.reshape(4, 10), shaped, rtol=1e-12, atol=1e-12)
    # and the same with a 1-D batch (no leading dims)
    got_1d = path_consistency(
        **{k: v.reshape(-1) for k, v in flat.items()},
        gamma=0.9,
        entropy_coef=0.1,
        kl_coef=0.2,
        rollout=5,
    )
    torch.testing.assert_close(got_1d.reshape(4, 10), shaped, rtol=1e-12, atol=1e-12)


def test_float32_matches_float64_and_keeps_dtype_and_gradients():
    batch = _random_batch()
    b32 = {k: (v.float() if v.is_floating_point() else v) for k, v in batch.items()}
    b32["log_prob"] = b32["log_prob"].clone().requires_grad_()
    got = path_consistency(**b32, gamma=0.99, kl_coef=0.3, rollout=6)
    assert got.dtype == torch.float32
    want = path_consistency(**batch, gamma=0.99, kl_coef=0.3, rollout=6)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    got.sum().backward()
    assert b32["log_prob"].grad is not None and torch.isfinite(b32["log_prob"].grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_on_cuda_matches_cpu():
    batch = _random_batch()
    cpu = path_consistency(**batch, gamma=0.9, kl_coef=0.5, rollout=3)
    gpu = path_consistency(
        **{k: v.cuda() for k, v in batch.items()}, gamma=0.9, kl_coef=0.5, rollout=3
    )
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=1e-10)


def test_segment_marks_find_starts_and_ends():
    term = torch.tensor([[False, True, False, False, False]])
    trunc = torch.tensor([[False, False, False, True, False]])
    valid = torch.tensor([[True, True, True, True, False]])
    start, end, end_index = segment_marks(term, trunc, valid)
    assert start.tolist() == [[True, False, True, False, False]]
    assert end.tolist() == [[False, True, False, True, False]]
    assert end_index[0, :4].tolist() == [1, 1, 3, 3]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(value=torch.zeros(3, 4)), "value has shape"),
        (dict(ref_log_prob=None), "ref_log_prob is required"),
        (dict(rollout=0), "rollout must be"),
        (dict(rollout="all"), "rollout must be"),
        (dict(gamma=0.0), "gamma must be"),
        (dict(truncated=torch.zeros(7, 3, dtype=torch.bool)), "truncated has shape"),
    ],
)
def test_kernel_rejects_bad_input_with_a_clear_message(change, message):
    batch = _random_batch()
    kwargs = dict(gamma=0.9, kl_coef=0.5, rollout=2)
    for key in ("rollout", "gamma"):
        if key in change:
            kwargs[key] = change.pop(key)
    with pytest.raises(ValueError, match=message):
        path_consistency(**{**batch, **change}, **kwargs)


def test_long_flat_rows_stay_accurate_with_strong_discounting():
    """Discounts are anchored per segment: a flat row of 100 slices × 50 steps with γ = 0.8
    (γ^-5000 overflows float64) matches the reshaped [100, 50] batch."""
    batch = _random_batch(B=100, T=50, seed=11)
    batch["valid"] = torch.ones(100, 50, dtype=torch.bool)
    batch["valid"][7, 30:] = False
    batch["truncated"][:, -1] = True
    shaped = path_consistency(**batch, gamma=0.8, entropy_coef=0.1, kl_coef=0.2, rollout="full")
    flat = path_consistency(
        **{k: v.reshape(-1) for k, v in batch.items()},
        gamma=0.8,
        entropy_coef=0.1,
        kl_coef=0.2,
        rollout="full",
    )
    assert torch.isfinite(flat).all()
    err = (flat.reshape(100, 50) - shaped).abs().max() / shaped.abs().max()
    assert err <= 1e-10
    want = _naive(batch, 0.8, 0.1, 0.2, "full", False)
    assert (shaped - want).abs().max() / want.abs().max() <= 1e-10


def test_gradients_stay_finite_across_long_padding():
    batch = _random_batch(B=2, T=400, seed=12)
    batch["valid"] = torch.ones(2, 400, dtype=torch.bool)
    batch["valid"][0, 5:] = False  # 395 padded steps: γ^395 ≈ 1e-18 must never be divided by
    batch["value"] = batch["value"].clone().requires_grad_()
    c = path_consistency(**batch, gamma=0.9, kl_coef=0.1, rollout=3)
    c.pow(2).sum().backward()
    assert torch.isfinite(batch["value"].grad).all()


def _long_batch(T: int = 2000, seed: int = 21, dtype=torch.float64) -> dict:
    """Three rows of T steps: one terminal-ended episode; many segments (terminal, truncated and
    is_init ends, padding inside and after); one long episode cut by truncation (bootstrap)."""
    g = torch.Generator().manual_seed(seed)
    batch = _random_batch(B=3, T=T, seed=seed, dtype=dtype)
    terminated = torch.zeros(3, T, dtype=torch.bool)
    truncated = torch.zeros(3, T, dtype=torch.bool)
    is_init = torch.zeros(3, T, dtype=torch.bool)
    valid = torch.ones(3, T, dtype=torch.bool)
    terminated[0, -1] = True
    marks = torch.randperm(T - 1, generator=g)[:24]
    terminated[1, marks[:8]] = True
    truncated[1, marks[8:16]] = True
    is_init[1, marks[16:] + 1] = True
    valid[1, T // 3 : T // 3 + 37] = False
    valid[1, T - 111 :] = False
    truncated[2, -1] = True
    is_init[2, T // 2] = True
    batch.update(terminated=terminated, truncated=truncated, is_init=is_init, valid=valid)
    return batch


@pytest.mark.parametrize("gamma", [0.5, 0.8, 0.9, 0.99, 1.0])
def test_long_segments_match_the_loop_for_every_discount(gamma):
    """T = 2000 with episodes of up to 2000 steps: γ^−2000 overflows float64 for γ ≤ 0.7, so any
    weighting anchored at a segment start loses all precision; the error must stay at float64
    level (float32 inputs: their own rounding only)."""
    batch = _long_batch()
    b32 = {k: (v.float() if v.is_floating_point() else v) for k, v in batch.items()}
    for d in (1, 10, "full"):
        for window_starts in ("all", "first") if d == "full" else ("all",):
            kwargs = dict(
                gamma=gamma, entropy_coef=0.2, kl_coef=0.5, rollout=d, window_starts=window_starts
            )
            first = window_starts == "first"
            got = path_consistency(**batch, **kwargs)
            assert _rel_err(got, _naive(batch, gamma, 0.2, 0.5, d, first)) <= 1e-10, d
            got32 = path_consistency(**b32, **kwargs)
            assert got32.dtype == torch.float32
            assert _rel_err(got32, _naive(b32, gamma, 0.2, 0.5, d, first)) <= 1e-4, d


@pytest.mark.parametrize("gamma, rollout", [(0.5, 1), (0.9, 1), (0.9, "full"), (0.99, 10)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_trust_pcl_loss_on_one_long_episode_is_half_mean_squared_loop_residual(
    gamma, rollout, dtype, tol
):
    T = 2000
    actor = discrete_actor(3, 4, dtype=dtype)
    prior = discrete_actor(3, 4, seed=4, dtype=dtype)
    value = value_net(3, dtype=dtype)
    td = trajectory_batch(B=1, T=T, lengths=[T], terminal_only_reward=False, dtype=dtype)
    loss = TrustPCLLoss(
        actor, value, reference_network=prior, gamma=gamma, kl_coef=0.3, rollout=rollout
    )
    got = loss(td)["loss_objective"]
    with torch.no_grad():
        lp = actor.get_dist(td.copy()).log_prob(td["action"])
        rlp = prior.get_dist(td.copy()).log_prob(td["action"])
        v = value(td.copy())["state_value"].squeeze(-1)
        nv = value(td["next"].copy())["state_value"].squeeze(-1)
    batch = dict(
        reward=td["next", "reward"].squeeze(-1),
        log_prob=lp,
        ref_log_prob=rlp,
        value=v,
        next_value=nv,
        terminated=td["next", "terminated"].squeeze(-1),
        truncated=td["next", "truncated"].squeeze(-1),
        valid=td["collector", "mask"],
        is_init=td["is_init"].squeeze(-1),
    )
    want = 0.5 * _naive(batch, gamma, 0.0, 0.3, rollout, False).pow(2).mean()
    assert got.dtype == dtype
    assert abs(float(got.detach()) - float(want)) <= tol * float(want)


def test_non_finite_steps_spoil_only_the_windows_that_contain_them():
    """A flat row of several episodes: a NaN reward, ±inf log-probabilities, a NaN value and a NaN
    bootstrap value make exactly the windows that read them non-finite (as in the loop); every
    other window, before and after the bad steps and in later episodes, stays exact, and its
    gradient is finite."""
    batch = _long_batch(T=600, seed=5)
    flat = {k: v.reshape(1, -1) for k, v in batch.items()}
    flat["reward"][0, 40] = float("nan")
    flat["log_prob"][0, 700] = float("inf")
    flat["ref_log_prob"][0, 1500] = float("-inf")
    flat["value"][0, 900] = float("nan")
    boot_step = int((~flat["terminated"][0]).nonzero()[100])
    flat["next_value"][0, boot_step] = float("nan")
    flat["reward"] = flat["reward"].clone().requires_grad_()
    for gamma, d in ((0.9, 5), (0.5, "full"), (1.0, 30)):
        got = path_consistency(**flat, gamma=gamma, entropy_coef=0.1, kl_coef=0.4, rollout=d)
        want = _naive({k: v.detach() for k, v in flat.items()}, gamma, 0.1, 0.4, d, False)
        ok = torch.isfinite(want)
        assert (~ok).sum() >= 5 and ok.sum() > 1000
        assert torch.equal(torch.isfinite(got), ok), (gamma, d)
        assert torch.isnan(got[~ok]).all()
        assert _rel_err(got[ok], want[ok]) <= 1e-10, (gamma, d)
        (grad,) = torch.autograd.grad(got[ok].pow(2).sum(), flat["reward"])
        assert torch.isfinite(grad).all()
