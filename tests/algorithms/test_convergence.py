"""Learning from a fixed buffer of uniform-behaviour trajectories on a small tree MDP reaches the
exact KL-regularized optimum computed by soft value iteration (terminal distribution within TV 0.02)."""

from __future__ import annotations

import pytest
import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer
from torchrl.modules import ProbabilisticActor
from zarrl.algorithms import KLReinforceLoss, PCLLoss, RTBLoss, TrustPCLLoss
from zarrl.envs import (
    make_synthetic_tree_env,
    random_log_policy,
    solve_soft_optimal,
    terminal_log_prob,
)

VOCAB, LENGTH, NUM_TRAJ = 3, 3, 3000
TV_TOL = 0.02


class Table(nn.Module):
    """One row of parameters per tree node."""

    def __init__(self, num_nodes: int, width: int, init: torch.Tensor | None = None):
        super().__init__()
        weight = torch.zeros(num_nodes, width) if init is None else init.clone().float()
        self.weight = nn.Parameter(weight)

    def forward(self, node: torch.Tensor) -> torch.Tensor:
        return self.weight[node]


def tabular_actor(num_nodes: int, init=None) -> ProbabilisticActor:
    module = TensorDictModule(Table(num_nodes, VOCAB, init), in_keys=["node"], out_keys=["logits"])
    return ProbabilisticActor(
        module,
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )


def tabular_value(num_nodes: int) -> TensorDictModule:
    return TensorDictModule(Table(num_nodes, 1), in_keys=["node"], out_keys=["state_value"])


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    env, tree, reward = make_synthetic_tree_env(
        VOCAB, LENGTH, seed=7, reward_scale=1.0, batch_size=(NUM_TRAJ,)
    )
    data = env.rollout(LENGTH)  # uniform random actions: the behaviour policy
    data["action_log_prob"] = torch.full(data.shape, -float(torch.log(torch.tensor(VOCAB))))
    prior_log = random_log_policy(tree, seed=3, temperature=0.7)
    return tree, reward, data, prior_log


def _tv(tree, log_policy_table, exact) -> float:
    learned = terminal_log_prob(tree, log_policy_table.log_softmax(-1)).exp()
    tv = 0.5 * float((learned - exact.terminal_prob)[tree.terminal].abs().sum())
    print(f"TV = {tv:.4f}")
    return tv


def _train(loss, params, batches, steps, lr):
    opt = torch.optim.Adam(params, lr=lr)
    for i in range(steps):
        td = batches(i)
        out = loss(td)
        total = sum(v for k, v in out.items() if k.startswith("loss_"))
        opt.zero_grad()
        total.backward()
        opt.step()


def _full(data):
    return lambda i: data


@pytest.mark.parametrize("rollout", [1, "full"])
def test_trust_pcl_reaches_the_exact_optimum_off_policy(problem, rollout):
    tree, reward, data, prior_log = problem
    tau_h, lam = 0.1, 0.5
    exact = solve_soft_optimal(tree, reward, prior_log, entropy_coef=tau_h, kl_coef=lam)
    actor, value = tabular_actor(tree.num_nodes), tabular_value(tree.num_nodes)
    prior = tabular_actor(tree.num_nodes, init=prior_log)
    loss = TrustPCLLoss(
        actor, value, reference_network=prior, entropy_coef=tau_h, kl_coef=lam, rollout=rollout
    )
    if rollout == 1:
        # sub-trajectories of 2 steps from TorchRL's SliceSampler, flattened with truncation marks
        rb = TensorDictReplayBuffer(
            storage=LazyTensorStorage(data.numel()),
            sampler=SliceSampler(slice_len=2, end_key=("next", "done")),
            batch_size=2048,
        )
        rb.extend(data.reshape(-1))
        _train(loss, loss.parameters(), lambda i: rb.sample(), 200, 0.1)
    else:
        _train(loss, loss.parameters(), _full(data), 200, 0.1)
    assert _tv(tree, actor.module[0].module.weight.detach(), exact) < TV_TOL


def test_pcl_reaches_its_entropy_regularized_optimum(problem):
    tree, reward, data, _ = problem
    tau_h = 0.5
    exact = solve_soft_optimal(tree, reward, entropy_coef=tau_h, kl_coef=0.0)
    actor, value = tabular_actor(tree.num_nodes), tabular_value(tree.num_nodes)
    loss = PCLLoss(actor, value, entropy_coef=tau_h, rollout=2)
    _train(loss, loss.parameters(), _full(data), 200, 0.1)
    assert _tv(tree, actor.module[0].module.weight.detach(), exact) < TV_TOL


def test_rtb_reaches_prior_times_reward_to_the_beta(problem):
    tree, reward, data, prior_log = problem
    beta = 2.0
    exact = solve_soft_optimal(tree, reward, prior_log, kl_coef=1.0 / beta)
    actor = tabular_actor(tree.num_nodes)
    prior = tabular_actor(tree.num_nodes, init=prior_log)
    loss = RTBLoss(actor, prior, beta=beta)
    _train(loss, loss.parameters(), _full(data), 200, 0.1)
    assert _tv(tree, actor.module[0].module.weight.detach(), exact) < TV_TOL
    # log Z = log Σ_x p(x)·r(x)^β = root value / λ
    assert abs(float(loss.log_z.detach()) - float(exact.value[0]) * beta) < 0.05


def test_off_policy_kl_reinforce_reaches_the_same_target(problem):
    tree, reward, data, prior_log = problem
    beta = 2.0
    exact = solve_soft_optimal(tree, reward, prior_log, kl_coef=1.0 / beta)
    actor = tabular_actor(tree.num_nodes)
    prior = tabular_actor(tree.num_nodes, init=prior_log)
    # plain self-normalized importance weights (temperature 1): unbiased fixed point
    loss = KLReinforceLoss(actor, prior, beta=beta, mode="off_policy", is_temperature=1.0)
    _train(loss, loss.parameters(), _full(data), 300, 0.1)
    assert _tv(tree, actor.module[0].module.weight.detach(), exact) < TV_TOL


def test_original_uncorrected_baseline_misses_the_target(problem):
    """The reproduction-only baseline (raw reward, squared log-ratio penalty) has another optimum."""
    tree, reward, data, prior_log = problem
    beta = 2.0
    exact = solve_soft_optimal(tree, reward, prior_log, kl_coef=1.0 / beta)
    actor = tabular_actor(tree.num_nodes, init=prior_log)
    prior = tabular_actor(tree.num_nodes, init=prior_log)
    loss = KLReinforceLoss(actor, prior, beta=beta, mode="original")
    env, _, _ = make_synthetic_tree_env(VOCAB, LENGTH, seed=7, batch_size=(1024,))
    opt = torch.optim.Adam(loss.parameters(), lr=0.1)
    for _ in range(150):
        with torch.no_grad():
            batch = env.rollout(LENGTH, policy=actor)
        out = loss(batch)
        opt.zero_grad()
        out["loss_objective"].backward()
        opt.step()
    assert _tv(tree, actor.module[0].module.weight.detach(), exact) > 0.1
