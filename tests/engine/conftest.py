"""Shared helpers for the engine tests: tiny, fast configs."""

from __future__ import annotations

import pytest
import torch
from zarrl.engine.config import Config, load_config


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny():
    """``tiny(tmp_path, *overrides)`` -> a fast CartPole config."""
    return tiny_config


def tiny_config(tmp_path, *overrides: str) -> Config:
    """A CartPole Trust-PCL config that runs in seconds (no progress bar)."""
    base = [
        f"run.dir={tmp_path / 'runs'}",
        "run.name=tiny",
        "env.name=CartPole-v1",
        "collector.frames_per_batch=100",
        "collector.init_random_frames=200",
        "train.total_frames=600",
        "train.warmup_frames=200",
        "train.updates_per_frame=0.05",
        "train.batch_size=8",
        "train.slice_len=8",
        "train.checkpoint_every_updates=5",
        "train.log_every_updates=5",
        "loss.name=trust_pcl",
        "loss.gamma=0.99",
        "loss.kl_coef=0.1",
        "loss.entropy_coef=0.01",
        "loss.rollout=4",
        "eval.episodes=2",
        "eval.every_frames=300",
        "log.progress=false",
        "buffer.flush_every_seconds=null",
    ]
    return load_config(None, [*base, *overrides])
