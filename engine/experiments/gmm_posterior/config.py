"""Configuration of the GMM posterior experiment (``zarrl experiment gmm-posterior``).

Each trained method is an ordinary learner config, ``configs/gmm/<method>.yaml`` (``env.task:
gmm_posterior``, ``train.mode: sampler``, ``loss.name: rtb | trust_pcl_from_rtb | trust_pcl |
kl_reinforce``), loaded and checked by :func:`zarrl.engine.config.load_config`; the experiment's
own section, ``configs/gmm/sweep.yaml`` (:class:`SweepConfig`), names the methods, the seeds, the
experiment folder and the untrained classifier-guidance sampler evaluated beside them. Loading
torch is left to the experiment: this module only reads YAML (the command line imports it).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path

from zarrl.engine.config import (
    Config,
    ConfigError,
    config_dir,
    load_config,
    read_config_file,
)
from zarrl.engine.schema import build

__all__ = [
    "GMM_CONFIGS",
    "GUIDANCE",
    "METHODS",
    "GuidanceConfig",
    "SweepConfig",
    "canonical_method",
    "load_method_config",
    "load_sweep",
    "method_config_path",
]

#: Folder of the method configs and the sweep (package data of an installed wheel, or the checkout's).
GMM_CONFIGS = config_dir() / "gmm"

#: The untrained sampler evaluated beside the trained methods.
GUIDANCE = "guidance"

#: Method names in report order (``configs/gmm/<name>.yaml`` with ``-`` written ``_``).
METHODS = (
    "rtb",
    "trust-pcl-equivalent",
    "trust-pcl",
    "kl-reinforce-off-policy",
    "kl-reinforce-on-policy",
    "original-baseline",
    GUIDANCE,
)


@dataclass
class GuidanceConfig:
    """Classifier guidance: the prior's drift + ``scale``·σ²·(i/(i+1))·∇log r, no training,
    evaluated with the task settings of the method ``config``."""

    scale: float = 1.0
    config: str = "rtb"


@dataclass
class SweepConfig:
    """The experiment's own section: which methods, which seeds, where."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    dir: str = "runs/gmm-posterior"
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)


def load_sweep(path: str | Path | Traversable | None = None) -> SweepConfig:
    """The sweep section (default ``configs/gmm/sweep.yaml``), checked."""
    data, _ = read_config_file(GMM_CONFIGS / "sweep.yaml" if path is None else path)
    sweep = build(SweepConfig, data)
    for method in sweep.methods:
        canonical_method(method)
    return sweep


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
    """``configs/gmm/<method>.yaml`` (``-`` written ``_``); raises ``ConfigError`` if unknown or
    for :data:`GUIDANCE`, which trains nothing and has no learner config."""
    name = canonical_method(method)
    if name == GUIDANCE:
        raise ConfigError(f"--methods: {GUIDANCE!r} trains nothing and has no learner config")
    return GMM_CONFIGS / f"{name.replace('-', '_')}.yaml"


def load_method_config(
    method: str, overrides: list[str] | None = None, *, seed: int | None = None, root=None
) -> Config:
    """A method's learner config with the dotted ``overrides``; with ``root`` and ``seed``, its
    run folder is ``<root>/<method>/seed<seed>`` and its seed ``seed``."""
    extra = list(overrides or [])
    if root is not None:
        extra.append(f"run.dir={Path(root) / canonical_method(method)}")
    if seed is not None:
        extra += [f"run.seed={seed}", f"run.name=seed{seed}"]
    return load_config(method_config_path(method), extra)
