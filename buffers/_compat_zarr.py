"""The zarr-python internals zarrl relies on, in one place (zarr 3.1).

* Whole-chunk encode/decode without zarr's event loop: the synchronous steps of zarr's own codecs
  (``_encode_sync``/``_decode_sync``) and of its numcodecs wrappers (their ``_codec``), run by
  ``chunk_codec.ChunkCodec`` on the array's own codec objects.
* The async handles of arrays and groups (``_async_array``, ``_async_group``), whose coroutines
  zarrl gathers into one event-loop call, and their config (``_config``).
* Metadata replaced on the frozen dataclasses after zarrl wrote the new ``zarr.json`` itself
  (``object.__setattr__``): a resize or a commit record without zarr rewriting the document.

If a zarr release moves one of these, this module (and ``tests/buffers/test_compat.py``, which
names each) is the only place to change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from zarr.abc.codec import SupportsSyncCodec
from zarr.codecs.numcodecs import _codecs as _nc
from zarr.core.buffer.cpu import as_numpy_array_wrapper

__all__ = [
    "CHECKED_ZARR",
    "array_at",
    "array_config",
    "async_array",
    "async_group",
    "chunk_specs",
    "decode_step",
    "encode_step",
    "replace_metadata",
    "supports_sync",
]

#: zarr-python releases these functions were checked against
CHECKED_ZARR = ("3.1.6",)

# Codecs of zarr itself whose sync path is a plain, stateless transform
_CORE_SYNC = frozenset(
    {"BytesCodec", "BloscCodec", "ZstdCodec", "GzipCodec", "Crc32cCodec", "TransposeCodec"}
)
NUMCODECS_KINDS = (
    _nc._NumcodecsArrayArrayCodec,
    _nc._NumcodecsBytesBytesCodec,
    _nc._NumcodecsArrayBytesCodec,
)


def async_array(array: zarr.Array) -> Any:
    """The ``AsyncArray`` behind ``array`` (its coroutines are gathered in one loop call)."""
    return array._async_array


def async_group(group: zarr.Group) -> Any:
    """The ``AsyncGroup`` behind ``group``."""
    return group._async_group


def array_at(metadata: Any, store_path: Any, config: Any) -> Any:
    """An ``AsyncArray`` for ``metadata`` already written at ``store_path`` (not read back)."""
    from zarr.core.array import AsyncArray

    return AsyncArray(metadata, store_path, config)


def group_metadata(attributes: dict | None = None) -> Any:
    """zarr's ``GroupMetadata`` (v3) of a group holding ``attributes``."""
    from zarr.core.group import GroupMetadata

    return GroupMetadata(attributes=attributes or {})


def group_at(metadata: Any, store_path: Any) -> zarr.Group:
    """A ``zarr.Group`` for ``metadata`` at ``store_path``, not read back (zarrl writes its
    ``zarr.json`` itself)."""
    from zarr import AsyncGroup

    return zarr.Group(AsyncGroup(metadata, store_path))


def array_config(array: Any) -> Any:
    """The ``ArrayConfig`` of an ``AsyncArray`` (for its chunk spec)."""
    return array._config


def replace_metadata(handle: Any, metadata: Any) -> None:
    """Set the frozen ``metadata`` of an ``AsyncArray``/``AsyncGroup`` whose ``zarr.json`` zarrl
    has just written itself."""
    object.__setattr__(handle, "metadata", metadata)


def chunk_specs(codecs: Sequence, spec) -> list:
    """The chunk spec each codec of ``codecs`` encodes from (and decodes back to): an
    array-to-array codec may change shape (transpose) or dtype (delta ``astype``)."""
    out = []
    for codec in codecs:
        out.append(spec)
        spec = codec.resolve_metadata(spec)
    return out


def supports_sync(codec) -> bool:
    """Whether ``encode_step``/``decode_step`` run ``codec`` (stateless, whole-chunk)."""
    if isinstance(codec, NUMCODECS_KINDS):
        return True
    return isinstance(codec, SupportsSyncCodec) and type(codec).__name__ in _CORE_SYNC


def encode_step(codec, data, spec):
    """One codec's encode of a whole chunk (``spec``: the spec the codec encodes from)."""
    if isinstance(codec, _nc._NumcodecsArrayArrayCodec):
        out = codec._codec.encode(np.ascontiguousarray(data.as_ndarray_like()))
        return spec.prototype.nd_buffer.from_ndarray_like(out)
    if isinstance(codec, _nc._NumcodecsArrayBytesCodec):
        out = codec._codec.encode(np.ascontiguousarray(data.as_ndarray_like()))
        return spec.prototype.buffer.from_bytes(out)
    if isinstance(codec, _nc._NumcodecsBytesBytesCodec):
        return codec._encode(data, spec.prototype)
    return codec._encode_sync(data, spec)


def decode_step(codec, data, spec):
    """Inverse of ``encode_step``: back to a chunk shaped and typed as ``spec``."""
    if isinstance(codec, _nc._NumcodecsArrayArrayCodec):
        out = codec._codec.decode(np.ascontiguousarray(data.as_ndarray_like()))
        return spec.prototype.nd_buffer.from_ndarray_like(out.reshape(spec.shape))
    if isinstance(codec, _nc._NumcodecsArrayBytesCodec):
        out = codec._codec.decode(data.to_bytes())
        return spec.prototype.nd_buffer.from_ndarray_like(out.reshape(spec.shape))
    if isinstance(codec, _nc._NumcodecsBytesBytesCodec):
        return as_numpy_array_wrapper(codec._codec.decode, data, spec.prototype)
    return codec._decode_sync(data, spec)
