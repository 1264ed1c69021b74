"""The GMM experiment's learners: every method trains through the Zarr buffer, schedule, bad arguments."""

from __future__ import annotations

import pytest
import torch
import zarr
from gmm_support import load_test_prior, small
from tensordict import TensorDict
from zarrl.engine.config import ConfigError
from zarrl.engine.experiments.gmm_posterior.config import METHODS
from zarrl.engine.experiments.gmm_posterior.methods import build_learner, exploration_std
from zarrl.engine.experiments.gmm_posterior.runner import _open_buffer, run_method
from zarrl.engine.layout import RunLayout
from zarrl.envs.gmm_posterior import DriftNetwork


@pytest.fixture(scope="module")
def prior():
    return load_test_prior()


def test_every_method_builds_and_trains_through_the_zarr_buffer(tmp_path, prior):
    for method in METHODS:
        summary = run_method(
            small(method, tmp_path, "train.updates=2"), tmp_path / method, prior_net=prior
        )
        assert summary["method"] == method
        assert 0.0 <= summary["wrong_mode_mass"] <= 1.0
        if method != "guidance":
            assert (tmp_path / method / "buffer.zarr").is_dir()
            assert summary["updates"] == 2


def test_the_buffer_holds_one_fresh_batch_per_chunk_unless_told(tmp_path):
    config = small("rtb", tmp_path)
    for chunk_rows, expected in ((None, config.train.batch_size), (7, 7)):
        config.buffer.chunk_rows = chunk_rows
        layout = RunLayout(tmp_path / str(chunk_rows))
        storage = _open_buffer(config, layout).storage
        storage.set(torch.arange(3), TensorDict({"x": torch.zeros(3, 2)}, [3]))
        storage.close()
        assert zarr.open_array(layout.default_buffer / "x", mode="r").chunks[0] == expected


def test_exploration_schedule_holds_then_anneals_to_zero(tmp_path):
    train = small("rtb", tmp_path).train
    assert exploration_std(0, train) == exploration_std(499, train) == 0.5
    assert exploration_std(2250, train) == pytest.approx(0.25)
    assert exploration_std(4500, train) == exploration_std(4999, train) == 0.0
    assert exploration_std(0, small("kl-reinforce-on-policy", tmp_path).train) == 0.0


def test_unknown_loss_argument_names_the_method_key(tmp_path):
    with pytest.raises(ConfigError, match="method.rollout"):
        build_learner(small("rtb", tmp_path, "method.rollout=3"), DriftNetwork())
