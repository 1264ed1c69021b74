"""The GMM experiment's methods: every one trains through the Zarr buffer, schedule, bad arguments."""

from __future__ import annotations

import pytest
import zarr
from gmm_support import small
from zarrl.engine.config import ConfigError, load_config
from zarrl.engine.experiments.gmm_posterior.config import GUIDANCE, METHODS
from zarrl.engine.experiments.gmm_posterior.experiment import evaluate_guidance, train_method
from zarrl.engine.tasks import build_task
from zarrl.engine.trainer import Trainer


def test_every_method_builds_and_trains_through_the_zarr_buffer(tmp_path):
    for method in METHODS:
        if method == GUIDANCE:
            summary = evaluate_guidance(small("rtb", tmp_path), 1.0, tmp_path / method)
            assert summary["updates"] == 0
        else:
            config = small(method, tmp_path, "train.total_updates=2", name=method)
            summary = train_method(config, method)
            assert (config.run_dir / "buffer.zarr").is_dir()
            assert (
                summary["updates"] == 2 and summary["env steps"] == 2 * 16
            )  # one row per trajectory
        assert summary["method"] == method
        assert 0.0 <= summary["wrong_mode_mass"] <= 1.0


def test_the_buffer_holds_one_fresh_batch_per_chunk_unless_told(tmp_path):
    for chunk_rows, expected in (("null", 16), (7, 7)):
        config = small(
            "rtb", tmp_path, f"buffer.chunk_rows={chunk_rows}", name=f"chunks{chunk_rows}"
        )
        trainer = Trainer(config)
        try:
            trainer.update()
        finally:
            trainer.close()
        path = config.run_dir / "buffer.zarr" / "path"
        assert zarr.open_array(path, mode="r").chunks[0] == expected


def test_exploration_schedule_holds_then_anneals_to_zero(tmp_path):
    config = small("rtb", tmp_path)
    task = build_task(config.env, config.model)
    assert task.exploration_std(0) == task.exploration_std(499) == 0.5
    assert task.exploration_std(2250) == pytest.approx(0.25)
    assert task.exploration_std(4500) == task.exploration_std(4999) == 0.0
    on_policy = small("kl-reinforce-on-policy", tmp_path)
    assert build_task(on_policy.env, on_policy.model).exploration_std(0) == 0.0


def test_unknown_loss_argument_names_the_loss_key_and_writes_nothing(tmp_path):
    with pytest.raises(ConfigError, match="loss.rollout"):
        Trainer(small("rtb", tmp_path, "loss.rollout=3"))
    assert not (tmp_path / "exp").exists()


def test_sampler_mode_refuses_a_task_without_a_sampler_function(tmp_path):
    config = load_config(
        "cartpole_trust_pcl",
        [
            f"run.dir={tmp_path}",
            "train.mode=sampler",
            "train.total_updates=3",
            "log.progress=false",
        ],
    )
    with pytest.raises(ConfigError, match="'sampler' draws trajectories with the task's sampler"):
        Trainer(config)
    assert not (tmp_path / "cartpole_trust_pcl").exists()
