"""Checkpoints: atomic writes, safe (``weights_only``) loading, RNG state capture and restore.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python containers, so it loads
with ``torch.load(weights_only=True)`` and never unpickles arbitrary objects:

``{"format": "zarrl-checkpoint", "version": 1, "config": {...}, "counters": {...},
"modules": {...state_dicts}, "optimizers": {...}, "rng": {...}, "extra": {...}}``
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "capture_rng_state",
    "latest_checkpoint",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "zarrl-checkpoint"
CHECKPOINT_VERSION = 1
# NumPy's global (legacy) generator: the state that library code seeded with np.random.seed uses
_LEGACY_NUMPY_RNG = np.random


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or not a zarrl checkpoint."""


def capture_rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's, torch's CPU and (if present) CUDA generators."""
    kind, keys, pos, has_gauss, cached = _LEGACY_NUMPY_RNG.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators captured by :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    _LEGACY_NUMPY_RNG.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically (temporary file, fsync, rename): a kill leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(full, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` if it is
    missing, unreadable or of another format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be loaded safely: {err}") from err
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a zarrl checkpoint")
    if data.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {data['version']}, "
            f"newer than this zarrl ({CHECKPOINT_VERSION})"
        )
    return data


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint to resume a run folder from (``checkpoints/last.pt``)."""
    path = Path(run_dir) / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(
            f"{str(run_dir)!r} holds no checkpoint (expected {str(path)!r}); is it a zarrl run folder?"
        )
    return path
