"""The GMM experiment's configs: bad values raise errors naming the key."""

from __future__ import annotations

import pytest
from gmm_support import small
from zarrl.engine.config import ConfigError
from zarrl.engine.experiments.gmm_posterior.config import load_sweep, method_config_path
from zarrl.engine.trainer import Trainer


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.replay_ratio=1.0", "train.replay_ratio"),
        ("train.batch_size=0", "train.batch_size"),
        ("buffer.max_size=4", "buffer.max_size"),
        ("buffer.chunk_rows=0", "buffer.chunk_rows"),
        ("loss.name=dqn", "loss.name"),
        ("train.batchsize=3", "did you mean train.batch_size"),
        ("env.options.eval_sample=3", "did you mean env.options.eval_samples"),
        ("env.options.explore=3", "env.options.explore: got 3"),
        ("env.options.eval_samples=0", "env.options.eval_samples"),
    ],
)
def test_bad_config_values_raise_errors_naming_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(small("rtb", tmp_path, override))
    assert not (tmp_path / "exp").exists()  # refused before anything is written


def test_the_sweep_names_every_method_and_guidance_has_no_learner_config(tmp_path):
    sweep = load_sweep()
    assert "rtb" in sweep.methods and "guidance" in sweep.methods and sweep.seeds == [0, 1, 2]
    for method in sweep.methods:
        if method != "guidance":
            assert method_config_path(method).is_file()
    with pytest.raises(ConfigError, match="trains nothing"):
        method_config_path("guidance")
    bad = tmp_path / "sweep.yaml"
    bad.write_text("methods: [rtb, rbt]\n")
    with pytest.raises(ConfigError, match="did you mean rtb"):
        load_sweep(bad)
