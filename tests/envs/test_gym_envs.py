"""Tests for zarrl.envs.gym_envs: specs, transforms, vectorization, seeding, normalization, and
collection into a Zarr replay buffer."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torchrl.collectors import Collector
from torchrl.data import ReplayBuffer
from torchrl.envs.utils import check_env_specs
from zarrl.buffers import ZarrStorage
from zarrl.envs.gym_envs import make_env

pytestmark = pytest.mark.usefixtures("single_thread")

CLASSIC = ["CartPole-v1", "Acrobot-v1", "Pendulum-v1"]


@pytest.mark.parametrize("num_envs", [1, 3])
@pytest.mark.parametrize("name", CLASSIC)
def test_classic_envs_pass_check_env_specs_with_the_standard_transforms(name, num_envs):
    env = make_env(name, num_envs=num_envs, seed=0)
    check_env_specs(env, seed=0)
    assert env.batch_size == ((num_envs,) if num_envs > 1 else ())
    td = env.rollout(5, break_when_any_done=False)
    for key in ("step_count", ("next", "episode_reward"), ("next", "truncated")):
        assert key in td.keys(True)
    assert td["next", "observation"].dtype == torch.float32
    assert torch.equal(td["next", "step_count"][..., -1, 0], torch.full(env.batch_size, 5))


def _rollout(name: str, seed: int, num_envs: int = 2, normalize: bool = False):
    env = make_env(name, num_envs=num_envs, seed=seed, normalize_obs=normalize, obs_norm_steps=100)
    torch.manual_seed(0)  # the random actions
    return env.rollout(40, break_when_any_done=False)["next", "observation"]


def test_same_seed_reproduces_a_rollout_and_another_seed_does_not():
    assert torch.equal(_rollout("Pendulum-v1", 0), _rollout("Pendulum-v1", 0))
    assert not torch.equal(_rollout("Pendulum-v1", 0), _rollout("Pendulum-v1", 1))


def test_normalized_observations_are_standardized_and_reproducible():
    env = make_env("Acrobot-v1", num_envs=2, seed=0, normalize_obs=True, obs_norm_steps=150)
    check_env_specs(env, seed=0)
    obs = env.rollout(150, break_when_any_done=False)["next", "observation"].reshape(-1, 6)
    assert obs.mean(0).abs().max() < 0.5
    assert (obs.std(0) - 1).abs().max() < 0.5
    assert torch.equal(
        _rollout("Acrobot-v1", 3, normalize=True), _rollout("Acrobot-v1", 3, normalize=True)
    )


def test_unknown_id_and_bad_num_envs_are_rejected_with_a_clear_error():
    with pytest.raises(ValueError, match="CartPole-v1"):
        make_env("CartPole-v9")
    with pytest.raises(ValueError, match="num_envs"):
        make_env("CartPole-v1", num_envs=0)


@pytest.mark.parametrize("name", CLASSIC)
def test_collector_rollouts_land_in_a_zarr_replay_buffer(name, tmp_path):
    env = make_env(name, num_envs=2, seed=0)
    collector = Collector(env, None, frames_per_batch=64, total_frames=128)
    rb = ReplayBuffer(storage=ZarrStorage(1000, path=tmp_path / "rb.zarr"), batch_size=16)
    for batch in collector:
        assert batch.batch_size == (2, 32)
        rb.extend(batch.reshape(-1))
    collector.shutdown()
    assert len(rb) == 128
    sample = rb.sample()
    assert sample["next", "observation"].shape[0] == 16
    assert torch.isfinite(sample["next", "reward"]).all()


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="mujoco extra not installed")
def test_mujoco_half_cheetah_works_when_the_extra_is_installed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT into the working directory
    env = make_env("HalfCheetah-v5", num_envs=2, seed=0)
    check_env_specs(env, seed=0)
    td = env.rollout(3, break_when_any_done=False)
    assert td["next", "observation"].shape == (2, 3, 17)
    assert td["next", "observation"].dtype == torch.float32
