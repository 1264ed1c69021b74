"""Collection on Ray (``engine/ray_collect.py``): TorchRL's Ray collector workers write into a
Ray-hosted ``ZarrStorage``; a local Ray on 2 CPUs (``ray_local``, tests/conftest.py)."""

from __future__ import annotations

import torch
from zarrl.buffers import ZarrStorage
from zarrl.engine.cli import main
from zarrl.engine.config import BufferConfig, EnvConfig, ModelConfig
from zarrl.engine.models import build_actor
from zarrl.engine.policies import TRAJ_KEY
from zarrl.engine.registry import make_environment


def test_zarrl_collect_on_two_ray_workers_stores_every_row(ray_local, tmp_path, capsys):
    path = tmp_path / "cp.zarr"
    argv = ["collect", "--env", "CartPole-v1", "--frames", "400", "--buffer", str(path)]
    assert main([*argv, "--backend", "ray", "--workers", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    with ZarrStorage.open(path, "r") as storage:
        n = len(storage)
        assert n >= 400 and str(n) in out
        data = storage.get(torch.arange(n))
    steps, ids = data["next", "step_count"].flatten(), data[TRAJ_KEY]
    for traj in ids.unique():  # each trajectory is one worker's: its steps count 1, 2, 3...
        s = steps[ids == traj]
        assert torch.equal(s, torch.arange(int(s[0]), int(s[0]) + len(s))), int(traj)
    assert set((ids % 2).tolist()) == {0, 1}  # both workers wrote


def test_policy_weights_reach_the_ray_workers(ray_local, tmp_path):
    from zarrl.engine.ray_collect import (
        close_ray_buffer,
        ray_collector,
        ray_replay_buffer,
        storage_factory,
    )

    env_cfg = EnvConfig(name="CartPole-v1")
    env = make_environment(env_cfg, seed=0)
    policy = build_actor(env, ModelConfig())
    path = str(tmp_path / "w.zarr")
    config = BufferConfig(max_size=None, cache=None)
    rb = ray_replay_buffer(storage_factory(path, config, create=True))
    collector = ray_collector(
        lambda: make_environment(env_cfg, seed=1),
        policy,
        rb,
        num_workers=1,
        frames_per_batch=50,
        total_frames=300,
    )
    new_logits = torch.tensor([7.0, -7.0])
    for i, _ in enumerate(collector):
        if i == 1:
            last = [m for m in policy.modules() if isinstance(m, torch.nn.Linear)][-1]
            with torch.no_grad():
                last.weight.zero_()
                last.bias.copy_(new_logits)
            collector.update_policy_weights_(policy)
    collector.shutdown()
    state = close_ray_buffer(rb)
    with ZarrStorage.open(path, "r") as storage:
        assert len(storage) == state["_len"] >= 300
        logits = storage.get(torch.arange(len(storage)))["logits"]
    updated = (logits == new_logits).all(-1)
    assert not updated[:50].any() and updated[-50:].all()


def test_zarrl_train_with_ray_collectors_keeps_every_row(ray_local, tmp_path):
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "configs" / "cartpole_trust_pcl.yaml"
    argv = [
        "train",
        str(config),
        f"run.dir={tmp_path}",
        "run.name=ray",
        "train.total_frames=600",
        "train.warmup_frames=200",
        "collector.frames_per_batch=100",
        "eval.episodes=0",
        "run.device=cpu",
        "--backend",
        "ray",
        "--workers",
        "2",
        "--quiet",
    ]
    assert main(argv) == 0
    state = torch.load(tmp_path / "ray" / "checkpoints" / "final.pt", weights_only=False)
    with ZarrStorage.open(tmp_path / "ray" / "buffer.zarr", "r") as storage:
        n = len(storage)
        assert n >= 600 and n == state["counters"]["frames"]
        ids = storage.get(torch.arange(n))[TRAJ_KEY]
    assert set((ids % 2).tolist()) == {0, 1}  # both workers' trajectories, ids kept apart
    assert state["counters"]["updates"] > 0
