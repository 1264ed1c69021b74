"""Rows as ``ZarrStorage`` stores them: the data it accepts (TensorDicts, tensors, pytrees,
lists of elements) turned into a TensorDict of stored leaves, the header inferred from the
first element, the schema check of every later write, and TensorDicts rebuilt from leaves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from tensordict import LazyStackedTensorDict, TensorDict, TensorDictBase, is_tensor_collection

from . import codecs as leaf_codecs
from . import pytrees, xor_rows
from ._compat_tensordict import is_leaf_nontensor, td_from_leaves
from .commit_log import CommitLog
from .format import Header, LeafSpec, describe_schema, key_path, numpy_dtype_name
from .lazy_view import path_tree
from .seals import seal_spec

TENSOR_KEY = "_tensor"
TARGET_CHUNK_BYTES = 2**23  # 4 to 8 MiB of all leaves per chunk (rows: a power of two)
MAX_CHUNK_ROWS = 65536  # default chunks of tiny rows
RESERVED_NAMES = frozenset({"zarr.json", ".zattrs", ".zgroup", ".zarray"})
INDEX_MAX_BYTES = 16  # leaves with at most this many bytes per element stay in RAM


def flip_list(data: list) -> Any:
    """A list of elements (TensorDicts, pytrees or tensors) stacked along a new dim 0."""
    if is_tensor_collection(data[0]):
        return torch.stack(data)
    if pytrees.is_pytree(data[0]):
        return pytrees.stack(data)
    return torch.stack([torch.as_tensor(d) for d in data])


def infer_header(
    element: TensorDictBase,
    ndim: int,
    capacity: Callable[[tuple[int, ...]], int | None],
    chunk_rows: int | None = None,
    index_keys: list[str] | None = None,
    compressors: list | Mapping[str, list] | None = None,
    dedupe_next: bool = False,
) -> Header:
    """The header of a store whose first element is ``element`` (``ndim - 1`` batch dims):
    schema, chunk rows (default 4 to 8 MiB per chunk), index columns, codecs, XOR pairs, seals.
    ``capacity``: rows along dim 0 for the element's batch dims (a function of the tail)."""
    tail = tuple(element.batch_size)
    if len(tail) != ndim - 1:
        raise ValueError(
            f"expected one element to have {ndim - 1} batch dims for ndim={ndim}, "
            f"got batch_size={tuple(element.batch_size)}"
        )
    schema = {}
    for key, leaf in tensor_leaves(element):
        schema[key_path(key)] = LeafSpec(
            numpy_dtype_name(leaf.dtype, key), tuple(leaf.shape[len(tail) :])
        )
    if not schema:
        raise ValueError("cannot store a TensorDict without tensor leaves")
    tail_n = max(1, math.prod(tail))
    row_bytes = tail_n * sum(s.nbytes for s in schema.values())
    if chunk_rows is not None:
        chunk_rows = int(chunk_rows)
    else:
        chunk_rows = 2 ** int(math.log2(max(1, TARGET_CHUNK_BYTES // max(1, row_bytes))))
        chunk_rows = int(min(chunk_rows, MAX_CHUNK_ROWS))  # a huge row: one row per chunk
    if index_keys is not None:
        missing = set(index_keys) - set(schema)
        if missing:
            raise ValueError(f"index_keys {sorted(missing)} are not in the data")
        index_keys = list(index_keys)
    else:
        index_keys = [k for k, s in schema.items() if s.nbytes <= INDEX_MAX_BYTES]
    return Header(
        capacity=capacity(tail),
        ndim=ndim,
        tail=tail,
        chunk_rows=chunk_rows,
        schema=schema,
        index_keys=index_keys,
        tensor_root=False,
        codec={  # informative: each array's metadata holds its codecs
            "chains": {
                path: leaf_codecs.describe(
                    leaf_codecs.array_options(path, spec, 1 + len(tail), compressors)
                )
                for path, spec in schema.items()
            }
        },
        xor_previous=xor_rows.pairs_for(schema, set(index_keys)) if dedupe_next else {},
        chunk_seals=seal_spec(list(schema)),
    )


def as_tensordict(data: Any, batched: bool, ndim: int, log: CommitLog) -> TensorDictBase:
    """``data`` as a TensorDict with ``ndim`` batch dims (``ndim - 1`` for one element):
    tensors under ``TENSOR_KEY``, pytrees by leaf path; a TensorDict's further batch dims
    (a ``[N, 4]`` batch in an ``ndim=1`` storage) become leading leaf dims
    (``item_batch``)."""
    nb = (1 if batched else 0) + ndim - 1
    if is_tensor_collection(data):
        if data.batch_dims <= nb:
            return data
        extra = tuple(data.batch_size[nb:])
        if log.header is not None and extra != log.item_batch:
            raise ValueError(
                f"data batch dims {tuple(data.batch_size)}: the store holds elements of "
                f"batch {list(log.item_batch)} beyond its ndim={ndim}; nothing was "
                "written"
            )
        if isinstance(data, LazyStackedTensorDict):
            stored_leaves(data)  # a ragged stack is refused by name
            data = data.contiguous()
        if type(data) is not TensorDict:
            data = data.to_tensordict()
        data = data.clone(recurse=False)
        data.batch_size = data.batch_size[:nb]
        log.item_batch = extra
        return data
    if isinstance(data, torch.Tensor):
        return TensorDict({TENSOR_KEY: data}, batch_size=data.shape[:nb])
    if pytrees.is_pytree(data):
        leaves, structure = pytrees.flatten(data)
        if log.header is not None and structure != log.pytree:
            raise ValueError(
                f"pytree structure {structure} does not match the stored {log.pytree}; "
                "nothing was written"
            )
        log.pytree = structure
        first = next(iter(leaves.values()))
        td = TensorDict(batch_size=first.shape[:nb])
        for path, leaf in leaves.items():
            td.set(tuple(path.split("/")), leaf)
        return td
    raise TypeError(
        f"ZarrStorage stores TensorDicts, tensors and pytrees (dicts, lists and tuples of "
        f"tensors), got {type(data)}"
    )


def validate(td: TensorDictBase, header: Header) -> dict[str, torch.Tensor]:
    """Leaves of ``td`` keyed by path, checked against the schema (raises, writes nothing)."""
    leaves = {}
    for key, leaf in tensor_leaves(td):
        leaves[key_path(key)] = leaf
    got = {
        k: LeafSpec(numpy_dtype_name(v.dtype, k), tuple(v.shape[td.batch_dims :]))
        for k, v in leaves.items()
    }
    if got != header.schema:
        bad = sorted(set(got) ^ set(header.schema)) or sorted(
            k for k in got if got[k] != header.schema[k]
        )
        raise ValueError(
            f"data does not match the stored schema at key(s) {bad}: stored schema "
            f"{describe_schema(header.schema)}, data schema {describe_schema(got)}; "
            "nothing was written"
        )
    tail = tuple(td.batch_size[1:])
    if tail != header.tail:
        raise ValueError(
            f"data batch dims {tuple(td.batch_size)} do not match the stored "
            f"[rows, *{list(header.tail)}]; nothing was written"
        )
    return leaves


def tensor_leaves(td: TensorDictBase) -> list[tuple[Any, torch.Tensor]]:
    """``stored_leaves(td)``, refusing a non-tensor leaf by name (nothing is written)."""
    items = stored_leaves(td)
    for key, leaf in items:
        if not isinstance(leaf, torch.Tensor):
            raise ValueError(
                f"key {key!r}: only tensors can be stored, got {type(leaf).__name__} "
                "(non-tensor leaves such as td.set_non_tensor values are not stored by "
                "ZarrStorage: encode them as tensors or td.exclude() them); nothing was written"
            )
    return items


def stored_leaves(td: TensorDictBase) -> list[tuple[Any, Any]]:
    """``(key, leaf)`` of every leaf of ``td``, non-tensor leaves included (so they are refused
    by name instead of dropped); raises for a ragged lazy stack or a reserved leaf name."""
    try:
        items = list(td.items(include_nested=True, leaves_only=True, is_leaf=is_leaf_nontensor))
    except RuntimeError as err:
        if isinstance(td, LazyStackedTensorDict):
            raise ValueError(
                "ZarrStorage cannot store a ragged lazy stack (its elements' leaves differ in "
                "shape): pad them to one shape first with zarrl.buffers.pad_sequences (and "
                "unpad after sampling), or use torchrl's LazyStackStorage; "
                f"stacking failed with: {err}"
            ) from err
        raise
    for key, _ in items:
        parts = (key,) if isinstance(key, str) else tuple(key)
        if any(part in RESERVED_NAMES for part in parts):
            raise ValueError(
                f"key {key!r}: {sorted(RESERVED_NAMES)} are zarr metadata names and cannot be "
                "leaf names; rename the leaf"
            )
    return items


def nested_td(leaves: Mapping[str, torch.Tensor], batch: torch.Size, device) -> TensorDict:
    """TensorDict from ``{"next/obs": tensor}`` leaves, without per-key validation (the leaves
    come from the store's own schema, already checked)."""
    return build_td(path_tree(tuple(leaves)), leaves, batch, device)


def build_td(node: dict, leaves: Mapping[str, torch.Tensor], batch, device) -> TensorDict:
    """One level of ``nested_td``. A module function, not a recursive closure: such a closure
    is a reference cycle holding ``leaves`` (a whole batch) until the cyclic GC runs."""
    source = {
        k: build_td(v, leaves, batch, device) if isinstance(v, dict) else leaves[v]
        for k, v in node.items()
    }
    return td_from_leaves(source, batch, device)
