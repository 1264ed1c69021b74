"""The tensordict internals zarrl relies on, in one place (tensordict 0.14).

Both skip work on zarrl's hot read path: a batch gathered from the chunk cache already has the
right shapes and device, and a lazy view's leaves are read from Zarr only when looked up.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch
from tensordict import TensorDict

__all__ = ["CHECKED_TENSORDICT", "is_leaf_nontensor", "td_from_leaves", "td_with_leaf_mapping"]

#: tensordict releases these functions were checked against
CHECKED_TENSORDICT = ("0.14.3",)


def td_from_leaves(
    source: dict[str, Any], batch_size: torch.Size, device: torch.device | None
) -> TensorDict:
    """A TensorDict over ``source`` (tensors and TensorDicts whose leading dims already equal
    ``batch_size``, on ``device``) without validating them: ``TensorDict._new_unsafe``."""
    return TensorDict._new_unsafe(source=source, batch_size=batch_size, device=device)


def td_with_leaf_mapping(
    leaves: MutableMapping[str, Any], batch_size: torch.Size, device: torch.device | None
) -> TensorDict:
    """An empty TensorDict whose leaf storage is replaced by ``leaves`` (a mapping that may load
    its values on first access): the private ``_tensordict`` attribute."""
    td = TensorDict._new_unsafe(source={}, batch_size=batch_size, device=device)
    td._tensordict = leaves
    return td


def is_leaf_nontensor(cls: type) -> bool:
    """``is_leaf`` for ``TensorDictBase.items`` that also yields non-tensor leaves (so they are
    refused by name instead of dropped): ``tensordict.base._is_leaf_nontensor``."""
    from tensordict.base import _is_leaf_nontensor

    return _is_leaf_nontensor(cls)
