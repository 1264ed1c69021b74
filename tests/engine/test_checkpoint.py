"""Checkpoint files: atomic save, weights_only loading, foreign files refused, RNG round trip."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from zarrl.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_round_trip_keeps_tensors_and_plain_values(tmp_path):
    payload = {"counters": {"frames": 7}, "modules": {"w": torch.arange(3.0)}, "cfg": {"a": [1]}}
    path = save_checkpoint(tmp_path / "ck" / "last.pt", payload)
    loaded = load_checkpoint(path)
    assert loaded["counters"] == {"frames": 7}
    assert torch.equal(loaded["modules"]["w"], torch.arange(3.0))
    assert loaded["format"] == "zarrl-checkpoint"
    assert not list((tmp_path / "ck").glob(".*tmp"))


def test_arbitrary_pickles_are_refused_not_executed(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "zarrl-checkpoint", "x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(path)
    assert "unpickled" not in capsys.readouterr().out
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_foreign_and_newer_checkpoints_are_refused(tmp_path):
    torch.save({"state": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a zarrl checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"format": "zarrl-checkpoint", "version": 99}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        latest_checkpoint(tmp_path)


def test_rng_state_survives_a_checkpoint_and_replays_the_same_draws(tmp_path):
    legacy_numpy = np.random  # the global generator is what gets captured
    torch.manual_seed(3)
    legacy_numpy.seed(4)
    random.seed(5)
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    first = (torch.rand(3), legacy_numpy.rand(3), [random.random() for _ in range(3)])
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    second = (torch.rand(3), legacy_numpy.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]
