"""Tests for zarrl.envs.gmm_posterior.env: specs, dynamics, reward, and collection into a replay buffer."""

from __future__ import annotations

import pytest
import torch
from torchrl.collectors import Collector
from torchrl.data import ReplayBuffer
from torchrl.envs.utils import check_env_specs
from zarrl.buffers import ZarrStorage
from zarrl.envs.gmm_posterior.env import DiffusionSamplerEnv
from zarrl.envs.gmm_posterior.mixtures import log_reward
from zarrl.envs.gmm_posterior.policy import DiffusionActor, DriftNetwork

pytestmark = pytest.mark.usefixtures("single_thread")


def _actor(seed: int = 0, extra_std: float = 0.0) -> DiffusionActor:
    torch.manual_seed(seed)
    net = DriftNetwork()
    torch.nn.init.normal_(net.trunk[-1].weight, std=0.5)
    return DiffusionActor(net, extra_std=extra_std)


def test_specs_pass_check_env_specs():
    check_env_specs(DiffusionSamplerEnv(4), seed=0)


def test_rollout_moves_to_actions_and_rewards_the_terminal_point():
    env = DiffusionSamplerEnv(16, num_steps=10)
    actor = _actor()
    actor.step.num_steps, actor.step.dt = 10, 0.1
    with torch.no_grad():
        td = env.rollout(10, actor)
    assert td.batch_size == (16, 10)
    assert torch.equal(td["next", "observation"], td["action"])
    assert torch.equal(td["observation"][:, 1:], td["action"][:, :-1])
    assert torch.allclose(td["time"][0, :, 0], torch.arange(10) / 10)
    assert torch.allclose(td["next", "time"][:, -1], torch.ones(16, 1))
    reward = td["next", "reward"][..., 0]
    assert torch.allclose(reward[:, -1], log_reward(td["action"][:, -1]))
    assert torch.equal(reward[:, :-1], torch.zeros(16, 9))
    done = td["next", "done"][..., 0]
    assert done[:, -1].all() and not done[:, :-1].any()


def test_env_rollout_has_the_fast_sampler_key_layout():
    env = DiffusionSamplerEnv(4)
    actor = _actor()
    with torch.no_grad():
        rollout = env.rollout(100, actor)
    fast = actor.sample_trajectories(4)
    keys = set(rollout.exclude("loc", "scale").keys(True, True))
    assert keys == set(fast.keys(True, True))
    for key in keys:
        assert rollout[key].shape == fast[key].shape, key
        assert rollout[key].dtype == fast[key].dtype, key


def test_partial_reset_keeps_the_other_trajectories():
    env = DiffusionSamplerEnv(3)
    td = env.reset()
    td["action"] = torch.ones(3, 2)
    td = env.step(td)["next"]
    td["_reset"] = torch.tensor([[True], [False], [False]])
    out = env.reset(td)
    assert torch.equal(out["observation"], torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
    assert torch.allclose(out["time"][:, 0], torch.tensor([0.0, 0.01, 0.01]))


def test_step_rejects_wrong_action_shape():
    env = DiffusionSamplerEnv(3)
    td = env.reset()
    td["action"] = torch.ones(3, 2)
    env.step(td)
    with pytest.raises(ValueError, match="num_envs"):
        DiffusionSamplerEnv(0)


def test_collector_writes_full_trajectories_into_a_zarr_replay_buffer(tmp_path):
    n, steps = 8, 100
    env = DiffusionSamplerEnv(n)
    actor = _actor(extra_std=0.2)
    collector = Collector(env, actor, frames_per_batch=n * steps, total_frames=2 * n * steps)
    rb = ReplayBuffer(
        storage=ZarrStorage(4 * n * steps, path=tmp_path / "buffer.zarr"), batch_size=32
    )
    for batch in collector:
        assert batch.batch_size == (n, steps)
        assert batch["next", "done"][:, -1].all()
        rb.extend(batch.reshape(-1))
    collector.shutdown()
    assert len(rb) == 2 * n * steps
    sample = rb.sample()
    assert sample["action_log_prob"].shape == (32,)
    assert torch.isfinite(sample["next", "reward"]).all()
