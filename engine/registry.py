"""Adapters from config sections to the other zarrl packages: losses (``zarrl.algorithms``),
environments (``zarrl.envs``) and Zarr replay storages (``zarrl.buffers``).

Each builder checks the section against what the target accepts and raises
:class:`~zarrl.engine.config.ConfigError` naming the bad key and value.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from zarrl.engine.config import BufferConfig, ConfigError, EnvConfig
from zarrl.engine.schema import conform

__all__ = [
    "BufferPathError",
    "MissingDependencyError",
    "DERIVED_LOSSES",
    "LOSSES",
    "NETWORK_ARGUMENTS",
    "WHOLE_TRAJECTORY_LOSSES",
    "build_loss",
    "create_storage",
    "episode_step_limit",
    "loss_class",
    "make_environment",
    "observation_norm_state",
    "open_storage",
]

# config name -> attribute of zarrl.algorithms
LOSSES = {
    "trust_pcl": "TrustPCLLoss",
    "pcl": "PCLLoss",
    "rtb": "RTBLoss",
    "kl_reinforce": "KLReinforceLoss",
    "sequence_rtb": "SequenceRTBLoss",
    "sequence_trust_pcl": "SequenceTrustPCLLoss",
    "sequence_kl_reinforce": "SequenceKLReinforceLoss",
    "sequence_mle": "SequenceMLELoss",
}
#: config name -> (the loss it is built from, the zarrl.algorithms function converting it): the
#: section's keyword arguments are those of the base loss
DERIVED_LOSSES = {"trust_pcl_from_rtb": ("rtb", "trust_pcl_from_rtb")}


class BufferPathError(RuntimeError):
    """A buffer path is missing, is not a zarrl store, or would be overwritten."""


class MissingDependencyError(RuntimeError):
    """An optional package the config needs is not installed; the message names the extra."""


def canonical_loss_name(name: str) -> str:
    """``trust-pcl`` (the ``zarrl experiment`` spelling) and ``trust_pcl`` both give
    ``trust_pcl``; raises :class:`ConfigError` with a "did you mean" for an unknown name."""
    canonical = str(name).strip().lower().replace("-", "_")
    names = [*LOSSES, *DERIVED_LOSSES]
    if canonical in names:
        return canonical
    close = difflib.get_close_matches(canonical, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"loss.name: got {name!r}{hint}, expected one of {', '.join(names)}")


def loss_class(name: str) -> type[nn.Module]:
    """The ``zarrl.algorithms`` class of the loss ``name`` (either spelling, see above); for a
    derived loss, the class of the loss it is built from."""
    import zarrl.algorithms as algorithms

    canonical = canonical_loss_name(name)
    base = DERIVED_LOSSES[canonical][0] if canonical in DERIVED_LOSSES else canonical
    return getattr(algorithms, LOSSES[base])


def loss_arguments(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword arguments a loss class accepts (beyond the networks)."""
    params = inspect.signature(cls).parameters
    return {
        name: p for name, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


#: the networks a loss may name in its signature -> what the task is asked for
NETWORK_ARGUMENTS = {"actor_network": "actor", "value_network": "value", "prior_network": "prior"}
#: losses whose batches must hold whole trajectories (train.slice_len >= the longest episode)
WHOLE_TRAJECTORY_LOSSES = frozenset({"rtb", "kl_reinforce", "trust_pcl_from_rtb"})
REFERENCES = ("lagged", "prior")


def build_loss(
    section: dict[str, Any],
    networks: Mapping[str, Callable[[], nn.Module] | None],
    *,
    task: str = "this task",
) -> tuple[nn.Module, str]:
    """Instantiate ``zarrl.algorithms.<LOSSES[section['name']]>`` with the networks its signature
    names, taken from ``networks`` (``{"actor", "value", "prior"}`` -> a builder, or ``None``
    where ``task`` provides none), and the other keys of ``section`` as keyword arguments.

    ``section["reference"]`` (engine-level, for losses with a ``reference_network``): ``"lagged"``
    (default: an EMA of the policy) or ``"prior"`` (the task's fixed prior). Returns the loss and
    how its reference was built (``"prior"``, ``"lagged"`` or ``"none"``).
    """
    section = dict(section)
    name = section.pop("name")
    reference = section.pop("reference", None)
    cls = loss_class(name)
    accepted = loss_arguments(cls)
    positional = [
        p for p in accepted if accepted[p].kind == inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    built: dict[str, nn.Module] = {}
    for arg in (p for p in positional if p in NETWORK_ARGUMENTS):
        what = NETWORK_ARGUMENTS[arg]
        factory = networks.get(what)
        if factory is None and accepted[arg].default is not inspect.Parameter.empty:
            continue  # an optional network the task does not provide (a stored reference)
        if factory is None:
            raise ConfigError(
                f"loss.name: {name!r} ({cls.__name__}) needs a {what} network ({arg}), which "
                f"{task} does not provide; choose a task that does (env.task: sequence provides "
                "a prior) or a loss that needs none (trust_pcl, pcl)"
            )
        built[arg] = factory()
    if "reference_network" in accepted:
        reference = "lagged" if reference is None else reference
        if reference not in REFERENCES:
            raise ConfigError(f"loss.reference: got {reference!r}, expected one of {REFERENCES}")
        if reference == "prior":
            factory = networks.get("prior")
            if factory is None:
                raise ConfigError(
                    f"loss.reference: 'prior' needs the task's prior policy, which {task} does "
                    "not provide (use loss.reference=lagged)"
                )
            built["reference_network"] = factory()
    elif reference is not None:
        raise ConfigError(
            f"loss.reference: got {reference!r}, but {cls.__name__} takes no reference network"
        )
    else:
        reference = "prior" if "prior_network" in built else "none"
    networks_args = set(NETWORK_ARGUMENTS) | {"reference_network"}
    valid = sorted(k for k in accepted if k not in networks_args)
    for key in section:
        if key not in accepted or key in networks_args:
            close = difflib.get_close_matches(str(key), [*valid, "reference"], n=1)
            hint = f" (did you mean loss.{close[0]}?)" if close else ""
            raise ConfigError(
                f"loss.{key}: unknown argument of {cls.__name__}{hint}; valid keys: "
                f"{', '.join(valid)}" + (", reference" if "reference_network" in accepted else "")
            )
    section = _check_argument_types(cls, section)
    try:
        loss = cls(**built, **section)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"loss: {cls.__name__} rejected {section}: {err}") from err
    derived = DERIVED_LOSSES.get(canonical_loss_name(name))
    if derived is not None:
        import zarrl.algorithms as algorithms

        loss = getattr(algorithms, derived[1])(loss)
    return loss, reference


def _check_argument_types(cls: type, section: dict[str, Any]) -> dict[str, Any]:
    """``section`` with each loss argument checked against its annotation
    (:func:`~zarrl.engine.schema.conform`: ``gamma=abc`` is refused here, naming the key, not
    deep inside the loss; YAML 1.1 strings such as ``1e-3`` become floats)."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: the loss checks its own arguments
        return section
    return {
        key: value if hints.get(key) is None else conform(value, hints[key], f"loss.{key}")
        for key, value in section.items()
    }


def make_environment(
    section: EnvConfig,
    *,
    seed: int,
    num_envs: int | None = None,
    obs_norm: dict[str, torch.Tensor] | None = None,
):
    """A TorchRL environment for ``section`` (CPU; collectors stay on CPU).

    ``obs_norm`` (from :func:`observation_norm_state` of another env) replaces the observation
    statistics, so that every env of a run (collector, evaluation, resumed run) normalizes alike.
    """
    from zarrl.envs import make_env

    try:
        env = make_env(
            section.name,
            num_envs=section.num_envs if num_envs is None else num_envs,
            seed=seed,
            device="cpu",
            normalize_obs=section.normalize_obs,
            max_episode_steps=section.max_episode_steps,
        )
    except Exception as err:
        hint = ""
        if type(err).__name__ == "DependencyNotInstalled" or isinstance(err, ImportError):
            hint = (
                " (MuJoCo environments need the mujoco extra: pip install 'zarrl[mujoco]')"
                if "mujoco" in str(err).lower()
                else " (a package this environment needs is not installed)"
            )
        raise ConfigError(f"env.name: cannot make {section.name!r}: {err}{hint}") from err
    if obs_norm is not None:
        norm = _observation_norm(env)
        if norm is not None:
            norm.loc.copy_(obs_norm["loc"])
            norm.scale.copy_(obs_norm["scale"])
    return env


def episode_step_limit(section: EnvConfig, default: int = 1_000) -> int:
    """The longest an episode of ``section`` can last (its time limit), for evaluation rollouts."""
    import gymnasium as gym

    limits = [section.max_episode_steps]
    with contextlib.suppress(gym.error.Error):  # unregistered ids are reported by make_env
        limits.append(gym.spec(section.name).max_episode_steps)
    limits = [n for n in limits if n]
    return min(limits) if limits else default


def _observation_norm(env):
    from torchrl.envs import ObservationNorm

    transform = getattr(env, "transform", None)
    if transform is None:
        return None
    for t in transform.modules():
        if isinstance(t, ObservationNorm):
            return t
    return None


def observation_norm_state(env) -> dict[str, torch.Tensor] | None:
    """``{"loc", "scale"}`` of the env's ``ObservationNorm`` (``None`` without one)."""
    norm = _observation_norm(env)
    if norm is None or norm.loc is None:
        return None
    return {"loc": norm.loc.detach().clone(), "scale": norm.scale.detach().clone()}


def _storage_kwargs(section: BufferConfig, writable: bool = True) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "cache": section.cache,
        "storage_options": dict(section.storage_options) or None,
    }
    if writable:
        kwargs["flush_every_rows"] = section.flush_every_rows
        kwargs["flush_every_seconds"] = section.flush_every_seconds
    return kwargs


def _layout_kwargs(section: BufferConfig, chunk_rows: int | None) -> dict[str, Any]:
    """Chunking and codecs of a new store (an existing store keeps its own)."""
    kwargs: dict[str, Any] = {"chunk_rows": section.chunk_rows or chunk_rows}
    if not section.compress:
        kwargs["compressors"] = []
    return kwargs


TRAIN_APPEND_HINT = "train with --mixed to add to it, or choose another buffer.path"


def create_storage(
    path: str | Path,
    *,
    config: BufferConfig,
    hint: str = TRAIN_APPEND_HINT,
    chunk_rows: int | None = None,
):
    """A new, empty ``ZarrStorage`` at ``path`` (CPU tensors); refuses to overwrite anything
    (``hint``: how the caller's user appends to an existing store instead). ``chunk_rows``: rows
    per chunk where ``config.chunk_rows`` is null (``None``: the storage's default)."""
    from zarrl.buffers import ZarrStorage
    from zarrl.buffers.object_store import is_url

    if is_url(path):  # s3://... (credentials from the AWS_* environment): ZarrStorage refuses
        return ZarrStorage(
            config.max_size,
            path=path,
            existsok=False,
            **_storage_kwargs(config),
            **_layout_kwargs(config, chunk_rows),
        )
    path = Path(path)
    if path.exists():
        raise BufferPathError(
            f"buffer path {str(path)!r} already exists; refusing to overwrite it ({hint})"
        )
    return ZarrStorage(
        config.max_size,
        path=str(path),
        existsok=False,
        **_storage_kwargs(config),
        **_layout_kwargs(config, chunk_rows),
    )


def open_storage(path: str | Path, *, mode: str, config: BufferConfig):
    """Open the existing zarrl store at ``path`` (``mode`` ``"r"`` or ``"r+"``, CPU tensors)."""
    from zarrl.buffers import ZarrStorage
    from zarrl.buffers.object_store import is_url

    if not is_url(path):  # a store URL is checked by ZarrStorage.open
        path = Path(path)
        if not path.exists():
            raise BufferPathError(f"buffer path {str(path)!r} does not exist")
    try:
        return ZarrStorage.open(str(path), mode=mode, **_storage_kwargs(config, mode == "r+"))
    except Exception as err:
        raise BufferPathError(f"buffer path {str(path)!r} cannot be opened: {err}") from err
