"""The one config machinery of zarrl: dataclass schemas checked through OmegaConf.

Every config of the engine (learner runs, the GMM experiment's method configs) is a tree of
dataclasses, one per section. :func:`build` turns a nested mapping (YAML plus dotted overrides)
into that tree through OmegaConf's structured configs, which check keys and convert types
(``"1e-3"`` to a float, ``7`` to ``7.0``, ``null`` for optional fields, lists item by item).
zarrl adds what OmegaConf lets through: a number where a boolean or a string is expected is
refused rather than converted (``log.progress=3`` is an error, not ``True``), and every error is
a :class:`ConfigError` naming the dotted key, the value and what was expected, with a "did you
mean" for unknown keys. Open sections (a loss's keyword arguments, a task's options) are typed
``dict[str, Any]`` and checked by whoever consumes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["ConfigError", "build", "conform", "describe_type", "unknown_key"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key and the value."""


def describe_type(tp: Any) -> str:
    """A short name of an annotation for error messages (``int | None``, ``list[int]``)."""
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def conform(value: Any, tp: Any, key: str) -> Any:
    """``value`` as the annotation ``tp`` takes it, or a :class:`ConfigError` naming ``key``.

    The one value-against-type check of zarrl's configs (dataclass sections, a loss's keyword
    arguments, a task's options). Accepted: a value of the type; an int where a float goes (made
    a float); a number written as a YAML 1.1 string (``"1e-3"``) where a number goes (parsed);
    ``None`` where the annotation allows it; lists item by item (``key[i]`` named); anything for
    ``Any``, mappings and annotations it does not know. Refused: the lossy conversions other
    readers make silently (a number where a boolean or a string goes, a boolean where a number
    goes, ``3.5`` where an int goes).
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in (t for t in options if t is not type(None)):
            with contextlib.suppress(ConfigError):
                return conform(value, option, key)
        raise _mismatch(value, tp, key)
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise _mismatch(value, tp, key)
    if tp is type(None):
        if value is None:
            return None
        raise _mismatch(value, tp, key)
    if tp is bool or tp is str:
        if isinstance(value, tp):
            return value
        raise _mismatch(value, tp, key)
    if tp is int or tp is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return conform(tp(value.strip()), tp, key)
        elif isinstance(value, int) and not isinstance(value, bool):
            return tp(value)
        elif tp is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        raise _mismatch(value, tp, key)
    if origin is list and isinstance(value, (list, tuple)):
        (item,) = typing.get_args(tp) or (Any,)
        return [conform(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is list or tp is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise _mismatch(value, tp, key)
    return value


def _mismatch(value: Any, tp: Any, key: str) -> ConfigError:
    return ConfigError(
        f"{key}: got {value!r} ({type(value).__name__}), expected {describe_type(tp)}"
    )


def unknown_key(
    key: Any, valid: list[str], prefix: str = "", what: str = "unknown key"
) -> ConfigError:
    """The error for ``prefix + key`` not among ``valid``, with a "did you mean" when one is
    close: ``"<prefix><key>: <what> (did you mean <prefix><close>?); valid keys here: ..."``."""
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return ConfigError(f"{prefix}{key}: {what}{hint}; valid keys here: {', '.join(valid)}")


def _check(cls: type, data: Any, prefix: str) -> None:
    """Keys and strict types of ``data`` against the dataclass ``cls`` (recursively)."""
    if not isinstance(data, Mapping):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: got {data!r}, expected a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        if key not in names:
            raise unknown_key(key, names, prefix)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _check(tp, value, f"{prefix}{key}.")
        elif typing.get_origin(tp) is dict or tp is dict:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{key}: got {value!r}, expected a mapping")
        else:
            conform(value, tp, f"{prefix}{key}")


def _lookup(data: Any, dotted: str) -> Any:
    """The value at an OmegaConf ``full_key`` (``a.b[1]``) of ``data`` (``None`` if absent)."""
    for part in dotted.replace("[", ".").replace("]", "").split("."):
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """The dataclass tree ``cls`` built from ``data`` (missing keys take their defaults).

    Raises :class:`ConfigError` naming the dotted key for an unknown key, a value of the wrong
    type, or a mapping where a value is expected (and the reverse).
    """
    _check(cls, data, prefix)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), data)
        return typing.cast(T, OmegaConf.to_object(merged))
    except OmegaConfBaseException as err:
        key = f"{prefix}{err.full_key}" if getattr(err, "full_key", None) else prefix or "config"
        value = _lookup(data, str(getattr(err, "full_key", "") or ""))
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{key.rstrip('.')}: got {value!r}, {reason}") from None
