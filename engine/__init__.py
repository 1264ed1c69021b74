"""zarrl.engine"""

from zarrl.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from zarrl.engine.config import Config, ConfigError, load_config, save_config
from zarrl.engine.layout import RunLayout
from zarrl.engine.trainer import RunFolderError, Trainer

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
