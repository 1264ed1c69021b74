"""A TensorDict whose leaves are materialised on first access.

``ZarrStorage[:]`` must be cheap (TorchRL's ``SliceSampler`` calls ``storage[:][traj_key]`` at
every sample), yet the buffer can be larger than RAM. The view returned holds the RAM-resident
index columns eagerly and reads any other leaf (the whole column, as real tensors) only when
it is first looked up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from tensordict import TensorDict

from .format import path_key


class _LazyLeaves(dict):
    """The ``_tensordict`` mapping of a TensorDict with some leaves produced by loaders."""

    def __init__(self, eager: Mapping, loaders: Mapping[str, Callable[[], torch.Tensor]]):
        super().__init__(eager)
        self._loaders = dict(loaders)
        for key in self._loaders:
            dict.__setitem__(self, key, None)

    def _value(self, key):
        value = dict.__getitem__(self, key)
        if value is None and key in self._loaders:
            value = self._loaders.pop(key)()
            dict.__setitem__(self, key, value)
        return value

    def __getitem__(self, key):
        return self._value(key)

    def get(self, key, default=None):
        return self._value(key) if key in self else default

    def items(self):
        return [(k, self._value(k)) for k in list(dict.keys(self))]

    def values(self):
        return [self._value(k) for k in list(dict.keys(self))]

    def __iter__(self):
        return iter(list(dict.keys(self)))


def lazy_tensordict(
    eager: Mapping[str, torch.Tensor],
    lazy: Mapping[str, Callable[[], torch.Tensor]],
    batch_size,
    device,
) -> TensorDict:
    """TensorDict over leaf paths (``"next/obs"``): ``eager`` tensors + ``lazy`` loaders."""
    tree: dict = {}
    for path, value in list(eager.items()) + list(lazy.items()):
        parts = path_key(path)
        parts = (parts,) if isinstance(parts, str) else parts
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = ("eager", value) if path in eager else ("lazy", value)

    def build(node: dict) -> TensorDict:
        eager_leaves, loaders = {}, {}
        for name, child in node.items():
            if isinstance(child, dict):
                eager_leaves[name] = build(child)
            elif child[0] == "eager":
                eager_leaves[name] = child[1]
            else:
                loaders[name] = child[1]
        td = TensorDict({}, batch_size=batch_size, device=device)
        td._tensordict = _LazyLeaves(eager_leaves, loaders)
        return td

    return build(tree)
