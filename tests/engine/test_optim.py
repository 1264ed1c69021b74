"""Adam groups named by the module that owns each parameter of a loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zarrl.algorithms import RTBLoss, TrustPCLLoss, trust_pcl_from_rtb
from zarrl.engine.config import EnvConfig, ModelConfig
from zarrl.engine.optim import parameter_groups
from zarrl.engine.tasks import build_task

LRS = {"policy": 1e-3, "value": 2e-3, "log_z": 3e-2}


def _task():
    return build_task(EnvConfig(task="sequence", name="tree"), ModelConfig())


def _names(loss, groups):
    ids = {id(p): n for n, p in loss.named_parameters()}
    return {g["name"]: ([ids[id(p)] for p in g["params"]], g["lr"]) for g in groups}


def test_groups_follow_the_owning_module_and_leave_frozen_networks_out():
    task = _task()
    rtb = RTBLoss(task.build_actor(), task.build_prior(), beta=1.0)
    groups = _names(rtb, parameter_groups(rtb, LRS))
    assert groups["log_z"] == (["log_z"], 3e-2)
    assert all(n.startswith("actor_network_params.") for n in groups["policy"][0])
    assert set(groups) == {"policy", "log_z"}  # the prior is frozen: no group
    tpcl = TrustPCLLoss(task.build_actor(), task.build_value(), kl_coef=0.5)
    groups = _names(tpcl, parameter_groups(tpcl, LRS))
    assert groups["value"][1] == 2e-3 and groups["value"][0][0].startswith("value_network_params")
    # Trust-PCL built from RTB: its value network is α·log Z, optimized as log Z is in RTB
    equivalent = trust_pcl_from_rtb(rtb)
    groups = _names(equivalent, parameter_groups(equivalent, LRS))
    assert groups["log_z"] == (["value_network_params.log_z"], 3e-2)
    assert "value" not in groups


def test_a_parameter_of_an_unknown_owner_is_refused_by_name():
    task = _task()
    loss = RTBLoss(task.build_actor(), task.build_prior(), beta=1.0)
    loss.temperature = nn.Parameter(torch.ones(()))
    with pytest.raises(ValueError, match="'temperature' of RTBLoss is owned by 'temperature'"):
        parameter_groups(loss, LRS)
