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
        rows = storage.get(torch.arange(n))
    ids = rows[TRAJ_KEY]
    assert set((ids % 2).tolist()) == {0, 1}  # both workers' trajectories, ids kept apart
    # all 600 frames within init_random_frames (1000): the uniform policy's weights, same keys
    assert (rows["logits"] == 0).all()
    assert state["counters"]["updates"] > 0


def test_trainer_learns_from_a_ray_hosted_buffer_and_sends_weights_to_the_workers(
    ray_local, tmp_path
):
    """``collector.backend: ray`` in the Trainer: the store lives in a Ray actor (never opened by
    the learner's process until the end), the workers write into it, the learner samples it and
    its updated weights reach the workers (the logits they store change)."""
    import copy
    from pathlib import Path

    from zarrl.engine.config import load_config
    from zarrl.engine.trainer import Trainer

    config = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "cartpole_trust_pcl.yaml",
        [
            f"run.dir={tmp_path}",
            "run.name=rayhost",
            "run.device=cpu",
            "train.total_frames=600",
            "train.warmup_frames=200",
            "train.updates_per_frame=0.1",
            "collector.frames_per_batch=100",
            "collector.init_random_frames=0",
            "collector.backend=ray",
            "collector.num_workers=2",
            "eval.episodes=0",
            "log.progress=false",
        ],
    )
    trainer = Trainer(config)
    assert trainer.buffer.service_backend == "ray"  # sampled in the buffer's actor
    initial = copy.deepcopy(trainer.collector_policy)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    assert trainer.storage.closed
    frames, updates = trainer.counters["frames"], trainer.counters["updates"]
    assert frames >= 600 and updates == summary["updates"] > 0
    state = torch.load(tmp_path / "rayhost" / "checkpoints" / "final.pt", weights_only=False)
    assert state["counters"]["frames"] == frames
    with ZarrStorage.open(tmp_path / "rayhost" / "buffer.zarr", "r") as storage:
        assert len(storage) == frames  # every row the learner counted, no more
        rows = storage.get(torch.arange(frames))
    assert set((rows[TRAJ_KEY] % 2).tolist()) == {0, 1}
    with torch.no_grad():
        replay = initial(rows.select("observation").clone())["logits"]
    same = torch.isclose(replay, rows["logits"], rtol=1e-5, atol=1e-6).all(-1)
    assert same[:200].all()  # before the first update: the initial weights
    assert not same[-100:].any()  # the last batch: weights the learner sent after its updates
    assert trainer.recent_returns  # the workers' finished episodes reached the learner's logs
