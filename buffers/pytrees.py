"""Plain Python pytrees (dicts, lists and tuples of tensors) as stored leaves.

``LazyMemmapStorage`` stores ``{"a": t, "b": (u, [v])}`` leaf by leaf and returns the same
structure; ``ZarrStorage`` does the same by flattening the tree into array paths (``a``, ``b/0``,
``b/1/0``) and recording its structure in the store (JSON: ``null`` is a leaf,
``{"dict": {...}}``, ``{"list": [...]}``, ``{"tuple": [...]}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .errors import StoreFormatError

Structure = Any  # None (a leaf) | {"dict": {k: Structure}} | {"list"|"tuple": [Structure]}
_KINDS = {"list": list, "tuple": tuple}


def is_pytree(data: Any) -> bool:
    """Whether ``data`` is a dict, list or tuple (not a TensorDict, not a tensor)."""
    return isinstance(data, (dict, list, tuple))


def flatten(tree: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Structure]:
    """``{array path: tensor}`` and the structure of ``tree``; raises ``TypeError`` for a leaf
    that is not a tensor (naming its path)."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}, None
    if isinstance(tree, dict):
        items = list(tree.items())
        kind = "dict"
    elif isinstance(tree, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(tree)]
        kind = "list" if isinstance(tree, list) else "tuple"
    else:
        raise TypeError(
            f"pytree leaf {prefix or '<root>'!r}: ZarrStorage stores tensors in dicts, lists "
            f"and tuples, got {type(tree).__name__}"
        )
    if not items:
        raise TypeError(f"pytree node {prefix or '<root>'!r} is empty: nothing to store")
    leaves: dict[str, torch.Tensor] = {}
    children = {}
    for key, value in items:
        if not isinstance(key, str):
            raise TypeError(f"pytree dict keys must be strings, got {key!r} under {prefix!r}")
        sub, children[key] = flatten(value, f"{prefix}/{key}" if prefix else key)
        leaves.update(sub)
    if kind == "dict":
        return leaves, {"dict": children}
    return leaves, {kind: list(children.values())}


def unflatten(leaves: Mapping[str, Any], structure: Structure, prefix: str = "") -> Any:
    """The pytree of ``structure`` with its leaves taken from ``leaves`` by array path."""
    if structure is None:
        return leaves[prefix]
    ((kind, children),) = structure.items()
    if kind == "dict":
        return {
            k: unflatten(leaves, sub, f"{prefix}/{k}" if prefix else k)
            for k, sub in children.items()
        }
    values = [
        unflatten(leaves, sub, f"{prefix}/{i}" if prefix else str(i))
        for i, sub in enumerate(children)
    ]
    return _KINDS[kind](values)


def stack(elements: list) -> Any:
    """One pytree whose leaves stack the leaves of ``elements`` (all of one structure) along a
    new dim 0: what ``rb.extend([tree, tree, ...])`` stores."""
    flat = [flatten(e) for e in elements]
    structure = flat[0][1]
    if any(s != structure for _, s in flat[1:]):
        raise ValueError("the elements of the list do not share one pytree structure")
    stacked = {path: torch.stack([f[0][path] for f in flat]) for path in flat[0][0]}
    return unflatten(stacked, structure)


def leaf_paths(structure: Structure, prefix: str = "") -> list[str]:
    """Array paths of the leaves of ``structure``."""
    if structure is None:
        return [prefix]
    ((kind, children),) = structure.items()
    named = children.items() if kind == "dict" else ((str(i), s) for i, s in enumerate(children))
    out = []
    for key, sub in named:
        out += leaf_paths(sub, f"{prefix}/{key}" if prefix else key)
    return out


def validate_structure(value: Any, schema: Mapping, where: str) -> Structure:
    """A structure read from a store: well formed, and its leaves are the schema's arrays."""

    def check(node: Any, depth: int) -> None:
        if node is None:
            return
        if depth > 64 or not isinstance(node, Mapping) or len(node) != 1:
            raise ValueError
        ((kind, children),) = node.items()
        if kind == "dict" and isinstance(children, Mapping):
            items = children.values()
        elif kind in _KINDS and isinstance(children, list):
            items = children
        else:
            raise ValueError
        if not items:
            raise ValueError
        for child in items:
            check(child, depth + 1)

    try:
        check(value, 0)
        paths = leaf_paths(value)
    except (ValueError, AttributeError, TypeError):
        paths = None
    if paths is None or sorted(paths) != sorted(schema):
        raise StoreFormatError(
            f"{where}/zarr.json: attributes['zarrl']['pytree'] = {value!r} is invalid: expected "
            "a pytree structure whose leaves are the arrays of the schema"
        )
    return value
