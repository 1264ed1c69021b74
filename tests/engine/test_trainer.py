"""The Trainer end to end on CartPole: run folder, counters, buffer consistency, resume, offline and
mixed modes, refusal to overwrite, and learning."""

from __future__ import annotations

import json

import pytest
import torch
from zarrl.buffers import ZarrStorage
from zarrl.engine.checkpoint import load_checkpoint
from zarrl.engine.config import ConfigError, load_config
from zarrl.engine.trainer import RunFolderError, Trainer


def _run(config):
    trainer = Trainer(config)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    return trainer, summary


def test_online_run_fills_the_run_folder_and_keeps_counters_consistent(tmp_path, tiny):
    trainer, summary = _run(tiny(tmp_path))
    root = tmp_path / "runs" / "tiny"
    for name in (
        "config.yaml",
        "checkpoints/last.pt",
        "checkpoints/final.pt",
        "summary.json",
        "learning_curve.png",
    ):
        assert (root / name).is_file(), name
    scalars = root / "logs" / "tiny" / "scalars"
    assert (scalars / "eval" / "return_mean.csv").is_file()
    assert (scalars / "train" / "loss_objective.csv").is_file()
    assert (scalars / "perf" / "updates_per_s.csv").is_file()
    assert summary["env steps"] == 600
    # the update-to-data ratio counts frames once the warm-up is reached: the first batch
    # (100 rows) is below the 200-row warm-up
    assert summary["updates"] == round(0.05 * (600 - 100))
    assert json.loads((root / "summary.json").read_text())["updates"] == summary["updates"]
    storage = ZarrStorage.open(root / "buffer.zarr", mode="r")
    assert len(storage) == 600
    ckpt = load_checkpoint(root / "checkpoints" / "final.pt")
    assert ckpt["counters"]["frames"] == 600
    assert ckpt["counters"]["buffer_writes"] == 600
    assert load_config(root / "config.yaml") == trainer.config


def test_a_run_folder_holding_a_run_is_never_overwritten(tmp_path, tiny):
    _run(tiny(tmp_path, "train.total_frames=300", "eval.episodes=0"))
    root = tmp_path / "runs" / "tiny"
    before = (root / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(RunFolderError, match="already holds a run"):
        Trainer(tiny(tmp_path))
    assert (root / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_restores_weights_optimizer_and_counters_then_continues(tmp_path, tiny):
    first, _ = _run(tiny(tmp_path, "train.total_frames=400"))
    root = tmp_path / "runs" / "tiny"
    resumed = Trainer.resume(root, ["train.total_frames=700"])
    try:
        assert resumed.counters["frames"] == 400
        assert resumed.counters["updates"] == first.counters["updates"]
        resumed_state = resumed.loss.state_dict()
        for name, value in first.loss.state_dict().items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, resumed_state[name]), name
            else:  # e.g. the λ tuner's history
                assert value == resumed_state[name], name
        assert (
            resumed.optimizer.state_dict()["state"].keys()
            == first.optimizer.state_dict()["state"].keys()
        )
        summary = resumed.run()
    finally:
        resumed.close()
    assert summary["env steps"] == 700
    storage = ZarrStorage.open(root / "buffer.zarr", mode="r")
    assert len(storage) == 700
    traj = storage[:700]["collector", "traj_ids"]
    # trajectory ids restart after the stored ones, never reusing an id of the first run
    first_ids = set(traj[:400].tolist())
    assert not first_ids & set(traj[400:].tolist())


def test_offline_training_reads_the_buffer_without_changing_it(tmp_path, tiny):
    _run(tiny(tmp_path, "eval.episodes=0"))
    buffer = tmp_path / "runs" / "tiny" / "buffer.zarr"
    files_before = {p: p.stat().st_mtime_ns for p in buffer.rglob("*") if p.is_file()}
    config = tiny(
        tmp_path,
        "run.name=offline",
        "train.mode=offline",
        f"buffer.path={buffer}",
        "train.total_updates=12",
        "eval.every_updates=6",
    )
    trainer, summary = _run(config)
    assert summary["updates"] == 12
    assert summary["env steps"] == 0
    assert summary["final eval return"] is not None
    assert {p: p.stat().st_mtime_ns for p in buffer.rglob("*") if p.is_file()} == files_before


def test_mixed_mode_appends_to_an_existing_buffer(tmp_path, tiny):
    _run(tiny(tmp_path, "eval.episodes=0"))
    buffer = tmp_path / "runs" / "tiny" / "buffer.zarr"
    config = tiny(
        tmp_path,
        "run.name=mixed",
        "train.mode=mixed",
        f"buffer.path={buffer}",
        "eval.episodes=0",
        "train.total_frames=300",
    )
    trainer, summary = _run(config)
    assert summary["env steps"] == 300
    assert len(ZarrStorage.open(buffer, mode="r")) == 900
    # updates began at once: the existing 600 rows exceed the warm-up
    assert summary["updates"] == int(0.05 * 300)


def test_unknown_loss_argument_is_rejected_naming_the_key(tmp_path, tiny):
    with pytest.raises(ConfigError, match="loss.gama: unknown argument of TrustPCLLoss"):
        Trainer(tiny(tmp_path, "loss.gama=0.9"))
    assert not (tmp_path / "runs" / "tiny" / "buffer.zarr").exists()


def test_losses_that_need_a_prior_policy_are_refused_with_a_pointer(tmp_path, tiny):
    with pytest.raises(ConfigError, match=r"loss.name: 'rtb'.*needs a prior.*env.task: sequence"):
        Trainer(tiny(tmp_path, "loss.name=rtb"))


def test_invalid_loss_value_is_reported_as_a_config_error(tmp_path, tiny):
    with pytest.raises(ConfigError, match="gamma"):
        Trainer(tiny(tmp_path, "loss.gamma=1.5"))


def test_short_trust_pcl_run_learns_cartpole_well_above_random(tmp_path, tiny):
    """Random play scores about 22; a few thousand steps of Trust-PCL must do much better."""
    config = tiny(
        tmp_path,
        "train.total_frames=5000",
        "collector.frames_per_batch=250",
        "collector.init_random_frames=1000",
        "train.warmup_frames=1000",
        "train.updates_per_frame=0.1",
        "train.batch_size=32",
        "train.slice_len=16",
        "loss.rollout=10",
        "train.checkpoint_every_updates=1000",
        "eval.episodes=5",
        "eval.every_frames=2500",
    )
    trainer, summary = _run(config)
    assert summary["best eval return"] >= 100, summary
