"""Whole-chunk encode/decode and store I/O for zarrl arrays, without zarr's per-call overhead.

zarr's ``Array.__setitem__``/``__getitem__`` plan a selection, hop to worker threads once per
codec and chunk and round-trip through its event loop for every call; zarrl always moves whole
chunks of ``chunk_rows`` rows, so it runs the array's own codec chain (``BytesCodec``,
compressors, ``crc32c``) synchronously here and sends the bytes of every chunk of a commit to the
store in one event-loop call. The bytes written are exactly those zarr writes (the same codec
objects, taken from the array metadata), so any zarr v3 reader decodes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype

from . import _compat_zarr as codec_steps
from .store_io import SyncLog, local_file, put_objects


class ChunkCodec:
    """Encoder/decoder of whole chunks ``[chunk_rows, *rest]`` of one zarr v3 array."""

    def __init__(self, array: zarr.Array) -> None:
        self._async = codec_steps.async_array(array)
        meta = self._async.metadata
        self.codecs = tuple(meta.codecs)
        self.chunk_shape = tuple(meta.chunk_grid.chunk_shape)
        self.dtype = np.dtype(meta.dtype.to_native_dtype())
        self._spec = meta.get_chunk_spec(
            (0,) * len(self.chunk_shape),
            codec_steps.array_config(self._async),
            default_buffer_prototype(),
        )
        # each codec encodes from the spec the previous one produced (transpose, delta astype)
        self._specs = codec_steps.chunk_specs(self.codecs, self._spec)
        self.supported = all(codec_steps.supports_sync(c) for c in self.codecs)

    def key(self, chunk: int) -> zarr.storage.StorePath:
        coords = (int(chunk),) + (0,) * (len(self.chunk_shape) - 1)
        return self._async.store_path / self._async.metadata.encode_chunk_key(coords)

    def encode(self, block: np.ndarray):
        """``block``: one whole chunk ``[chunk_rows, *rest]`` -> the stored bytes (a Buffer)."""
        if tuple(block.shape) != self.chunk_shape:
            raise ValueError(f"chunk of shape {block.shape}, expected {self.chunk_shape}")
        data = self._spec.prototype.nd_buffer.from_numpy_array(
            np.ascontiguousarray(block, dtype=self.dtype)
        )
        for codec, spec in zip(self.codecs, self._specs):
            data = codec_steps.encode_step(codec, data, spec)
        return data

    def decode(self, raw) -> np.ndarray:
        """Stored bytes of one chunk -> ``[chunk_rows, *rest]`` (raises on a bad checksum)."""
        data = raw
        for codec, spec in zip(reversed(self.codecs), reversed(self._specs)):
            data = codec_steps.decode_step(codec, data, spec)
        out = data.as_numpy_array().reshape(self.chunk_shape)
        return out if out.flags.writeable else out.copy()


def _local_file(codec: ChunkCodec, chunk: int) -> Path | None:
    """File of a chunk when the array lives in a ``LocalStore`` (direct file I/O), else None."""
    return local_file(codec.key(chunk))


def store_chunks(
    items: Sequence[tuple[ChunkCodec, int, object]], fresh_from: int, log: SyncLog | None = None
) -> list:
    """Writes encoded chunks ``(codec, chunk id, bytes)``. Local files are written here without
    one thread hop per file: chunks below ``fresh_from`` (they hold committed rows) atomically,
    as zarr's ``LocalStore`` does, later ones in place (see ``store_io``); returns coroutines
    for chunks of other stores (run them with the event loop). Local files written are recorded
    in ``log`` (default: the store's own ``SyncLog``)."""
    keys = [(codec.key(chunk), chunk) for codec, chunk, _ in items]
    fresh = frozenset(key.path for key, chunk in keys if chunk >= fresh_from)
    return put_objects(((key, buf) for (key, _), (*_, buf) in zip(keys, items)), fresh, log)


def fetch_chunks(items: Sequence[tuple[ChunkCodec, int]], run) -> list:
    """Raw bytes of chunks ``(codec, chunk id)`` (``None`` where absent): local files read
    here, other stores through ``run(coroutines)`` (one event-loop call)."""
    out: list = [None] * len(items)
    remote = []
    proto = default_buffer_prototype()
    for i, (codec, chunk) in enumerate(items):
        path = _local_file(codec, chunk)
        if path is None:
            remote.append(i)
            continue
        try:
            with open(path, "rb") as f:
                out[i] = proto.buffer.from_bytes(f.read())
        except FileNotFoundError:
            out[i] = None
    if remote:
        got = run([read_chunks([items[i] for i in remote])])[0]
        for i, raw in zip(remote, got):
            out[i] = raw
    return out


def drop_chunks(items: Sequence[tuple[ChunkCodec, int]]) -> list:
    """Deletes chunks: local files here; returns coroutines for the other stores."""
    rest = []
    for codec, chunk in items:
        path = _local_file(codec, chunk)
        if path is None:
            rest.append((codec, chunk))
        else:
            path.unlink(missing_ok=True)
    return [delete_chunks(rest)] if rest else []


async def delete_chunks(items: Sequence[tuple[ChunkCodec, int]]) -> None:
    """Deletes chunks ``(codec, chunk id)`` (missing chunks read back as the fill value 0)."""
    await asyncio.gather(*(codec.key(c).delete() for codec, c in items))


async def read_chunks(items: Sequence[tuple[ChunkCodec, int]]) -> list:
    """Raw stored bytes of chunks ``(codec, chunk id)``, ``None`` where a chunk is absent."""
    proto = default_buffer_prototype()
    return await asyncio.gather(*(codec.key(c).get(prototype=proto) for codec, c in items))
