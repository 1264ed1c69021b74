"""Losses on sequence batches (RTB, Trust-PCL d-step and full, off-policy KL-REINFORCE), on
batches made by hand in the contract's layout, with a float64 policy (1e-10 separates equal
from wrong: a few hundred ulps of 2^-52 for these sums)."""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict
from zarrl.algorithms import (
    SequenceKLReinforceLoss,
    SequenceRTBLoss,
    SequenceTrustPCLLoss,
    sequence_rtb_from_trust_pcl,
    sequence_trust_pcl_from_rtb,
)
from zarrl.envs.generations import CausalTransformerPolicy

TOL64 = 1e-10


def _policy(seed: int = 0) -> CausalTransformerPolicy:
    g = torch.Generator().manual_seed(seed)
    model = CausalTransformerPolicy(5, d_model=16, num_heads=2, num_prompts=2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _batch(policy, n: int = 12, seed: int = 1) -> TensorDict:
    """Completions sampled by ``policy`` for two prompts, with a behaviour that is not the
    policy (its log-probs shifted), a stored reference and a log-reward."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.tensor([[0, 1, 2], [0, 3, 1]]).repeat(n // 2, 1)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]], dtype=torch.bool).repeat(n // 2, 1)
    out = policy.generate(prompts, mask, 4, 4, generator=g)
    rm = out["masks", "response"]
    out["prompt"] = torch.tensor([0, 1]).repeat(n // 2)
    noise = 0.3 * torch.rand(rm.shape, generator=g, dtype=torch.float64)
    out["log_probs", "behaviour"] = torch.where(rm, out["log_probs", "behaviour"] - noise, 0.0)
    out["log_probs", "ref"] = torch.where(
        rm, -torch.rand(rm.shape, generator=g, dtype=torch.float64) - 0.5, 0.0
    )
    out["log_reward"] = torch.randn(n, generator=g, dtype=torch.float64)
    return out


def test_rtb_delta_is_the_balance_of_each_completion():
    policy = _policy()
    batch = _batch(policy)
    beta = 1.7
    loss = SequenceRTBLoss(policy, beta=beta, reduction="none")
    with torch.no_grad():
        policy.log_z_head.table.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
    delta, _, _ = loss.balance(batch)
    m = batch["masks", "response"]
    log_q = policy.token_log_probs(batch)
    expected = (
        torch.tensor([0.3, -0.2], dtype=torch.float64)[batch["prompt"]]
        + (log_q - batch["log_probs", "ref"]).where(m, 0.0).sum(-1)
        - beta * batch["log_reward"]
    )
    assert (delta - expected).abs().max() < TOL64
    out = loss(batch)
    assert (out["loss_objective"] - 0.5 * expected.pow(2)).abs().max() < TOL64
    assert (batch["td_error"].double() - expected.abs()).abs().max() < 1e-6  # float32 priority


def test_trust_pcl_full_form_is_alpha_squared_rtb_values_and_gradients():
    policy = _policy()
    batch = _batch(policy)
    rtb = SequenceRTBLoss(policy, beta=2.5)
    tpcl = sequence_trust_pcl_from_rtb(rtb)
    alpha = 1 / 2.5
    a, b = rtb(batch.clone())["loss_objective"], tpcl(batch.clone())["loss_objective"]
    assert abs(float(alpha**2 * a - b)) < TOL64
    ga = torch.autograd.grad(a, list(rtb.parameters()), allow_unused=True)
    gb = torch.autograd.grad(b, list(tpcl.parameters()), allow_unused=True)
    pairs = [(x, y) for x, y in zip(ga, gb) if x is not None]
    assert pairs and all((alpha**2 * x - y).abs().max() < TOL64 for x, y in pairs)
    back = sequence_rtb_from_trust_pcl(tpcl)
    assert abs(float(back(batch.clone())["loss_objective"] - a)) < TOL64
    with pytest.raises(ValueError, match="rollout must be 'full'"):
        sequence_rtb_from_trust_pcl(SequenceTrustPCLLoss(policy, beta=2.5, rollout=2))


def test_trust_pcl_windows_match_a_direct_sum():
    """C(t) for d = 2 against the definition, window by window (loops allowed in the test)."""
    policy = _policy()
    batch = _batch(policy, n=6)
    beta, d = 0.8, 2
    lam = 1 / beta
    loss = SequenceTrustPCLLoss(policy, beta=beta, rollout=d, reduction="none")
    residual, starts, _, _ = loss.residuals(batch)
    log_q, value, _ = policy.score_with_heads(batch)
    ref = batch["log_probs", "ref"]
    m = batch["masks", "response"]
    for i in range(m.shape[0]):
        n = int(m[i].sum())
        r = torch.zeros(n, dtype=torch.float64)
        r[-1] = batch["log_reward"][i]
        for t in range(n):
            k = min(t + d - 1, n - 1)
            c = -value[i, t] + sum(
                r[j] - lam * log_q[i, j] + lam * ref[i, j] for j in range(t, k + 1)
            )
            if k < n - 1:
                c = c + value[i, k + 1]
            assert abs(float(residual[i, t] - c)) < TOL64
        assert bool(starts[i, :n].all()) and not bool(starts[i, n:].any())
    out = loss(batch)
    per_row = torch.stack([0.5 * residual[i][starts[i]].pow(2).mean() for i in range(m.shape[0])])
    assert (out["loss_objective"] - per_row).abs().max() < TOL64


def test_reference_model_scores_like_stored_reference():
    policy, prior = _policy(0), _policy(5)
    batch = _batch(policy)
    batch["log_probs", "ref"] = prior.token_log_probs(batch).detach()
    stored = SequenceRTBLoss(policy, beta=1.0)(batch.clone())["loss_objective"]
    without = batch.clone()
    del without["log_probs", "ref"]
    scored = SequenceRTBLoss(policy, prior, beta=1.0)(without)["loss_objective"]
    assert abs(float(stored - scored)) < TOL64
    with pytest.raises(KeyError, match="reference's log-probs"):
        SequenceRTBLoss(policy, beta=1.0)(without)
    assert not any(
        p.requires_grad
        for p in SequenceRTBLoss(policy, prior).prior_network_params.values(True, True)
    )


def test_kl_reinforce_weights_corrections_and_ess():
    policy = _policy()
    batch = _batch(policy)
    m = batch["masks", "response"]
    log_q = policy.token_log_probs(batch).detach()
    ratio = (log_q - batch["log_probs", "behaviour"]).where(m, 0.0)  # > 0: behaviour shifted down
    # on-policy data: every weight 1, ESS = B
    on = batch.clone()
    on["log_probs", "behaviour"] = log_q
    out = SequenceKLReinforceLoss(policy, beta=1.0, is_level="sequence")(on)
    assert abs(float(out["ess"]) - m.shape[0]) < 1e-9
    assert abs(float(out["is_weight_mean"]) - 1.0) < 1e-9
    # sequence-level weights truncated at is_max
    seq_w = ratio.sum(-1).exp()
    cap = float(seq_w.median())
    loss = SequenceKLReinforceLoss(policy, beta=1.0, is_level="sequence", is_max=cap)
    out = loss(batch.clone())
    used = seq_w.clamp(max=cap)
    expected_mean = (used.unsqueeze(-1) * m).sum() / m.sum()
    assert abs(float(out["is_weight_mean"] - expected_mean)) < 1e-9
    normalized = seq_w / seq_w.sum()
    assert abs(float(out["ess"] - 1 / normalized.pow(2).sum())) < 1e-9
    # token-level masking zeroes the tokens outside [is_min, is_max]
    tok_w = ratio.exp()
    lo, hi = 1.05, 1.2
    out = SequenceKLReinforceLoss(
        policy, beta=1.0, is_level="token", is_mode="mask", is_min=lo, is_max=hi
    )(batch.clone())
    kept = m & (tok_w >= lo) & (tok_w <= hi)
    assert abs(float(out["is_weight_mean"] - tok_w[kept].sum() / m.sum())) < 1e-9
    assert abs(float(out["is_clipped_fraction"]) - int((m & ~kept).sum()) / int(m.sum())) < 1e-9


def test_kl_reinforce_loss_is_the_weighted_score_function():
    """−mean Σ_t w·A_t·log π_t with A_t = R − b − λ·Σ_{i≥t}(log π − log π_ref)."""
    policy = _policy()
    batch = _batch(policy)
    beta = 2.0
    loss = SequenceKLReinforceLoss(policy, beta=beta, is_level="sequence", is_mode="none")
    out = loss(batch.clone())
    m = batch["masks", "response"]
    log_q = policy.token_log_probs(batch)
    kl = (log_q.detach() - batch["log_probs", "ref"]).where(m, 0.0)
    to_go = kl.flip(-1).cumsum(-1).flip(-1)
    seq_adv = batch["log_reward"] - kl.sum(-1) / beta
    adv = (batch["log_reward"] - seq_adv.mean()).unsqueeze(-1) - to_go / beta
    w = (log_q.detach() - batch["log_probs", "behaviour"]).where(m, 0.0).sum(-1).exp()
    expected = -(w.unsqueeze(-1) * adv * log_q.where(m, 0.0)).sum(-1).mean()
    assert abs(float(out["loss_objective"] - expected)) < TOL64


def test_bad_arguments_are_named():
    policy = _policy()
    with pytest.raises(ValueError, match="rollout must be"):
        SequenceTrustPCLLoss(policy, rollout=0)
    with pytest.raises(ValueError, match="is_level"):
        SequenceKLReinforceLoss(policy, is_level="word")
    with pytest.raises(ValueError, match="beta must be"):
        SequenceRTBLoss(policy, beta=0.0)
    with pytest.raises(TypeError, match="SequencePolicy"):
        SequenceRTBLoss(torch.nn.Linear(2, 2))
    batch = _batch(policy)
    del batch["log_reward"]
    with pytest.raises(KeyError, match="log_reward"):
        SequenceRTBLoss(policy)(batch)


def test_priority_weights_weigh_rows():
    policy = _policy()
    batch = _batch(policy)
    per_row = SequenceRTBLoss(policy, reduction="none")(batch.clone())["loss_objective"]
    w = torch.linspace(0.1, 2.0, batch.batch_size[0], dtype=torch.float64)
    batch["priority_weight"] = w
    mean = SequenceRTBLoss(policy)(batch.clone())["loss_objective"]
    assert abs(float(mean - (w * per_row).sum() / w.sum())) < TOL64
    copy.deepcopy(policy)  # the losses leave the policy a plain module
