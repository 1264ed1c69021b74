"""Replay-storage benchmark: LazyTensorStorage vs LazyMemmapStorage vs ZarrStorage, side by side.

For three data shapes (vector transitions, pixel transitions, token generations) it measures
extend throughput (the median of several fills, interleaved round by round so that load from
other processes hits every storage alike; each fill starts after an ``os.sync()`` so no storage
pays for the previous one's page-cache writeback), the time to sample a RandomSampler batch of
256 and a SliceSampler batch of 32 slices x 8 steps, and bytes on disk, then prints one table
with ratios to LazyMemmapStorage. The Zarr extend figures include the final ``flush()``, durable
per the storage's ``durability``: "Zarr default" (``durability="os"``: the flush fsyncs;
automatic commits ``"process"``), "Zarr fsync all" (every commit fsynced) and "Zarr no fsync"
(``"process"`` everywhere: survives a killed process, not a power cut). Completed chunks are
encoded and written (and, for ``"os"``, fsynced) in the background while extends go on
(``buffers/write_ahead.py``). Default codecs, chosen per leaf kind: true values in every
array, float leaves of at most 64 elements per row through row-delta filters and Blosc zstd 1
in 1 MiB blocks, other leaves (wider floats included) Blosc LZ4 (``buffers/codecs.py``,
docs/storage_format.md). "Zarr cache=1/4" is a store four times
larger than its chunk cache: its RandomSampler batches come from cached rows (refilled in the
background, ``ZarrStorage.refill_ratio`` rows decoded per sampled row), while a plain
SliceSampler stays exact and reads missed chunks synchronously. The row "Zarr 1/4 CachedSlice"
is an identical store of its own sampled with ``zarrl.buffers.CachedSliceSampler`` for the slice
column (slices from cached segments of trajectories only; semantics in docs/storage_format.md).
A second table compares codec chains over every leaf (compression ratio, encode and decode
speed on one thread), which is how the default was chosen. A last line samples a store much
larger than its cache in fresh processes and reports its peak RSS against the bound
``imports + 1.25 x cache`` (``benchmarks/buffer_memory.py``; ``--large`` there for 3.4 GB).

    python benchmarks/buffer.py            # full run (~1.5 min on 2 cores)
    python benchmarks/buffer.py --quick    # smaller data, fewer repeats
    python benchmarks/buffer.py --s3       # adds S3 (moto on loopback) beside local (the
                                           # ``scale`` extra): extend and sample ratios
    python benchmarks/buffer.py --s3-only  # that table alone
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numcodecs.blosc as numcodecs_blosc
import numpy as np
import torch
import zarr.codecs
import zarr.storage
from tensordict import TensorDict
from torchrl.data import (
    LazyMemmapStorage,
    LazyTensorStorage,
    RandomSampler,
    SliceSampler,
    TensorDictReplayBuffer,
)
from zarrl.buffers import CachedSliceSampler, ZarrStorage
from zarrl.buffers import codecs as leaf_codecs
from zarrl.buffers.chunk_codec import ChunkCodec
from zarrl.buffers.format import codec_chain

sys.path.insert(0, str(Path(__file__).parent))
import buffer_memory  # noqa: E402  (sibling script)
from machine import cpu_model  # benchmarks/machine.py


# ----------------------------------------------------------------------------- data
def vector_transitions(n: int, traj_len: int = 1000, seed: int = 0) -> TensorDict:
    """MuJoCo-like rows: smooth joint trajectories (sums of slow sinusoids), obs f32[17]."""
    g = torch.Generator().manual_seed(seed)
    n_traj = math.ceil(n / traj_len)
    t = torch.arange(traj_len + 1, dtype=torch.float32) * 0.01
    freq = torch.rand(n_traj, 1, 17, 3, generator=g) * 3 + 0.2
    phase = torch.rand(n_traj, 1, 17, 3, generator=g) * 6.28
    amp = torch.rand(n_traj, 1, 17, 3, generator=g)
    states = (amp * torch.sin(freq * t.view(1, -1, 1, 1) + phase)).sum(-1)  # [traj, T+1, 17]
    action = torch.tanh(
        states[:, :-1, :6] * 2 + 0.05 * torch.randn(n_traj, traj_len, 6, generator=g)
    )
    reward = (states[:, 1:, :1] - states[:, :-1, :1]) * 100
    done = torch.zeros(n_traj, traj_len, 1, dtype=torch.bool)
    done[:, -1] = True
    episode = torch.arange(n_traj).view(-1, 1).expand(n_traj, traj_len)
    td = TensorDict(
        {
            "observation": states[:, :-1],
            "action": action,
            "episode": episode,
            ("next", "observation"): states[:, 1:],
            ("next", "reward"): reward,
            ("next", "done"): done,
            ("next", "terminated"): done.clone(),
        },
        batch_size=[n_traj, traj_len],
    )
    return td.reshape(-1)[:n]


def pixel_transitions(n: int, traj_len: int = 200, seed: int = 0) -> TensorDict:
    """Atari/DMC-like uint8 [3, 84, 84] frames: a smooth background with moving objects."""
    g = torch.Generator().manual_seed(seed)
    n_traj = math.ceil(n / traj_len)
    yy, xx = torch.meshgrid(torch.arange(84.0), torch.arange(84.0), indexing="ij")
    frames = []
    for k in range(n_traj):
        base = torch.rand(3, 1, 1, generator=g) * 120 + 40
        background = base + 30 * torch.sin(yy / 20 + k) * torch.rand(3, 1, 1, generator=g)
        pos0 = torch.rand(4, 2, generator=g) * 84
        vel = torch.randn(4, 2, generator=g)
        color = torch.rand(4, 3, generator=g) * 255
        t = torch.arange(traj_len + 1, dtype=torch.float32).view(-1, 1, 1)
        pos = (pos0 + vel * t) % 84  # [T+1, 4, 2]
        img = background.expand(traj_len + 1, 3, 84, 84).clone()
        for o in range(4):
            d2 = (yy - pos[:, o, 0].view(-1, 1, 1)) ** 2 + (xx - pos[:, o, 1].view(-1, 1, 1)) ** 2
            inside = (d2 < 36).unsqueeze(1)
            img = torch.where(inside, color[o].view(1, 3, 1, 1), img)
        frames.append(img.round().clamp(0, 255).to(torch.uint8))
    frames = torch.stack(frames)  # [traj, T+1, 3, 84, 84]
    done = torch.zeros(n_traj, traj_len, 1, dtype=torch.bool)
    done[:, -1] = True
    td = TensorDict(
        {
            "pixels": frames[:, :-1],
            "action": torch.randint(0, 18, (n_traj, traj_len), generator=g),
            "episode": torch.arange(n_traj).view(-1, 1).expand(n_traj, traj_len),
            ("next", "pixels"): frames[:, 1:],
            ("next", "reward"): (torch.rand(n_traj, traj_len, 1, generator=g) > 0.95).float(),
            ("next", "done"): done,
        },
        batch_size=[n_traj, traj_len],
    )
    return td.reshape(-1)[:n]


def token_generations(n: int, width: int = 128, vocab: int = 32000, seed: int = 0) -> TensorDict:
    """LLM rollouts: Zipf-distributed int64 tokens, padded to ``width``, with log-probs."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, vocab + 1, dtype=torch.float64)
    p = 1 / ranks**1.1
    tokens = torch.multinomial(p / p.sum(), n * width, replacement=True, generator=g)
    tokens = tokens.view(n, width)
    length = torch.randint(width // 4, width + 1, (n,), generator=g)
    valid = torch.arange(width) < length.unsqueeze(-1)
    logp = torch.log(p[tokens] / p.sum()).float() + 0.3 * torch.randn(n, width, generator=g)
    return TensorDict(
        {
            "tokens": torch.where(valid, tokens, 0),
            "log_probs": torch.where(valid, logp, torch.zeros(())),
            "length": length,
            "episode": torch.arange(n) // 16,  # 16 generations per prompt
            ("next", "reward"): torch.randn(n, 1, generator=g),
            ("next", "done"): torch.ones(n, 1, dtype=torch.bool),
        },
        batch_size=[n],
    )


# ------------------------------------------------------------------------ measuring
def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def fill(make, data: TensorDict, batch: int, path: Path) -> tuple[object, float]:
    """Builds a storage and extends it batch by batch; returns it and the seconds taken (the
    Zarr figure includes the final ``flush()``: the commit, fsynced per its durability)."""
    storage = make(len(data), path)
    rb = TensorDictReplayBuffer(storage=storage, batch_size=256)
    t0 = time.perf_counter()
    for start in range(0, len(data), batch):
        rb.extend(data[start : start + batch])
    if isinstance(storage, ZarrStorage):
        storage.flush()  # durable: the commit is part of the extend cost
    return storage, time.perf_counter() - t0


def fill_all(
    makers: dict[str, Callable], data: TensorDict, batch: int, root: Path, repeats: int
) -> tuple[dict[str, object], dict[str, dict]]:
    """Fills every storage ``repeats`` times, interleaved round by round (load from other
    processes then hits every storage alike); the median time gives ``rows/s``. The storages
    of the last round are returned for sampling, earlier ones are deleted."""
    times: dict[str, list[float]] = {name: [] for name in makers}
    stores: dict[str, object] = {}
    for round_ in range(repeats):
        for name, make in makers.items():
            path = root / f"{name.replace(' ', '_')}.{round_}"
            os.sync()  # the previous fill's page-cache writeback is not charged to this one
            storage, seconds = fill(make, data, batch, path)
            times[name].append(seconds)
            if round_ < repeats - 1:
                _drop(storage, path)
            else:
                stores[name] = storage
    results = {}
    for name, t in times.items():
        path = root / f"{name.replace(' ', '_')}.{repeats - 1}"
        extend_s = float(np.median(t))
        results[name] = {
            "rows/s": len(data) / extend_s,
            "MB/s": data.bytes() / extend_s / 1e6,
            "disk MB": dir_bytes(path) / 1e6 if path.exists() else float("nan"),
        }
    return stores, results


def _drop(storage: object, path: Path) -> None:
    if isinstance(storage, ZarrStorage):
        storage.close()
    del storage
    shutil.rmtree(path, ignore_errors=True)


def sample_times(stores: dict[str, object], repeats: int) -> dict[str, dict]:
    """Median sample time per storage, interleaving the storages round by round so that load
    from other processes hits every storage alike."""
    samplers = {}
    for name, storage in stores.items():
        samplers[name] = {
            "random ms": TensorDictReplayBuffer(
                storage=storage, sampler=RandomSampler(), batch_size=256
            ).sample,
            "slice ms": TensorDictReplayBuffer(
                storage=storage,
                sampler=(CachedSliceSampler if "CachedSlice" in name else SliceSampler)(
                    num_slices=32, traj_key="episode"
                ),
                batch_size=256,
            ).sample,
        }
    times = {name: {k: [] for k in fns} for name, fns in samplers.items()}
    for round_ in range(repeats + 2):
        for name, fns in samplers.items():
            for kind, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                if round_ >= 2:  # two warm-up rounds
                    times[name][kind].append(time.perf_counter() - t0)
    return {n: {k: 1e3 * float(np.median(v)) for k, v in d.items()} for n, d in times.items()}


_CACHED_SLICE = "Zarr 1/4 CachedSlice"


def _durability(storage: ZarrStorage, flush: str, commits: str) -> ZarrStorage:
    storage.durability, storage.commit_durability = flush, commits
    return storage


def storages(data_bytes: int) -> dict[str, Callable]:
    quarter = max(1, data_bytes // 4)
    return {
        "LazyTensorStorage": lambda n, p: LazyTensorStorage(n),
        "LazyMemmapStorage": lambda n, p: LazyMemmapStorage(n, scratch_dir=str(p)),
        # flush() fsyncs by default (durability="os", automatic commits "process")
        "Zarr default": lambda n, p: ZarrStorage(n, path=p),
        # every commit fsynced, automatic ones included
        "Zarr fsync all": lambda n, p: _durability(ZarrStorage(n, path=p), "os", "os"),
        # nothing fsynced: survives a killed process, not a power cut
        "Zarr no fsync": lambda n, p: _durability(ZarrStorage(n, path=p), "process", "process"),
        "Zarr hot (ram)": lambda n, p: ZarrStorage(n, path=p, cache="ram"),
        "Zarr cache=1/4": lambda n, p: ZarrStorage(n, path=p, cache=quarter),
        # its own store: sharing one with the plain SliceSampler's synchronous reads would
        # measure the cache churn those cause, not this sampler
        _CACHED_SLICE: lambda n, p: ZarrStorage(n, path=p, cache=quarter),
    }


def _float_chain(order: int, **blosc) -> Callable:
    """Chain builder: floats get ``order``-th row-delta filters and Blosc ``blosc``; other
    leaves the default (Blosc LZ4 + shuffle)."""

    def chain(value: np.ndarray) -> tuple[list, list]:
        if value.dtype.kind != "f":
            return [], leaf_codecs.default_compressors(value.dtype)
        filters = leaf_codecs.row_delta_filters(value.dtype, value.ndim, order) if order else []
        return filters, [zarr.codecs.BloscCodec(**blosc)]

    return chain


def _plain_chain(**blosc) -> Callable:
    """Chain builder: Blosc ``blosc`` for every leaf, no filters."""
    return lambda value: ([], [zarr.codecs.BloscCodec(**blosc)])


CODEC_CANDIDATES: dict[str, Callable] = {
    "default (per leaf kind)": lambda value: (
        leaf_codecs.default_filters(value.dtype, value.shape[1:], value.ndim),
        leaf_codecs.default_compressors(value.dtype, value.shape[1:]),
    ),
    "d2+zstd1 1MiB, every float": _float_chain(
        2, cname="zstd", clevel=1, shuffle="shuffle", blocksize=2**20
    ),
    "d2+zstd1 (auto blocks)": _float_chain(2, cname="zstd", clevel=1, shuffle="shuffle"),
    "d2+zstd3 1MiB blocks": _float_chain(
        2, cname="zstd", clevel=3, shuffle="shuffle", blocksize=2**20
    ),
    "d2+lz4 shuffle": _float_chain(2, cname="lz4", clevel=5, shuffle="shuffle"),
    "d2+lz4 bitshuffle": _float_chain(2, cname="lz4", clevel=5, shuffle="bitshuffle"),
    "d1+zstd1 1MiB blocks": _float_chain(
        1, cname="zstd", clevel=1, shuffle="shuffle", blocksize=2**20
    ),
    "lz4 shuffle, no filter": _plain_chain(cname="lz4", clevel=5, shuffle="shuffle"),
    "zstd3 shuffle, no filter": _plain_chain(cname="zstd", clevel=3, shuffle="shuffle"),
}


def codec_table(datasets: dict[str, tuple[TensorDict, int]]) -> list[tuple]:
    """Compression ratio and whole-chunk encode/decode MB/s (one thread, zarrl's own chunk
    codec, crc32c appended) of each candidate chain over every leaf of each data shape, with
    the chunk rows ZarrStorage picks for it."""
    numcodecs_blosc.set_nthreads(1)  # as in the background writer: one core per chunk
    rows = []
    try:
        for shape, (data, chunk_rows) in datasets.items():
            leaves = [v.numpy() for v in data.values(include_nested=True, leaves_only=True)]
            for cname, chain in CODEC_CANDIDATES.items():
                raw = stored = 0
                enc = dec = 0.0
                group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
                for i, value in enumerate(leaves):
                    filters, compressors = chain(value)
                    array = group.create_array(
                        f"a{i}",
                        shape=value.shape,
                        dtype=value.dtype,
                        chunks=(chunk_rows, *value.shape[1:]),
                        filters=filters,
                        compressors=codec_chain(compressors)[0],
                    )
                    codec = ChunkCodec(array)
                    for start in range(0, len(value) - chunk_rows + 1, chunk_rows):
                        block = value[start : start + chunk_rows]
                        t0 = time.perf_counter()
                        blob = codec.encode(block)
                        t1 = time.perf_counter()
                        assert np.array_equal(codec.decode(blob), block)
                        enc, dec = enc + t1 - t0, dec + time.perf_counter() - t1
                        raw, stored = raw + block.nbytes, stored + len(blob)
                rows.append((shape, cname, raw / stored, raw / enc / 1e6, raw / dec / 1e6))
    finally:
        numcodecs_blosc.set_nthreads(os.cpu_count() or 1)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-memory", action="store_true", help="skip the larger-than-cache case")
    parser.add_argument(
        "--s3", action="store_true", help="add S3 (a moto server on loopback) beside local"
    )
    parser.add_argument("--s3-only", action="store_true", help="only the S3 beside local table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scale = 0.2 if args.quick else 1.0
    repeats = 10 if args.quick else 40
    fill_repeats = 3 if args.quick else 5
    datasets = {
        "vector": (vector_transitions(int(100_000 * scale)), 1000),
        "pixel": (pixel_transitions(int(2_000 * scale)), 100),
        "tokens": (token_generations(int(20_000 * scale)), 250),
    }
    root = Path(tempfile.mkdtemp(prefix="zarrl-bench-"))
    if args.s3_only:
        try:
            object_store_table(datasets, root, fill_repeats, repeats)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    results = {}
    chunk_rows = {}
    try:
        for shape, (data, batch) in datasets.items():
            stores, filled = fill_all(
                storages(data.bytes()), data, batch, root / shape, fill_repeats
            )
            chunk_rows[shape] = stores["Zarr default"].log.header.chunk_rows
            for name, row in sample_times(stores, repeats).items():
                results[shape, name] = {**filled[name], **row}
            for storage in stores.values():
                if isinstance(storage, ZarrStorage):
                    storage.close()
            del stores
            shutil.rmtree(root / shape, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    cols = ["rows/s", "MB/s", "random ms", "slice ms", "disk MB"]
    print(
        f"\nReplay storages, measured side by side ({cpu_model()}, {os.cpu_count()} cores, "
        f"torch threads=1; extend: median of {fill_repeats} interleaved fills)"
    )
    print(
        f"{'shape':7} {'storage':20} "
        + " ".join(f"{c:>10}" for c in cols)
        + "   ratios to memmap: extend  random   slice    disk"
    )
    for (shape, name), row in results.items():
        ref = results[shape, "LazyMemmapStorage"]
        ratio = (
            row["rows/s"] / ref["rows/s"],
            row["random ms"] / ref["random ms"],
            row["slice ms"] / ref["slice ms"],
            row["disk MB"] / ref["disk MB"],
        )
        print(
            f"{shape:7} {name:20} "
            + " ".join(f"{row[c]:10.3g}" for c in cols)
            + "                     "
            + " ".join(f"{r:7.2f}" for r in ratio)
        )
    print(
        "\nChunk codecs over all leaves (crc32c appended; one thread, whole chunks of the rows "
        "ZarrStorage picks): compression ratio, encode / decode MB/s"
    )
    codec_data = {s: (d[: max(1, len(d) // 2)], chunk_rows[s]) for s, (d, _) in datasets.items()}
    for shape, cname, ratio, enc, dec in codec_table(codec_data):
        print(f"{shape:7} {cname:26} ratio {ratio:6.2f}  encode {enc:8.1f}  decode {dec:8.1f}")
    if not args.no_memory:
        print(
            "\nSampling a store larger than its cache (benchmarks/buffer_memory.py, fresh "
            "processes; RandomSampler + SliceSampler batches of 256 pixel rows):"
        )
        store_gb, cache_mib = (0.85, 128) if args.quick else (1.7, 256)
        figures = buffer_memory.run(int(store_gb * 1e9), cache_mib * 2**20, batches=400)
        print(buffer_memory.report(figures))
    if args.s3:
        object_store_table(datasets, root, fill_repeats, repeats)


# ------------------------------------------------------------------ object storage (S3, moto)
def _s3_maker(url: str, options: dict, **kwargs) -> Callable:
    """A ``fill`` maker writing to ``<url>/<shape>/<name.round>`` on the S3 server."""

    def make(n: int, path: Path) -> ZarrStorage:
        return ZarrStorage(
            n, path=f"{url}/{path.parent.name}/{path.name}", storage_options=options, **kwargs
        )

    return make


def object_store_table(
    datasets: dict[str, tuple[TensorDict, int]], root: Path, fill_repeats: int, repeats: int
) -> None:
    """The same fills and samplers on S3 (a moto server on 127.0.0.1: zarr's obstore-backed
    store, every request over loopback HTTP) beside the local store: the default chunk cache,
    the hot tier (``cache="ram"``) and a store four times larger than its cache; ratios S3 /
    local for each."""
    from zarrl.buffers.local_s3 import LocalS3

    server = LocalS3().start()
    server.create_bucket("bench")
    options = server.storage_options
    results = {}
    try:
        for shape in ("vector", "pixel"):
            data, batch = datasets[shape]
            quarter = max(1, data.bytes() // 4)
            makers = {}
            for label, kwargs in (
                ("default", {}),
                ("hot (ram)", {"cache": "ram"}),
                ("cache 25%", {"cache": quarter}),
            ):
                makers[f"local {label}"] = lambda n, p, kw=kwargs: ZarrStorage(n, path=p, **kw)
                makers[f"S3 {label}"] = _s3_maker("s3://bench", options, **kwargs)
            stores, filled = fill_all(makers, data, batch, root / f"s3-{shape}", fill_repeats)
            for name, row in sample_times(stores, repeats).items():
                results[shape, name] = {**filled[name], **row}
            for storage in stores.values():
                storage.close()
            shutil.rmtree(root / f"s3-{shape}", ignore_errors=True)
    finally:
        server.stop()
    print(
        f"\nObject storage: S3 (moto on 127.0.0.1, zarr ObjectStore over obstore) beside the "
        f"local store ({cpu_model()}); ratios S3 / local of the same cache setting"
    )
    print(
        f"{'shape':7} {'cache':10} {'local rows/s':>12} {'S3 rows/s':>10} {'extend':>7} "
        f"{'local rnd ms':>12} {'S3 rnd ms':>10} {'random':>7} {'S3 slice ms':>11} {'slice':>7}"
    )
    for shape in ("vector", "pixel"):
        for label in ("default", "hot (ram)", "cache 25%"):
            loc, s3 = results[shape, f"local {label}"], results[shape, f"S3 {label}"]
            print(
                f"{shape:7} {label:10} {loc['rows/s']:12.4g} {s3['rows/s']:10.4g} "
                f"{s3['rows/s'] / loc['rows/s']:7.2f} {loc['random ms']:12.3g} "
                f"{s3['random ms']:10.3g} {s3['random ms'] / loc['random ms']:7.2f} "
                f"{s3['slice ms']:11.3g} {s3['slice ms'] / loc['slice ms']:7.2f}"
            )


if __name__ == "__main__":
    main()
