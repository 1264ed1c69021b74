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

from .store_io import put_group_attributes

FORMAT_NAME = "zarrl.replay"
FORMAT_VERSION = 2  # the newest version this zarrl reads
PLAIN_VERSION = 1  # stores without de-duplicated leaves (``xor_previous``)
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


class StoreFormatError(ValueError):
    """The target is not a zarrl replay store, or is one this version cannot read."""


class ReadOnlyStorageError(RuntimeError):
    """A write was attempted on a storage opened with ``mode="r"``."""


class CorruptChunkError(RuntimeError):
    """A stored chunk failed its checksum (or could not be decoded)."""


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

    def to_json(self) -> dict:
        return dict(self.__dict__)

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

    @property
    def format_version(self) -> int:
        """Version a reader needs: 2 only when the store de-duplicates leaves."""
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
        )


def describe_schema(schema: Mapping[str, LeafSpec]) -> str:
    return json.dumps({k: [v.dtype, list(v.shape)] for k, v in sorted(schema.items())})


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
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreFormatError(
            f"{where} uses zarrl store format version {version}, newer than the version this "
            f"zarrl reads ({FORMAT_VERSION}); upgrade zarrl"
        )
    header = Header.from_json(meta) if meta.get("schema") is not None else None
    return header, Commit.from_json(meta.get("commit", {}))


def write_attrs(group: zarr.Group, header: Header | None, commit: Commit, **static) -> list:
    """Publishes header + commit record in one atomic ``zarr.json`` write (the commit point):
    done here for local stores; returns the coroutines that do it for other stores."""
    commit.time = time.time()
    if header is not None:
        meta = header.to_json()
    else:
        meta = {"format": FORMAT_NAME, "format_version": PLAIN_VERSION, "schema": None}
    meta.update(static)
    meta["commit"] = commit.to_json()
    return put_group_attributes(group, {ATTR: meta})


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
