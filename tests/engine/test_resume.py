"""Crash and resume: a training process killed with SIGKILL resumes from its last checkpoint with
the Zarr buffer intact and counters, buffer length and ring cursor consistent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import yaml
from torchrl.data import TensorDictReplayBuffer
from zarrl.buffers import ZarrStorage
from zarrl.buffers._compat_torchrl import buffer_writer, writer_position
from zarrl.engine.checkpoint import CheckpointError, load_checkpoint
from zarrl.engine.trainer import Trainer

TOTAL, CAPACITY, BATCH = 1600, 1000, 100


def _config(tmp_path) -> dict:
    return {
        "run": {"dir": str(tmp_path / "runs"), "name": "crash", "seed": 3},
        "env": {"name": "CartPole-v1"},
        "buffer": {"max_size": CAPACITY, "flush_every_seconds": None},
        "collector": {"frames_per_batch": BATCH, "init_random_frames": 200},
        "train": {
            "total_frames": TOTAL,
            "warmup_frames": 200,
            "updates_per_frame": 0.05,
            "batch_size": 8,
            "slice_len": 8,
            "checkpoint_every_updates": 5,
            "log_every_updates": 5,
        },
        "loss": {"name": "trust_pcl", "gamma": 0.99, "kl_coef": 0.1, "entropy_coef": 0.01},
        "eval": {"episodes": 0},
        "log": {"progress": False},
    }


def _checkpoint_frames(path) -> int:
    try:
        return int(load_checkpoint(path)["counters"]["frames"])
    except CheckpointError:
        return 0


def test_sigkill_mid_run_then_resume_completes_with_consistent_counters_and_buffer(tmp_path):
    config = tmp_path / "crash.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path)))
    root = tmp_path / "runs" / "crash"
    last = root / "checkpoints" / "last.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "zarrl.engine.cli", "train", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 240
        while _checkpoint_frames(last) < 600:  # past the first checkpoints, before the end
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint past 600 frames in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    checkpoint = load_checkpoint(last)
    killed_at = checkpoint["counters"]["frames"]
    assert killed_at < TOTAL
    assert not (root / "checkpoints" / "final.pt").exists()

    # the store reopens at its last commit, holding at least every row the checkpoint counted
    reader = TensorDictReplayBuffer(storage=ZarrStorage.open(root / "buffer.zarr", mode="r"))
    assert reader.write_count >= checkpoint["counters"]["buffer_writes"]

    trainer = Trainer.resume(root)
    try:
        assert trainer.counters["updates"] == checkpoint["counters"]["updates"]
        # rows committed after the checkpoint are kept and counted, never written twice
        assert trainer.counters["frames"] == killed_at + (
            trainer.buffer.write_count - checkpoint["counters"]["buffer_writes"]
        )
        summary = trainer.run()
    finally:
        trainer.close()
    frames = summary["env steps"]
    assert TOTAL <= frames < TOTAL + BATCH
    assert trainer.buffer.write_count == frames
    storage = ZarrStorage.open(root / "buffer.zarr", mode="r")
    assert len(storage) == min(frames, CAPACITY)
    assert writer_position(buffer_writer(trainer.buffer))[1] == frames % CAPACITY
    final = load_checkpoint(root / "checkpoints" / "final.pt")
    assert final["counters"]["frames"] == frames
    assert final["counters"]["buffer_writes"] == frames
    assert final["counters"]["updates"] == summary["updates"] > checkpoint["counters"]["updates"]
