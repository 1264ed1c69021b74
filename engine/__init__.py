"""zarrl.engine: the training engine and the ``zarrl`` command.

The public names are imported on first use (PEP 562), so ``zarrl --help`` and light submodules
(configs, the command line) start without loading torch, TorchRL and the trainer.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zarrl.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from zarrl.engine.config import Config, ConfigError, load_config, save_config
    from zarrl.engine.layout import RunLayout
    from zarrl.engine.trainer import RunFolderError, Trainer

_EXPORTS = {
    "CheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "Config": "config",
    "ConfigError": "config",
    "load_config": "config",
    "save_config": "config",
    "RunLayout": "layout",
    "RunFolderError": "trainer",
    "Trainer": "trainer",
}

try:
    #: The installed distribution's version (``zarrl --version``); ``0+unknown`` if not installed.
    __version__ = importlib.metadata.version("zarrl")
except importlib.metadata.PackageNotFoundError:
    __version__ = "0+unknown"

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "RunFolderError",
    "RunLayout",
    "Trainer",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
    "save_config",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zarrl.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"zarrl.engine.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
