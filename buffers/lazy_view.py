"""A TensorDict whose leaves are materialised on first access.

``ZarrStorage[:]`` must be cheap (TorchRL's ``SliceSampler`` calls ``storage[:][traj_key]`` at
every sample), yet the buffer can be larger than RAM. The view returned holds the RAM-resident
index columns eagerly and reads any other leaf (the whole column, as real tensors) only when
it is first looked up.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase, is_tensor_collection
from zarrl.buffers._compat_tensordict import td_with_leaf_mapping


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
    tree = path_tree(tuple(eager) + tuple(lazy))
    return _build(tree, eager, lazy, torch.Size(batch_size), device)


def _build(node: dict, eager, lazy, batch_size: torch.Size, device) -> TensorDict:
    """One level of ``lazy_tensordict``. A module function, not a recursive closure: such a
    closure is a reference cycle holding ``eager`` (whole columns) until the cyclic GC runs."""
    eager_leaves, loaders = {}, {}
    for name, child in node.items():
        if isinstance(child, dict):
            eager_leaves[name] = _build(child, eager, lazy, batch_size, device)
        elif child in eager:
            eager_leaves[name] = eager[child]
        else:
            loaders[name] = lazy[child]
    return td_with_leaf_mapping(_LazyLeaves(eager_leaves, loaders), batch_size, device)


@functools.lru_cache(maxsize=64)
def path_tree(paths: tuple[str, ...]) -> dict:
    """Nesting of leaf paths: ``("a", "next/b")`` -> ``{"a": "a", "next": {"b": "next/b"}}``
    (cached, as a store's schema is fixed; callers must not modify it)."""
    tree: dict = {}
    for path in paths:
        *parents, name = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = path
    return tree


def writable_view(view: TensorDict, storage: Any) -> StorageView:
    """``view`` (``storage[:]``) made a ``StorageView`` whose row assignments are written into
    ``storage`` (held by weak reference) with ``storage.set(index, value, set_cursor=False)``."""
    view.__class__ = StorageView
    view.bind(weakref.ref(storage), swapped=False)
    return view


class StorageView(TensorDict):
    """``storage[:]`` of a writable ``ZarrStorage`` (``writable_view``): ``view[index] = td`` writes the rows into
    the storage (TorchRL routes ``rb[i, j] = td`` through ``storage[:][i, j] = td``); assigning a
    whole key is refused instead of changing a copy."""

    def __setitem__(self, index, value) -> None:
        ref = self.__dict__.get("_zarrl_storage")
        storage = ref() if ref is not None else None
        if storage is None:
            return super().__setitem__(index, value)
        if isinstance(index, str) or (
            isinstance(index, tuple) and index and all(isinstance(i, str) for i in index)
        ):
            raise TypeError(
                f"{storage.where}: assigning the key {index!r} of storage[:] would only change "
                "a copy; write rows instead (rb[index] = td with every stored key)"
            )
        if self.__dict__.get("_zarrl_swapped"):  # a transposed view (buffers with dim_extend=1)
            if isinstance(index, tuple) and len(index) == 2:
                index = index[::-1]
            elif not isinstance(index, tuple):
                index = (slice(None), index)
            if is_tensor_collection(value) and value.batch_dims >= 2:
                value = value.transpose(0, 1)
        storage.set(index, value, set_cursor=False)

    def transpose(self, dim0: int, dim1: int) -> TensorDictBase:
        out = super().transpose(dim0, dim1)
        ref = self.__dict__.get("_zarrl_storage")
        if ref is None or self.batch_dims != 2 or {dim0 % 2, dim1 % 2} != {0, 1}:
            return out
        out.__class__ = StorageView
        out.bind(ref, swapped=not self.__dict__.get("_zarrl_swapped", False))
        return out

    def bind(self, storage: weakref.ref, swapped: bool) -> None:
        """Makes row assignments go to ``storage()``; ``swapped``: this view is the transpose
        of ``storage[:]`` (its first two dims exchanged)."""
        self._zarrl_storage = storage
        self._zarrl_swapped = swapped
