"""Codec chains of zarrl arrays: stock Zarr v3 + numcodecs codecs, recorded in each array's
metadata, so any Zarr client with numcodecs decodes the stored values on its own.

The default chain of a leaf ``[rows, *tail, *shape]`` is chosen per leaf kind (``leaf_kind``;
see ``docs/storage_format.md``, "Codecs", for the measurements behind it):

* ``"float_series"``: floating point with at most ``SERIES_MAX_ELEMENTS`` elements per row (per
  environment for ``ndim=2``): a few columns followed over consecutive steps (states, actions,
  rewards), whose rows compress far better as differences. ``transpose`` (rows last, so each
  scalar column is a contiguous time series), ``numcodecs.astype`` (same dtype: the next filter
  sees the raw bits), two ``numcodecs.delta`` filters over the bits read as integers of the same
  width (second-order differences along rows, wrapping integer arithmetic: lossless for every bit
  pattern, NaN and ±inf included), then Blosc zstd 1 with byte shuffle in 1 MiB blocks;
* ``"float_wide"``: floating point with more elements per row (per-token log-probabilities,
  embeddings, float images): the structure is within the row, the row delta gains little and
  costs three times the encode time, so no filter and Blosc LZ4 with byte shuffle;
* ``"other"`` (integers, bool, uint8 pixels): Blosc LZ4 with byte shuffle;
* then the crc32c checksum that ``format.codec_chain`` always appends.

``ZarrStorage(compressors=...)`` replaces the Blosc step of every leaf (float series keep their
row-delta filters), or, as a mapping ``{leaf path: compressors}``, the whole chain of the leaves
it names (no filter: e.g. scalar per-row floats that are noise, not series).

zarrl encodes and decodes whole chunks itself (``chunk_codec.ChunkCodec``) with the array's own
codec objects, one synchronous step per codec (``_compat_zarr.encode_step``/``decode_step``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr.codecs
from zarr.codecs import numcodecs as zarr_numcodecs

from .format import LeafSpec

# zarr warns at every parse of a numcodecs codec that other Zarr implementations may lack it;
# zarrl's default stores use numcodecs filters on purpose (decoded by zarr-python + numcodecs)
warnings.filterwarnings(
    "ignore",
    message="Numcodecs codecs are not in the Zarr version 3 specification",
    module=r"zarr\.codecs\.numcodecs",
)

DELTA_ORDER = 2  # second-order differences: smooth series leave only their curvature
#: float leaves with at most this many elements per row (per environment) are series
SERIES_MAX_ELEMENTS = 64
SERIES_COMPRESSOR = {"cname": "zstd", "clevel": 1, "shuffle": "shuffle", "blocksize": 1 << 20}
OTHER_COMPRESSOR = {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}
LEAF_KINDS = ("float_series", "float_wide", "other")


def leaf_kind(dtype: np.dtype, shape: tuple[int, ...] = ()) -> str:
    """The codec policy's kind of a leaf of ``dtype`` whose row (per environment) has ``shape``:
    ``"float_series"``, ``"float_wide"`` or ``"other"`` (see the module docstring)."""
    if np.dtype(dtype).kind != "f":
        return "other"
    return "float_series" if math.prod(shape) <= SERIES_MAX_ELEMENTS else "float_wide"


def rows_last(ndim: int) -> tuple[int, ...]:
    """Transpose order moving axis 0 (rows) of an ``ndim``-dimensional chunk to the end."""
    return (*range(1, ndim), 0)


def row_delta_filters(dtype: np.dtype, ndim: int, order: int = DELTA_ORDER) -> list:
    """Filters of a floating-point array with ``ndim`` dims (rows first): ``order``-th integer
    differences of the raw bits along rows. Empty for other dtypes."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return []
    bits = f"<i{dtype.itemsize}"
    same = dtype.newbyteorder("<").str
    out: list = [zarr.codecs.TransposeCodec(order=rows_last(ndim))] if ndim > 1 else []
    out.append(zarr_numcodecs.AsType(encode_dtype=same, decode_dtype=same))
    out += [zarr_numcodecs.Delta(dtype=bits, astype=bits) for _ in range(order)]
    return out


def default_compressors(dtype: np.dtype, shape: tuple[int, ...] = ()) -> list:
    """Bytes-to-bytes codecs of the default chain for a leaf of ``dtype`` with rows of
    ``shape`` (checksum excluded)."""
    series = leaf_kind(dtype, shape) == "float_series"
    return [zarr.codecs.BloscCodec(**(SERIES_COMPRESSOR if series else OTHER_COMPRESSOR))]


def default_filters(dtype: np.dtype, shape: tuple[int, ...], ndim: int) -> list:
    """Array-to-array filters of the default chain for a leaf of ``dtype`` with rows of
    ``shape``, stored in an array of ``ndim`` dims: the row delta for float series only."""
    if leaf_kind(dtype, shape) != "float_series":
        return []
    return row_delta_filters(dtype, ndim)


def dimension_names(path: str, n_batch: int, leaf_ndim: int) -> tuple[str, ...]:
    """``("row", ...)`` for ``ndim=1`` buffers, ``("time", "env", ...)`` for ``ndim=2``
    (``env0``, ``env1``... beyond), then ``<leaf>_dim<i>`` with ``/`` of nested keys as ``.``."""
    if n_batch == 1:
        batch: tuple[str, ...] = ("row",)
    elif n_batch == 2:
        batch = ("time", "env")
    else:
        batch = ("time", *(f"env{i}" for i in range(n_batch - 1)))
    leaf = path.replace("/", ".")
    return (*batch, *(f"{leaf}_dim{i}" for i in range(leaf_ndim)))


def array_options(
    path: str,
    spec: LeafSpec,
    n_batch: int,
    compressors: list | Mapping[str, list] | None,
    xor_source: str | None = None,
) -> dict[str, Any]:
    """``create_array`` keyword arguments of one leaf: filters and compressors (crc32c appended
    later by ``format.codec_chain``), dimension names and, for a de-duplicated leaf
    (``dedupe_next=True``), attributes saying it needs zarrl to read. ``compressors``: ``None``
    = the default of the leaf's ``leaf_kind``; a list replaces the Blosc step of every leaf
    (float series keep their row-delta filters); a mapping ``{leaf path: list}`` gives the
    leaves it names exactly those compressors and no filter, the others their default."""
    ndim = n_batch + len(spec.shape)
    dtype = np.dtype(spec.dtype)
    filters = default_filters(dtype, tuple(spec.shape), ndim)
    if isinstance(compressors, Mapping):
        if path in compressors:
            filters, chosen = [], list(compressors[path])
        else:
            chosen = default_compressors(dtype, tuple(spec.shape))
    elif compressors is None:
        chosen = default_compressors(dtype, tuple(spec.shape))
    else:
        chosen = list(compressors)
    out: dict[str, Any] = {
        "filters": filters,
        "compressors": chosen,
        "dimension_names": dimension_names(path, n_batch, len(spec.shape)),
    }
    if xor_source is not None:
        out["attributes"] = {
            "zarrl": {
                "stored_as": "xor_previous_row",
                "source": xor_source,
                "note": (
                    f"rows are stored XORed with the previous row of {xor_source!r} "
                    "(dedupe_next=True): read with zarrl, or undo the XOR as described in "
                    "docs/storage_format.md"
                ),
            }
        }
    return out


def describe(options: dict[str, Any]) -> list[str]:
    """Short names of a leaf's chain (``array_options`` output), for the store header."""
    names = [type(c).__name__ for c in options["filters"]]
    for c in options["compressors"]:
        cname = getattr(getattr(c, "cname", None), "value", None)
        names.append(f"{type(c).__name__}({cname})" if cname else type(c).__name__)
    return names


__all__ = [
    "LEAF_KINDS",
    "SERIES_MAX_ELEMENTS",
    "array_options",
    "default_compressors",
    "default_filters",
    "leaf_kind",
    "dimension_names",
    "row_delta_filters",
    "rows_last",
]
