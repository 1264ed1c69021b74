"""Configuration of the GMM posterior experiment (``zarrl experiment gmm-posterior``).

One YAML file per method under ``configs/gmm/``; sections are checked by the engine's config
machinery (unknown keys, wrong types and bad ranges raise :class:`~zarrl.engine.config.ConfigError`
naming the dotted key). The ``method`` section is open: ``name`` plus the keyword arguments of that
method's loss, checked when the learner is built (:mod:`zarrl.engine.experiments.gmm_posterior.methods`).
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from zarrl.engine.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    check_device,
    config_dir,
    read_config_file,
)
from zarrl.engine.schema import build

__all__ = [
    "GMM_CONFIGS",
    "METHODS",
    "GMMBufferConfig",
    "GMMConfig",
    "GMMEvalConfig",
    "GMMOptimConfig",
    "GMMTrainConfig",
    "canonical_method",
    "load_gmm_config",
    "method_config_path",
]

#: Folder of the per-method config files (package data of an installed wheel, or the checkout's).
GMM_CONFIGS = config_dir() / "gmm"

#: Method names in report order (``configs/gmm/<name>.yaml`` with ``-`` written ``_``).
METHODS = (
    "rtb",
    "trust-pcl-equivalent",
    "trust-pcl",
    "kl-reinforce-off-policy",
    "kl-reinforce-on-policy",
    "original-baseline",
    "guidance",
)


@dataclass
class GMMTrainConfig:
    """Fine-tuning schedule. Exploration: extra per-step std ``e`` = ``explore_std`` for the first
    ``explore_hold_updates`` updates, then ``explore_std·max(0, 1 − update/explore_anneal_updates)``
    (0 when ``explore`` is false)."""

    updates: int = 5_000
    batch_size: int = 500  # trajectories per update
    replay_ratio: float = 0.0  # share of each batch re-sampled from older buffer trajectories
    explore: bool = True
    explore_std: float = 0.5
    explore_hold_updates: int = 500
    explore_anneal_updates: int = 4_500
    eval_every: int = 250  # learning-curve row (loss, log Z, task metrics) every K updates
    checkpoint_every: int = 500


@dataclass
class GMMOptimConfig:
    lr_policy: float = 1e-3
    lr_value: float = 1e-3
    lr_log_z: float = 0.1
    adam_eps: float = 1e-8
    grad_clip: float | None = None  # global grad-norm clip; None disables


@dataclass
class GMMBufferConfig:
    """The Zarr replay buffer of trajectories (one row per trajectory)."""

    path: str | None = None  # default: <method/seed folder>/buffer.zarr
    max_size: int = 5_000  # trajectories kept (ring)
    cache: str | None = "ram"
    compress: bool = False  # Blosc-zstd chunks (random floats barely compress; slower writes)
    chunk_rows: int | None = None  # rows per chunk (null: train.batch_size, one chunk per batch)


@dataclass
class GMMEvalConfig:
    num_samples: int = 2_000  # on-policy samples per evaluation
    w2: bool = True  # exact W₂ to as many g₉ samples (O(N³) assignment)


@dataclass
class GMMConfig:
    """One method of the experiment. ``method`` is ``{"name": ..., **loss kwargs}``."""

    run: RunConfig = field(default_factory=lambda: RunConfig(name="gmm-posterior"))
    method: dict[str, Any] = field(default_factory=lambda: {"name": "rtb"})
    prior: str | None = None  # prior checkpoint; None: the shipped one (zarrl.envs.load_prior)
    train: GMMTrainConfig = field(default_factory=GMMTrainConfig)
    optim: GMMOptimConfig = field(default_factory=GMMOptimConfig)
    buffer: GMMBufferConfig = field(default_factory=GMMBufferConfig)
    eval: GMMEvalConfig = field(default_factory=GMMEvalConfig)
    progress: bool = True

    @property
    def name(self) -> str:
        return str(self.method["name"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GMMConfig:
        config = build(cls, data, prefix="")
        validate_gmm(config)
        return config

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def validate_gmm(config: GMMConfig) -> None:
    """Range checks; raises :class:`ConfigError` naming the dotted key and value."""
    if not isinstance(config.method, dict):
        raise ConfigError(f"method: got {config.method!r}, expected a mapping with a name")
    name = config.method.get("name")
    if name not in METHODS:
        raise ConfigError(f"method.name: got {name!r}, expected one of {list(METHODS)}")
    check_device(config.run.device)
    t = config.train
    positive = {
        "train.batch_size": t.batch_size,
        "train.eval_every": t.eval_every,
        "train.checkpoint_every": t.checkpoint_every,
        "train.explore_anneal_updates": t.explore_anneal_updates,
        "optim.lr_policy": config.optim.lr_policy,
        "optim.lr_value": config.optim.lr_value,
        "optim.lr_log_z": config.optim.lr_log_z,
        "optim.adam_eps": config.optim.adam_eps,
        "buffer.max_size": config.buffer.max_size,
        "eval.num_samples": config.eval.num_samples,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: got {value!r}, expected a value > 0")
    for key, value in {
        "train.updates": t.updates,
        "train.explore_std": t.explore_std,
        "train.explore_hold_updates": t.explore_hold_updates,
        "run.num_threads": config.run.num_threads,
    }.items():
        if value < 0:
            raise ConfigError(f"{key}: got {value!r}, expected a value >= 0")
    if not 0.0 <= t.replay_ratio < 1.0:
        raise ConfigError(f"train.replay_ratio: got {t.replay_ratio!r}, expected 0 <= ratio < 1")
    if config.optim.grad_clip is not None and config.optim.grad_clip <= 0:
        raise ConfigError(f"optim.grad_clip: got {config.optim.grad_clip!r}, expected > 0 or null")
    if config.buffer.chunk_rows is not None and config.buffer.chunk_rows <= 0:
        raise ConfigError(
            f"buffer.chunk_rows: got {config.buffer.chunk_rows!r}, expected a value > 0 or null "
            "(one chunk per fresh batch)"
        )
    if config.buffer.cache not in (None, "ram"):
        raise ConfigError(f"buffer.cache: got {config.buffer.cache!r}, expected null or 'ram'")
    if config.buffer.max_size < t.batch_size:
        raise ConfigError(
            f"buffer.max_size: got {config.buffer.max_size}, expected >= train.batch_size "
            f"({t.batch_size})"
        )


def canonical_method(method: str) -> str:
    """The method name as :data:`METHODS` spells it: ``trust_pcl`` (the ``zarrl train`` spelling)
    and ``trust-pcl`` both give ``trust-pcl``; raises ``ConfigError`` with a "did you mean"."""
    name = method.strip().lower().replace("_", "-")
    if name in METHODS:
        return name
    close = difflib.get_close_matches(name, METHODS, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"--methods: got {method!r}{hint}, expected one of {', '.join(METHODS)}")


def method_config_path(method: str) -> Path | Traversable:
    """``configs/gmm/<method>.yaml`` (``-`` written ``_``); raises ``ConfigError`` if unknown."""
    return GMM_CONFIGS / f"{canonical_method(method).replace('-', '_')}.yaml"


def load_gmm_config(
    path: str | Path | Traversable, overrides: list[str] | None = None
) -> GMMConfig:
    """Read a method's YAML config, apply dotted ``section.key=value`` overrides, validate."""
    data, _ = read_config_file(path)
    overrides = list(overrides or [])
    dotted = [o for o in overrides if "." in o.partition("=")[0]]
    data = _apply_top_level(apply_overrides(data, dotted), overrides)
    return GMMConfig.from_dict(data)


def _apply_top_level(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Overrides of top-level scalar keys (``prior=...``, ``progress=false``)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected the form section.key=value")
        if "." not in key:
            data[key.strip()] = yaml.safe_load(text) if text else None
    return data
