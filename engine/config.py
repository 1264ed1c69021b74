"""Experiment configuration: typed sections loaded from YAML with dotted command-line overrides.

A config file is a YAML mapping whose top-level keys are the sections below. Every key is checked at
load time: unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the
dotted key, the value and what was expected. The ``loss`` section is open (its keys are the keyword
arguments of the chosen loss class) and is checked against that class's signature by the trainer.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import asdict, dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from zarrl.engine.schema import ConfigError, build

__all__ = [
    "BufferConfig",
    "CollectorConfig",
    "Config",
    "ConfigError",
    "EnvConfig",
    "EvalConfig",
    "LogConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "check_device",
    "config_dir",
    "load_config",
    "packaged_configs",
    "resolve_config",
    "save_config",
]


@dataclass
class RunConfig:
    """Where the run lives and what it runs on."""

    name: str = "run"
    dir: str = "runs"  # the run folder is <dir>/<name>
    seed: int = 0
    device: str = "auto"  # learner device: auto | cpu | cuda | cuda:N
    num_threads: int = 1  # torch intra-op threads (0 keeps torch's default)


@dataclass
class EnvConfig:
    task: str = "gym"  # gym | sequence (zarrl.engine.tasks registry)
    name: str = "CartPole-v1"  # the Gymnasium id (gym task) or a display name
    options: dict[str, Any] = field(default_factory=dict)  # the task's own settings
    num_envs: int = 1
    normalize_obs: bool = False
    max_episode_steps: int | None = None  # extra time limit (truncation) on top of Gymnasium's


@dataclass
class ModelConfig:
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"  # tanh | relu | elu
    kind: str = "default"  # default: the task's own network | hf: a Hugging Face causal LM
    hf: dict[str, Any] = field(default_factory=dict)  # kind hf: path | config, ... (generations)


@dataclass
class BufferConfig:
    path: str | None = None  # default: <run folder>/buffer.zarr
    max_size: int | None = 1_000_000  # None: unbounded, growing store
    cache: str | None = "ram"  # None | "ram" (full in-RAM mirror)
    flush_every_rows: int | None = None
    flush_every_seconds: float | None = 30.0
    compress: bool = True  # Blosc-zstd chunks (false: raw chunks, faster writes of random floats)
    chunk_rows: int | None = None  # rows per chunk (null: the storage's; sampler: train.batch_size)
    # options of a store URL's store (s3://...: endpoint_url, region, ...; docs/scale-out.md)
    storage_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class CollectorConfig:
    frames_per_batch: int = 200
    init_random_frames: int = 0  # first frames collected with uniformly random actions
    backend: str = "local"  # local | ray (workers on Ray: engine/ray_collect.py)
    num_workers: int = 1  # Ray collector workers (backend: ray)


@dataclass
class TrainConfig:
    mode: str = "online"  # online | offline | mixed | sampler (zarrl.engine.sources registry)
    total_frames: int = 100_000  # environment steps (online / mixed)
    total_updates: int | None = None  # learner updates (required offline; optional cap otherwise)
    updates_per_frame: float = 0.1  # update-to-data ratio
    warmup_frames: int = 1_000  # no update before the buffer holds this many rows
    batch_size: int = 64  # sub-trajectories per update (sampler: whole trajectories)
    slice_len: int = 16  # steps per sub-trajectory (>= loss rollout; unused by the sampler)
    replay_ratio: float = 0.0  # sampler: share of each batch re-drawn from stored trajectories
    checkpoint_every_updates: int = 2_000
    log_every_updates: int = 100
    stop_at_target: bool = False  # stop once eval.target_return is reached


@dataclass
class OptimConfig:
    lr_policy: float = 1e-3
    lr_value: float = 1e-3
    lr_log_z: float = 1e-2
    adam_eps: float = 2e-4
    grad_clip: float | None = 10.0  # global grad-norm clip; None disables
    fused: bool = False  # torch's fused Adam kernel (one kernel for all parameters)


@dataclass
class EvalConfig:
    episodes: int = 20  # 0 disables evaluation
    every_frames: int = 10_000  # online / mixed
    every_updates: int = 2_000  # offline / sampler
    at_start: bool = False  # also evaluate before the first update
    deterministic: bool = True
    target_return: float | None = None


@dataclass
class LogConfig:
    backend: str = "csv"  # csv | tensorboard
    progress: bool = True


@dataclass
class Config:
    """The whole experiment. ``loss`` is ``{"name": ..., **kwargs of that loss class}``."""

    run: RunConfig = field(default_factory=RunConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: dict[str, Any] = field(default_factory=lambda: {"name": "trust_pcl"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir) / self.run.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build and validate a config from a nested mapping (missing keys take defaults)."""
        config = build(cls, data)
        if not isinstance(config.loss.get("name"), str):
            raise ConfigError(f"loss.name: got {config.loss.get('name')!r}, expected a loss name")
        validate(config)
        return config


_CHOICES = {
    "run.device": None,  # checked by check_device
    "model.activation": ("tanh", "relu", "elu"),
    "model.kind": ("default", "hf"),
    "buffer.cache": (None, "ram"),
    "train.mode": ("online", "offline", "mixed", "sampler"),
    "log.backend": ("csv", "tensorboard"),
    "collector.backend": ("local", "ray"),
}
_POSITIVE = (
    "env.num_envs",
    "collector.frames_per_batch",
    "collector.num_workers",
    "train.batch_size",
    "train.slice_len",
    "train.checkpoint_every_updates",
    "train.log_every_updates",
    "eval.every_frames",
    "eval.every_updates",
    "optim.lr_policy",
    "optim.lr_value",
    "optim.lr_log_z",
    "optim.adam_eps",
)
_NON_NEGATIVE = (
    "train.total_frames",
    "train.updates_per_frame",
    "train.warmup_frames",
    "collector.init_random_frames",
    "run.num_threads",
    "eval.episodes",
)


def _get(config: Config, dotted: str) -> Any:
    obj: Any = config
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def check_device(value: str) -> None:
    """Refuse a device name other than auto, cpu, cuda or cuda:N (naming ``run.device``)."""
    if value in ("auto", "cpu", "cuda") or value.startswith("cuda:"):
        return
    raise ConfigError(f"run.device: got {value!r}, expected auto, cpu, cuda or cuda:N")


def validate(config: Config) -> None:
    """Range and cross-field checks; raises :class:`ConfigError` naming the key and value."""
    for key, choices in _CHOICES.items():
        value = _get(config, key)
        if key == "run.device":
            check_device(value)
        elif value not in choices:
            raise ConfigError(f"{key}: got {value!r}, expected one of {list(choices)}")
    for key in _POSITIVE:
        value = _get(config, key)
        if value <= 0:
            raise ConfigError(f"{key}: got {value!r}, expected a value > 0")
    for key in _NON_NEGATIVE:
        value = _get(config, key)
        if value < 0:
            raise ConfigError(f"{key}: got {value!r}, expected a value >= 0")
    if config.buffer.max_size is not None and config.buffer.max_size <= 0:
        raise ConfigError(f"buffer.max_size: got {config.buffer.max_size!r}, expected > 0 or null")
    if not 0.0 <= config.train.replay_ratio < 1.0:
        raise ConfigError(
            f"train.replay_ratio: got {config.train.replay_ratio!r}, expected 0 <= ratio < 1"
        )
    if config.buffer.chunk_rows is not None and config.buffer.chunk_rows <= 0:
        raise ConfigError(
            f"buffer.chunk_rows: got {config.buffer.chunk_rows!r}, expected a value > 0 or null"
        )
    if config.optim.grad_clip is not None and config.optim.grad_clip <= 0:
        raise ConfigError(f"optim.grad_clip: got {config.optim.grad_clip!r}, expected > 0 or null")
    if any(h <= 0 for h in config.model.hidden):
        raise ConfigError(f"model.hidden: got {config.model.hidden!r}, expected positive widths")
    if config.model.kind == "hf" and config.env.task != "generations":
        raise ConfigError(
            f"model.kind: 'hf' (a Hugging Face causal LM) is built by the generations task only, "
            f"not by env.task {config.env.task!r}"
        )
    t = config.train
    if (
        t.mode == "sampler"
        and config.buffer.max_size is not None
        and (config.buffer.max_size < t.batch_size)
    ):
        raise ConfigError(
            f"buffer.max_size: got {config.buffer.max_size}, expected >= train.batch_size "
            f"({t.batch_size}): one update's trajectories must fit in the buffer"
        )
    if (
        t.mode != "sampler"
        and config.buffer.max_size is not None
        and (config.buffer.max_size < t.warmup_frames)
    ):
        raise ConfigError(
            f"buffer.max_size: got {config.buffer.max_size}, expected >= train.warmup_frames "
            f"({t.warmup_frames}): the buffer would never hold enough rows to start learning"
        )
    if t.total_updates is not None and t.total_updates <= 0:
        raise ConfigError(
            f"train.total_updates: got {t.total_updates!r}, expected > 0 or null "
            "(a run of no update learns nothing)"
        )
    if t.mode == "sampler" and t.total_updates is None:
        raise ConfigError(
            "train.total_updates: got None, expected a number of updates in sampler mode"
        )
    if t.mode == "online" and t.updates_per_frame * (t.total_frames - t.warmup_frames) < 1:
        raise ConfigError(
            f"train.total_frames: got {t.total_frames}, expected enough frames after "
            f"train.warmup_frames ({t.warmup_frames}) for one update at train.updates_per_frame "
            f"({t.updates_per_frame}): the run would make no update"
        )
    if config.train.mode == "offline":
        if config.buffer.path is None:
            raise ConfigError(
                "buffer.path: got None, expected the path of an existing Zarr buffer in offline mode"
            )
        if config.train.total_updates is None:
            raise ConfigError(
                "train.total_updates: got None, expected a number of updates in offline mode"
            )
    if config.train.mode == "mixed" and config.buffer.path is None:
        raise ConfigError(
            "buffer.path: got None, expected the path of an existing Zarr buffer in mixed mode"
        )
    if not config.run.name or "/" in config.run.name:
        raise ConfigError(f"run.name: got {config.run.name!r}, expected a non-empty folder name")


def _parse_scalar(text: str) -> Any:
    """Parse an override value with YAML rules (``1e-3`` -> float, ``null`` -> None)."""
    value = yaml.safe_load(text) if text != "" else ""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a nested mapping (returns a new mapping)."""
    result = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected the form section.key=value")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"override {item!r}: expected the form section.key=value")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(text)
    return result


def config_dir() -> Traversable:
    """The shipped configs: ``zarrl/engine/configs`` of an installed wheel (package data, read with
    :mod:`importlib.resources`), or the repository's top-level ``configs/`` in a source checkout."""
    packaged = importlib.resources.files("zarrl.engine") / "configs"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "configs"


def packaged_configs() -> list[str]:
    """Names of the shipped Gym configs (``cartpole_trust_pcl``, ...), without ``.yaml``."""
    return sorted(
        p.name[: -len(".yaml")] for p in config_dir().iterdir() if p.name.endswith(".yaml")
    )


def resolve_config(name: str | Path | Traversable) -> Path | Traversable:
    """The config file ``name`` names: an existing file as given; else a shipped config by name,
    with or without ``configs/`` and ``.yaml`` (``cartpole_trust_pcl``,
    ``configs/cartpole_trust_pcl.yaml``, ``gmm/rtb``); else ``name`` unchanged (the caller reports
    that it does not exist)."""
    if not isinstance(name, (str, Path)):
        return name
    path = Path(name)
    if path.is_file() or path.is_absolute():
        return path
    parts = list(path.parts)
    if parts and parts[0] == "configs":
        parts = parts[1:]
    if not parts:
        return path
    if not parts[-1].endswith((".yaml", ".yml")):
        parts[-1] += ".yaml"
    packaged = config_dir().joinpath(*parts)
    return packaged if packaged.is_file() else path


def read_config_file(path: str | Path | Traversable) -> tuple[dict[str, Any], str]:
    """The mapping in a YAML config file (resolved with :func:`resolve_config`) and its name.

    Raises :class:`ConfigError` for a missing file (listing the shipped configs), invalid YAML, or
    a document that is not a mapping."""
    path = resolve_config(path)
    shown = str(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {shown!r} does not exist (shipped configs: "
            f"{', '.join(packaged_configs())}, gmm/<method>)"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {shown!r} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {shown!r}: expected a mapping of sections")
    return data, shown


def load_config(
    path: str | Path | Traversable | None = None, overrides: list[str] | None = None
) -> Config:
    """Read a YAML config (a path, or a shipped config's name: :func:`resolve_config`; ``None``
    starts from the defaults), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        data, _ = read_config_file(path)
    data = apply_overrides(data, overrides or [])
    return Config.from_dict(data)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (readable back with :func:`load_config`)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
