"""Behaviour policies for collection: the uniform-random policy used for warm-up and
``zarrl collect --policy random``, with the same keys as the learned policy."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchrl.modules import ProbabilisticActor
from zarrl.engine.models import StateIndependentScale, TabularLogits

__all__ = ["TRAJ_KEY", "next_trajectory_id", "uniform_policy_like"]

TRAJ_KEY = ("collector", "traj_ids")  # written by TorchRL collectors
SCAN_ROWS = 65_536


@torch.no_grad()
def uniform_policy_like(actor: ProbabilisticActor) -> ProbabilisticActor:
    """A copy of ``actor`` whose output ignores the observation: uniform logits for discrete
    actions (a policy table's rows zeroed), ``loc = 0`` and unit scale before the tanh squashing for continuous ones.

    It writes the same keys (``action``, ``action_log_prob``, distribution parameters), so the
    rows it collects share the buffer's schema with the learned policy's rows.
    """
    random_actor = copy.deepcopy(actor)
    tables = [m for m in random_actor.modules() if isinstance(m, TabularLogits)]
    if tables:  # a policy table: equal logits in every state
        for table in tables:
            table.weight.zero_()
        for param in random_actor.parameters():
            param.requires_grad_(False)
        return random_actor
    last_linear = None
    for module in random_actor.modules():
        if isinstance(module, nn.Linear):
            last_linear = module
        if isinstance(module, StateIndependentScale):
            module.log_std.zero_()
    if last_linear is None:
        raise ValueError("uniform_policy_like: the actor holds no linear layer to zero")
    last_linear.weight.zero_()
    if last_linear.bias is not None:
        last_linear.bias.zero_()
    for param in random_actor.parameters():
        param.requires_grad_(False)
    return random_actor


def next_trajectory_id(storage) -> int:
    """One more than the largest trajectory id in ``storage`` (0 when empty or without ids).

    A new collector numbers its trajectories from 0; offsetting them by this value keeps them from
    merging with stored trajectories in the slice sampler. Reads the id column in blocks (a
    storage held elsewhere, e.g. in a Ray actor, answers with its own ``next_trajectory_id()``).
    """
    remote = getattr(storage, "next_trajectory_id", None)
    if callable(remote):
        return int(remote())
    n = len(storage)
    if n == 0 or TRAJ_KEY not in storage[n - 1 : n].keys(include_nested=True):
        return 0
    largest = 0
    for start in range(0, n, SCAN_ROWS):
        ids = storage[start : min(n, start + SCAN_ROWS)].get(TRAJ_KEY)
        largest = max(largest, int(ids.max()))
    return largest + 1
