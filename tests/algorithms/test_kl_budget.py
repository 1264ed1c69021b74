"""λ from a KL budget ε (Trust-PCL): the tuned λ meets the budget, the tuner keeps history and smooths."""

from __future__ import annotations

import pytest
import torch
from zarrl.algorithms import KLBudgetLambda, lambda_for_kl_budget, reweighted_kl


def test_reweighted_kl_matches_its_definition_and_decreases_in_lambda():
    g = torch.Generator().manual_seed(0)
    R = torch.randn(50, generator=g, dtype=torch.float64) * 10
    lam = 7.0
    w = (R / lam).softmax(0)
    want = float((w * (w * 50).log()).sum())
    assert float(reweighted_kl(R, lam)) == pytest.approx(want, rel=1e-12)
    kls = reweighted_kl(R, torch.tensor([1.0, 3.0, 10.0, 100.0]))
    assert torch.all(kls.diff() < 0)


@pytest.mark.parametrize("seed, scale, eps", [(0, 50.0, 0.002), (1, 5.0, 0.01), (2, 200.0, 0.0005)])
def test_tuned_lambda_meets_the_budget_within_one_percent(seed, scale, eps):
    g = torch.Generator().manual_seed(seed)
    returns = torch.randn(100, generator=g) * scale + torch.rand(100, generator=g) * scale
    lengths = torch.randint(50, 200, (100,), generator=g)
    lam = lambda_for_kl_budget(returns, lengths, eps)
    target = eps * lengths.double().mean()
    assert 0.0 < lam < 1000.0  # the bracket allows it
    kl = float(reweighted_kl(returns, lam))
    assert abs(kl - target) <= 0.01 * target


def test_bracket_end_is_returned_when_the_budget_cannot_be_met():
    returns = torch.tensor([0.0, 1e6, -1e6, 5e5])
    assert lambda_for_kl_budget(returns, torch.ones(4), 1e-6, max_lambda=10.0) == 10.0
    assert lambda_for_kl_budget(torch.zeros(5), torch.ones(5), 0.1) < 1e-6  # any λ fits


def test_tuner_uses_initial_lambda_until_enough_episodes_then_smooths():
    tuner = KLBudgetLambda(0.01, initial_lambda=500.0, min_episodes=8, smoothing=0.9)
    assert tuner.update([10.0] * 4, [100] * 4) == 500.0
    g = torch.Generator().manual_seed(0)
    returns, lengths = torch.randn(20, generator=g) * 30, torch.full((20,), 100.0)
    value = tuner.update(returns, lengths)
    raw = lambda_for_kl_budget(
        torch.tensor(list(tuner.returns)), torch.tensor(list(tuner.lengths)), 0.01
    )
    assert value == pytest.approx(0.9 * 500.0 + 0.1 * raw)
    state = tuner.state_dict()
    other = KLBudgetLambda(0.01)
    other.load_state_dict(state)
    assert other.value == value and list(other.returns) == list(tuner.returns)


def test_tuner_keeps_only_the_last_history_episodes():
    tuner = KLBudgetLambda(0.01, history=10)
    tuner.update(list(range(25)), [1] * 25)
    assert list(tuner.returns) == list(range(15, 25))


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="kl_budget"):
        lambda_for_kl_budget(torch.ones(3), torch.ones(3), 0.0)
    with pytest.raises(ValueError, match="as many returns as lengths"):
        lambda_for_kl_budget(torch.ones(3), torch.ones(2), 0.1)
    with pytest.raises(ValueError, match="differ in size"):
        KLBudgetLambda(0.1).update([1.0, 2.0], [1])
    with pytest.raises(ValueError, match="smoothing"):
        KLBudgetLambda(0.1, smoothing=1.0)
