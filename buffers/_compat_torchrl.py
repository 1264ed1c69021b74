"""The TorchRL internals zarrl relies on, in one place (TorchRL 0.14).

Each function names the private attribute it reads; if a TorchRL release moves one, this module
is the only place to change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def save_hooks(storage: Any) -> list[Callable]:
    """Hooks registered by ``rb.register_save_hook`` (kept by the storage's checkpointer in
    ``StorageCheckpointerBase._save_hooks``), called as ``hook(data, path=path)``."""
    return list(getattr(storage.checkpointer, "_save_hooks", ()))


def load_hooks(storage: Any) -> list[Callable]:
    """Hooks registered by ``rb.register_load_hook`` (``_load_hooks``), called as
    ``hook(data, out=None)``."""
    return list(getattr(storage.checkpointer, "_load_hooks", ()))


def buffer_sampler(buffer: Any) -> Any | None:
    """The sampler of a replay buffer: ``_sampler`` once built, else the ``_init_sampler``
    instance it will use (``None`` when neither exists yet or it is built later)."""
    state = getattr(buffer, "__dict__", {})
    sampler = state.get("_sampler")
    if sampler is None:
        sampler = state.get("_init_sampler")
    return sampler


def buffer_lock(buffer: Any) -> Any | None:
    """The buffer's ``_replay_lock`` (held by TorchRL around extends, samples and priority
    updates), or ``None``."""
    return getattr(buffer, "__dict__", {}).get("_replay_lock")
