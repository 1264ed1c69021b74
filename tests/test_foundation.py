"""Project-level checks: the pinned torch build loads TorchRL's compiled samplers, and the
package layout keeps its dependency direction (engine -> algorithms, buffers, envs)."""

from __future__ import annotations

import ast
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.data import (
    LazyTensorStorage,
    PrioritizedSampler,
    PrioritizedSliceSampler,
    ReplayBuffer,
    TensorDictReplayBuffer,
)

ROOT = Path(__file__).resolve().parents[1]
LEAF_PACKAGES = ("algorithms", "buffers", "envs")


def test_prioritized_sampler_follows_updated_priorities():
    rb = ReplayBuffer(
        storage=LazyTensorStorage(64),
        sampler=PrioritizedSampler(64, alpha=1.0, beta=1.0),
        batch_size=256,
    )
    rb.extend(torch.arange(8))
    priority = torch.full((8,), 1e-6)
    priority[3] = 1.0
    rb.update_priority(torch.arange(8), priority)
    sample = rb.sample()
    assert (sample == 3).float().mean() > 0.95


def test_prioritized_slice_sampler_returns_contiguous_slices():
    n_traj, length = 4, 10
    td = TensorDict(
        {
            "obs": torch.arange(n_traj * length, dtype=torch.float32),
            "traj": torch.arange(n_traj).repeat_interleave(length),
        },
        batch_size=[n_traj * length],
    )
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(100),
        sampler=PrioritizedSliceSampler(
            max_capacity=100, alpha=0.7, beta=0.5, traj_key="traj", slice_len=5
        ),
        batch_size=20,
    )
    rb.extend(td)
    obs = rb.sample()["obs"].reshape(4, 5)
    assert torch.all(obs.diff(dim=1) == 1)
    traj = (obs // length).long()
    assert torch.all(traj == traj[:, :1])


def _imported_zarrl_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "zarrl" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_leaf_packages_never_import_engine_or_each_other():
    for package in LEAF_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            imported = _imported_zarrl_packages(path) - {package}
            assert not imported, f"{path.relative_to(ROOT)} imports zarrl.{sorted(imported)}"
