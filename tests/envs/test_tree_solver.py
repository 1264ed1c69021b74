"""The exact soft-optimal solver on enumerable sequence trees."""

from __future__ import annotations

import pytest
import torch
from zarrl.envs.tree_solver import (
    SequenceTree,
    TabularReward,
    level_offsets,
    random_log_policy,
    solve_soft_optimal,
    synthetic_tree_rewards,
    terminal_log_prob,
    uniform_log_policy,
)


@pytest.fixture(params=[None, 1], ids=["fixed_length", "end_token"])
def tree(request):
    return SequenceTree(vocab_size=3, max_length=4, end_token=request.param)


def test_tree_counts_terminals_and_node_ids_round_trip(tree):
    V, L = 3, 4
    assert tree.num_nodes == sum(V**k for k in range(L + 1))
    if tree.end_token is None:
        assert int(tree.terminal.sum()) == V**L
    else:  # sequences ending with the end token at 1..L-1, plus full-length ones without it before
        assert (
            int(tree.terminal.sum())
            == sum((V - 1) ** (k - 1) for k in range(1, L)) + (V - 1) ** (L - 1) * V
        )
    ids = torch.arange(tree.num_nodes)
    assert torch.equal(tree.node_index(tree.tokens, tree.length), ids)
    parent_of_child = tree.child[tree.internal]
    assert torch.equal(
        tree.length[parent_of_child], (tree.length[tree.internal] + 1)[:, None].expand(-1, V)
    )


def test_terminal_paths_follow_the_child_table(tree):
    nodes, actions, lengths, leaves = tree.terminal_paths()
    for m in range(0, len(leaves), 7):
        n = int(lengths[m])
        for t in range(n - 1):
            assert tree.child[nodes[m, t], actions[m, t]] == nodes[m, t + 1]
        assert tree.child[nodes[m, n - 1], actions[m, n - 1]] == leaves[m]
        assert bool(tree.internal[nodes[m, :n]].all())


@pytest.mark.parametrize("tau_h, lam, gamma", [(0.0, 0.7, 1.0), (0.3, 0.5, 0.9), (0.4, 0.0, 1.0)])
def test_optimal_policy_satisfies_path_consistency_on_every_path(tree, tau_h, lam, gamma):
    reward = synthetic_tree_rewards(tree, seed=1, scale=2.0)
    ref = random_log_policy(tree, seed=2)
    sol = solve_soft_optimal(tree, reward, ref, entropy_coef=tau_h, kl_coef=lam, gamma=gamma)
    nodes, actions, lengths, leaves = tree.terminal_paths()
    L = tree.max_length
    inside = actions >= 0
    n = nodes.clamp(min=0)
    a = actions.clamp(min=0)
    lp = sol.log_policy[n, a]
    rlp = ref[n, a]
    # reward on the last step only
    last = torch.nn.functional.one_hot(lengths - 1, L).bool()
    r = torch.where(last, reward[leaves][:, None], torch.zeros(()))
    x = torch.where(inside, r - (tau_h + lam) * lp + lam * rlp, torch.zeros(()))
    # every window (t, k) along every root-to-leaf path
    for t in range(L):
        for k in range(t, L):
            ok = inside[:, k]
            disc = gamma ** torch.arange(k - t + 1, dtype=torch.float64)
            total = -sol.value[n[:, t]] + (x[:, t : k + 1] * disc).sum(1)
            child = tree.child[n[:, k], a[:, k]]
            boot = torch.where(tree.terminal[child], torch.zeros(()), sol.value[child])
            total = total + gamma ** (k - t + 1) * boot
            if ok.any():
                assert total[ok].abs().max() < 1e-9, (t, k)


def test_terminal_distribution_is_reference_times_exp_reward_over_lambda(tree):
    reward = synthetic_tree_rewards(tree, seed=3, scale=1.5)
    ref = random_log_policy(tree, seed=4)
    lam = 0.8
    sol = solve_soft_optimal(tree, reward, ref, kl_coef=lam)
    ref_terminal = terminal_log_prob(tree, ref)
    want = torch.where(
        tree.terminal, ref_terminal + reward / lam, torch.full_like(reward, -torch.inf)
    )
    want = want.log_softmax(0)
    assert torch.allclose(sol.terminal_log_prob[tree.terminal], want[tree.terminal], atol=1e-10)
    assert abs(float(sol.terminal_prob.sum()) - 1.0) < 1e-12
    # the root value is λ·log Z
    log_z = torch.logsumexp(ref_terminal[tree.terminal] + reward[tree.terminal] / lam, 0)
    assert abs(float(sol.value[0] - lam * log_z)) < 1e-10


def test_entropy_only_optimum_is_boltzmann_over_sequences():
    tree = SequenceTree(3, 3)
    reward = synthetic_tree_rewards(tree, seed=5)
    sol = solve_soft_optimal(tree, reward, entropy_coef=0.5, kl_coef=0.0)
    want = (reward[tree.terminal] / 0.5).softmax(0)
    assert torch.allclose(sol.terminal_prob[tree.terminal], want, atol=1e-12)


def test_uniform_reference_gives_uniform_policy_when_rewards_vanish(tree):
    sol = solve_soft_optimal(tree, torch.zeros(tree.num_nodes, dtype=torch.float64), kl_coef=1.0)
    assert torch.allclose(sol.log_policy[tree.internal], uniform_log_policy(tree)[tree.internal])


def test_solver_and_tree_reject_bad_input():
    with pytest.raises(ValueError, match="vocab_size"):
        SequenceTree(1, 3)
    with pytest.raises(ValueError, match="end_token"):
        SequenceTree(3, 3, end_token=3)
    with pytest.raises(ValueError, match="enumerated"):
        SequenceTree(50, 6)
    tree = SequenceTree(3, 2)
    with pytest.raises(ValueError, match="terminal_reward has shape"):
        solve_soft_optimal(tree, torch.zeros(3))
    with pytest.raises(ValueError, match="ref_log_policy has shape"):
        solve_soft_optimal(tree, torch.zeros(tree.num_nodes), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="positive sum"):
        solve_soft_optimal(tree, torch.zeros(tree.num_nodes), entropy_coef=0.0, kl_coef=0.0)
    with pytest.raises(ValueError, match="table has shape"):
        TabularReward(tree, torch.zeros(2))


@pytest.mark.parametrize(
    ("args", "message"),
    [((1, 3, None), "vocab_size"), ((3, 0, None), "max_length"), ((3, 3, 3), "end_token")],
)
def test_tree_and_env_refuse_the_same_bad_shape_naming_the_argument(args, message):
    from zarrl.envs import SequenceEnv

    with pytest.raises(ValueError, match=message):
        SequenceTree(*args)
    with pytest.raises(ValueError, match=message):
        SequenceEnv(args[0], args[1], lambda tokens, length: length.float(), end_token=args[2])


def test_level_offsets_count_the_prefixes_of_each_length():
    assert level_offsets(3, 2).tolist() == [0, 1, 4, 13]
    assert SequenceTree(3, 2).num_nodes == 13
