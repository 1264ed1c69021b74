"""The GMM experiment's configs: bad values raise errors naming the key."""

from __future__ import annotations

import pytest
from gmm_support import small
from zarrl.engine.config import ConfigError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.replay_ratio=1.0", "train.replay_ratio"),
        ("train.batch_size=0", "train.batch_size"),
        ("buffer.max_size=4", "buffer.max_size"),
        ("buffer.chunk_rows=0", "buffer.chunk_rows"),
        ("method.name=dqn", "method.name"),
        ("train.batchsize=3", "train.batchsize"),
    ],
)
def test_bad_config_values_raise_errors_naming_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        small("rtb", tmp_path, override)
