"""The zarrl replay-store format: one Zarr v3 group, one array per TensorDict leaf.

Layout (see ``docs/storage_format.md``)::

    <group>/zarr.json          attributes["zarrl"] = header + schema + commit record
    <group>/<key>              one array per leaf, shape [physical_rows, *tail, *leaf_shape]
    <group>/<key>/<subkey>     nested TensorDict keys are sub-groups

Rows are stored in *write order* (a physical log): the live rows of a ring buffer of capacity
``C`` are the physical rows ``[base + max(0, n - C), base + n)`` where ``n`` is the committed
``write_count``. Committed chunks are never rewritten by appends, so a crash or a concurrent reader
can never see a torn row; the commit record (group attributes) is written last.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import zarr
import zarr.codecs

from . import seals
from .errors import CorruptChunkError, ReadOnlyStorageError, StoreFormatError, UnsafeStoreError
from .store_io import put_group_attributes

__all__ = [
    "CorruptChunkError",
    "ReadOnlyStorageError",
    "StoreFormatError",
    "UnsafeStoreError",
]

FORMAT_NAME = "zarrl.replay"
FORMAT_VERSION = 3  # the newest version this zarrl reads, written for new stores
PLAIN_VERSION = 1  # stores without de-duplicated leaves (``xor_previous``)
SEALED_VERSION = 3  # chunks bound to their place, metadata to its checksums (``seals.py``)
ATTR = "zarrl"

_TORCH_TO_NUMPY = {
    torch.float64: "float64",
    torch.float32: "float32",
    torch.float16: "float16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.int16: "int16",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.bool: "bool",
    torch.complex64: "complex64",
    torch.complex128: "complex128",
}
_NUMPY_TO_TORCH = {v: k for k, v in _TORCH_TO_NUMPY.items()}


def numpy_dtype_name(dtype: torch.dtype, key: str) -> str:
    """Name of the numpy dtype a torch dtype is stored as; raises for unsupported dtypes."""
    try:
        return _TORCH_TO_NUMPY[dtype]
    except KeyError:
        raise ValueError(
            f"key {key!r}: dtype {dtype} cannot be stored; supported: "
            f"{sorted(str(d) for d in _TORCH_TO_NUMPY)}"
        ) from None


def torch_dtype(name: str) -> torch.dtype:
    return _NUMPY_TO_TORCH[name]


@dataclass(frozen=True)
class LeafSpec:
    """One stored leaf: numpy dtype name and per-element shape (after the batch dims)."""

    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape)}

    @property
    def nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.shape, dtype=np.int64)))


def key_path(key: str | tuple[str, ...]) -> str:
    """Nested TensorDict key -> array path inside the group (``("next", "obs")`` -> ``next/obs``)."""
    parts = (key,) if isinstance(key, str) else tuple(key)
    for part in parts:
        if "/" in part or part.startswith(".") or not part:
            raise ValueError(f"key {key!r}: leaf names must be non-empty and contain no '/'")
    return "/".join(parts)


def path_key(path: str) -> str | tuple[str, ...]:
    parts = tuple(path.split("/"))
    return parts[0] if len(parts) == 1 else parts


@dataclass
class Commit:
    """The commit record: what a reader may trust. Written last, after the data it describes.

    ``base``: physical row where the current epoch starts (after ``_empty``); ``write_count``:
    rows appended since ``base``; ``length``: TorchRL ``len(storage)`` (elements);
    ``extent``: physical rows allocated in the arrays; ``inplace_revision``: bumped by every
    flush that rewrote already-committed rows (not appends), so readers drop their caches;
    ``gc_below``: chunks wholly below this physical row may be deleted once this record is
    published (it lags the live window by one commit).
    """

    revision: int = 0
    base: int = 0
    write_count: int = 0
    length: int = 0
    extent: int = 0
    inplace_revision: int = 0
    gc_below: int = 0
    time: float = 0.0
    # version 3: {leaf: crc32c} of the partly filled head chunk ({} when there is none)
    head: dict[str, int] | None = None

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        if self.head is None:
            del out["head"]
        else:
            out["head"] = dict(self.head)
        return out

    @classmethod
    def from_json(cls, d: Mapping) -> Commit:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Header:
    """Static description of a store: capacity, batch layout, schema, chunking."""

    capacity: int | None  # rows along dim 0; None = growing
    ndim: int
    tail: tuple[int, ...]  # batch dims after dim 0 (ndim > 1)
    chunk_rows: int
    schema: dict[str, LeafSpec]
    index_keys: list[str]  # leaves mirrored in RAM (trajectory index, flags, rewards)
    tensor_root: bool  # the buffer stores a bare tensor under key "_tensor"
    codec: dict = field(default_factory=dict)
    # {leaf X: "next/X"}: X is stored XORed with the previous row of next/X (``xor_rows.py``)
    xor_previous: dict[str, str] = field(default_factory=dict)
    # version 3: where the seal table is and which leaves it covers (``seals.seal_spec``)
    chunk_seals: dict | None = None

    @property
    def format_version(self) -> int:
        """Version a reader needs: 3 for sealed stores (every new store), else 2 when the
        store de-duplicates leaves, else 1."""
        if self.chunk_seals is not None:
            return SEALED_VERSION
        return 2 if self.xor_previous else PLAIN_VERSION

    def to_json(self) -> dict:
        out = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "capacity": self.capacity,
            "ndim": self.ndim,
            "tail": list(self.tail),
            "chunk_rows": self.chunk_rows,
            "schema": {k: v.to_json() for k, v in self.schema.items()},
            "index_keys": list(self.index_keys),
            "tensor_root": self.tensor_root,
            "codec": self.codec,
        }
        if self.xor_previous:
            out["xor_previous"] = dict(self.xor_previous)
        if self.chunk_seals is not None:
            out["chunk_seals"] = dict(self.chunk_seals)
        return out

    @classmethod
    def from_json(cls, d: Mapping) -> Header:
        return cls(
            capacity=d["capacity"],
            ndim=int(d["ndim"]),
            tail=tuple(d["tail"]),
            chunk_rows=int(d["chunk_rows"]),
            schema={k: LeafSpec(v["dtype"], tuple(v["shape"])) for k, v in d["schema"].items()},
            index_keys=list(d["index_keys"]),
            tensor_root=bool(d["tensor_root"]),
            codec=dict(d.get("codec", {})),
            xor_previous=dict(d.get("xor_previous", {})),
            chunk_seals=d.get("chunk_seals"),
        )


def describe_schema(schema: Mapping[str, LeafSpec]) -> str:
    return json.dumps({k: [v.dtype, list(v.shape)] for k, v in sorted(schema.items())})


MAX_CHUNK_BYTES = 2**31  # one decoded chunk of all leaves (bounds what a store may allocate)
MAX_ROWS = 2**62  # physical rows, write counts and extents


def _bad(where: str, attr: str, value: Any, want: str) -> StoreFormatError:
    return StoreFormatError(
        f"{where}/zarr.json: attributes['zarrl'][{attr}] = {value!r} is invalid: {want}"
    )


def _int(where: str, attr: str, value: Any, lo: int, hi: int = MAX_ROWS) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(where, attr, value, f"expected an integer in [{lo}, {hi}]")
    return value


def _ints(where: str, attr: str, value: Any, lo: int) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise _bad(where, attr, value, "expected a list of integers")
    return tuple(_int(where, f"{attr}[{i}]", v, lo) for i, v in enumerate(value))


def _path_list(where: str, attr: str, value: Any, schema: Mapping) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v in schema for v in value):
        raise _bad(where, attr, value, "expected a list of array paths of the schema")
    return list(value)


def validate_header(meta: Mapping, where: str) -> Header:
    """The header of ``attributes["zarrl"]`` checked against its types, ranges and schema
    before anything is sized from it; raises ``StoreFormatError`` naming the attribute."""
    capacity = meta.get("capacity")
    if capacity is not None:
        capacity = _int(where, "'capacity'", capacity, 1, 2**31 - 1)
    ndim = _int(where, "'ndim'", meta.get("ndim"), 1, 16)
    tail = _ints(where, "'tail'", meta.get("tail"), 1)
    if len(tail) != ndim - 1:
        raise _bad(where, "'tail'", list(tail), f"expected {ndim - 1} batch dims for ndim={ndim}")
    raw_schema = meta.get("schema")
    if not isinstance(raw_schema, Mapping) or not raw_schema:
        raise _bad(where, "'schema'", raw_schema, "expected a non-empty mapping")
    schema = {}
    for key, spec in raw_schema.items():
        attr = f"'schema'][{key!r}"
        if not isinstance(spec, Mapping) or spec.get("dtype") not in _NUMPY_TO_TORCH:
            raise _bad(where, attr, spec, f"expected a dtype among {sorted(_NUMPY_TO_TORCH)}")
        try:
            key_path(tuple(key.split("/")))
        except ValueError as err:
            raise _bad(where, attr, key, str(err)) from None
        schema[key] = LeafSpec(
            spec["dtype"], _ints(where, f"{attr}]['shape'", spec.get("shape"), 0)
        )
    tail_n = int(np.prod(tail, dtype=np.int64))
    row_bytes = tail_n * sum(s.nbytes for s in schema.values())
    max_rows = max(1, MAX_CHUNK_BYTES // max(1, row_bytes))
    chunk_rows = _int(where, "'chunk_rows'", meta.get("chunk_rows"), 1, max_rows)
    index_keys = _path_list(where, "'index_keys'", meta.get("index_keys"), schema)
    tensor_root = meta.get("tensor_root")
    if not isinstance(tensor_root, bool):
        raise _bad(where, "'tensor_root'", tensor_root, "expected true or false")
    codec = meta.get("codec", {})
    if not isinstance(codec, Mapping):
        raise _bad(where, "'codec'", codec, "expected a mapping")
    xor = meta.get("xor_previous", {})
    if not isinstance(xor, Mapping) or not all(
        isinstance(k, str) and k in schema and v in schema and schema[k] == schema[v]
        for k, v in xor.items()
    ):
        raise _bad(where, "'xor_previous'", xor, "expected {leaf: paired leaf of the same spec}")
    if meta.get("format_version") == PLAIN_VERSION and xor:
        raise _bad(where, "'format_version'", 1, "a store with xor_previous is version 2")
    chunk_seals = None
    if meta.get("format_version") == SEALED_VERSION:
        chunk_seals = seals.validate_seal_spec(meta.get("chunk_seals"), schema, where)
    elif "chunk_seals" in meta:
        raise _bad(where, "'format_version'", meta.get("format_version"), "chunk_seals needs 3")
    return Header(
        capacity=capacity,
        ndim=ndim,
        tail=tail,
        chunk_rows=chunk_rows,
        schema=schema,
        index_keys=index_keys,
        tensor_root=tensor_root,
        codec=dict(codec),
        xor_previous=dict(xor),
        chunk_seals=chunk_seals,
    )


def validate_commit(raw: Any, header: Header | None, where: str) -> Commit:
    """The commit record checked field by field and against the header (non-negative rows,
    ``base`` on a chunk boundary, ``base + write_count <= extent``, ``length`` within the live
    rows); raises ``StoreFormatError`` naming the attribute."""
    if not isinstance(raw, Mapping):
        raise _bad(where, "'commit'", raw, "expected the commit record (a mapping)")
    values = {}
    for name in Commit.__dataclass_fields__:
        attr = f"'commit']['{name}'"
        if name == "head":
            continue
        if name == "time":
            t = raw.get("time", 0.0)
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not t == t:
                raise _bad(where, attr, t, "expected a number")
            values[name] = float(t)
        elif header is None and name not in raw:
            values[name] = 0
        else:
            values[name] = _int(where, attr, raw.get(name), 0)
    commit = Commit(**values)
    if header is None:
        return commit
    if header.chunk_seals is not None:
        commit.head = _head(where, raw.get("head"), header, commit)
    R, cap = header.chunk_rows, header.capacity
    if commit.base % R:
        raise _bad(where, "'commit']['base'", commit.base, f"expected a multiple of {R}")
    if commit.base + commit.write_count > commit.extent:
        raise _bad(
            where, "'commit']['extent'", commit.extent, "expected at least base + write_count"
        )
    live = commit.write_count if cap is None else min(commit.write_count, cap)
    most = live * int(np.prod(header.tail, dtype=np.int64))
    if commit.length > most:
        raise _bad(where, "'commit']['length'", commit.length, f"expected at most {most}")
    if commit.gc_below > commit.base + commit.write_count:
        raise _bad(where, "'commit']['gc_below'", commit.gc_below, "expected <= the live end")
    return commit


def _head(where: str, head: Any, header: Header, commit: Commit) -> dict[str, int]:
    """``commit["head"]`` of a version 3 store: a crc32c per leaf when the last committed chunk
    is partly filled, else empty."""
    partial = (commit.base + commit.write_count) % header.chunk_rows != 0
    if head is None and not partial:  # the header's first record: no rows yet
        return {}
    want = set(header.schema) if partial else set()
    if (
        not isinstance(head, Mapping)
        or set(head) != want
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in head.values()
        )
    ):
        expect = "a crc32c per leaf" if partial else "{} (no partly filled head chunk)"
        raise _bad(where, "'commit']['head'", head, f"expected {expect}")
    return dict(head)


def read_attrs(group: zarr.Group, where: str) -> tuple[Header | None, Commit]:
    """Validates the group's zarrl attributes; returns (header or None if uninitialised, commit)."""
    attrs = group.attrs.asdict()
    meta = attrs.get(ATTR)
    if not isinstance(meta, Mapping) or meta.get("format") != FORMAT_NAME:
        raise StoreFormatError(
            f"{where} is a Zarr group but not a zarrl replay store "
            f"(no attributes[{ATTR!r}]['format'] == {FORMAT_NAME!r})"
        )
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < PLAIN_VERSION:
        raise _bad(where, "'format_version'", version, "expected 1, 2 or 3")
    if version > FORMAT_VERSION:
        raise StoreFormatError(
            f"{where} uses zarrl store format version {version}, newer than the version this "
            f"zarrl reads ({FORMAT_VERSION}); upgrade zarrl"
        )
    header = validate_header(meta, where) if meta.get("schema") is not None else None
    if header is not None and "commit" not in meta:
        raise _bad(where, "'commit'", None, "the commit record is missing")
    commit = validate_commit(meta.get("commit", {}), header, where)
    if version >= SEALED_VERSION:
        seals.check_attribute_checksums(meta, where)
    return header, commit


def check_array(where: str, path: str, array: zarr.Array, header: Header) -> None:
    """An array's own ``zarr.json`` must match the schema: dtype, shape and chunks."""
    spec = header.schema[path]
    tail = (*header.tail, *spec.shape)
    got_dtype = str(np.dtype(array.dtype))
    problems = []
    if got_dtype != spec.dtype:
        problems.append(f"data_type {got_dtype}, schema says {spec.dtype}")
    if tuple(array.shape[1:]) != tail:
        problems.append(f"shape {list(array.shape)}, schema says [rows, *{list(tail)}]")
    if tuple(array.chunks) != (header.chunk_rows, *tail):
        problems.append(f"chunks {list(array.chunks)}, schema says [{header.chunk_rows}, ...]")
    if (
        not problems
        and header.chunk_seals is not None
        and seals.array_metadata_crc(array) != header.chunk_seals["arrays"][path]
    ):
        problems.append(
            "codecs, chunk keys or fill value differ from those recorded when the store was "
            "created (attributes['zarrl']['chunk_seals']['arrays'])"
        )
    if problems:
        raise StoreFormatError(f"{where}/{path}/zarr.json: " + "; ".join(problems))


def write_attrs(
    group: zarr.Group, header: Header | None, commit: Commit, durable: bool = False, **static
) -> list:
    """Publishes header + commit record in one atomic ``zarr.json`` write (the commit point):
    done here for local stores; returns the coroutines that do it for other stores.
    ``durable``: on local stores, fsyncs what the commit counts first (``store_io``)."""
    commit.time = time.time()
    if header is not None:
        meta = header.to_json()
    else:
        meta = {"format": FORMAT_NAME, "format_version": SEALED_VERSION, "schema": None}
    meta.update(static)
    meta["commit"] = commit.to_json()
    if meta["format_version"] >= SEALED_VERSION:
        meta["checksums"] = seals.attribute_checksums(meta)
    return put_group_attributes(group, {ATTR: meta}, durable=durable)


def default_compressors(level: int = 5) -> list:
    """Default chunk codec chain, chosen with ``benchmarks/buffer.py`` (fast decompression
    first): byte-shuffled LZ4 through Blosc (a checksum is appended by ``codec_chain``)."""
    return [zarr.codecs.BloscCodec(cname="lz4", clevel=level, shuffle="shuffle")]


def codec_chain(compressors: list | None) -> tuple[list, list]:
    """(compressors, checksum codecs) for ``create_array``; the checksum is always appended."""
    comp = default_compressors() if compressors is None else list(compressors)
    if not any(isinstance(c, zarr.codecs.Crc32cCodec) for c in comp):
        comp.append(zarr.codecs.Crc32cCodec())
    return comp, []


def describe_codecs(compressors: list) -> list[Any]:
    out = []
    for c in compressors:
        to_dict = getattr(c, "to_dict", None)
        out.append(to_dict() if to_dict else repr(c))
    return json.loads(json.dumps(out, default=str))
