"""The run folder: one directory per experiment holding everything a run writes.

```
runs/<name>/
  config.yaml            resolved config (every default filled in)
  buffer.zarr/           the replay buffer (unless buffer.path points elsewhere)
  checkpoints/last.pt    latest checkpoint (resume point), replaced atomically
  checkpoints/final.pt   checkpoint at the end of the run
  logs/<name>/scalars/   TorchRL CSVLogger files, one CSV per scalar (step,value)
  learning_curve.png     evaluation / training returns against environment steps
  summary.json           final figures (also printed as a table)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunLayout"]


@dataclass(frozen=True)
class RunLayout:
    """Paths inside a run folder ``root``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def final_checkpoint(self) -> Path:
        return self.checkpoints / "final.pt"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def plot(self) -> Path:
        return self.root / "learning_curve.png"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def default_buffer(self) -> Path:
        return self.root / "buffer.zarr"

    def scalars(self, name: str) -> Path:
        """Folder of the CSV files written by TorchRL's CSVLogger for experiment ``name``."""
        return self.logs / name / "scalars"

    def has_checkpoint(self) -> bool:
        return self.last_checkpoint.is_file()
