"""Replay-storage benchmark: LazyTensorStorage vs LazyMemmapStorage vs ZarrStorage, side by side.

For three data shapes (vector transitions, pixel transitions, token generations) it measures
extend throughput (durable: the Zarr numbers include the final commit, fsynced; "Zarr no fsync"
is the same store with ``durability="process"``), the time to sample a
RandomSampler batch of 256 and a SliceSampler batch of 32 slices x 8 steps, and bytes on disk,
then prints one table with ratios to LazyMemmapStorage. "Zarr default" is ``ZarrStorage`` with its
defaults: true values in every array, floats through row-delta filters and Blosc zstd, other
leaves Blosc LZ4 (``buffers/codecs.py``, docs/storage_format.md), which is what brings the
vector store under half of LazyMemmapStorage's bytes without ``dedupe_next``. "Zarr cache=1/4" is a store four times
larger than its chunk cache: its RandomSampler batches come from cached rows (refilled in the
background, ``ZarrStorage.refill_ratio`` rows decoded per sampled row), while a plain
SliceSampler stays exact and reads missed chunks synchronously. The row "Zarr 1/4 CachedSlice"
is an identical store of its own sampled with ``zarrl.buffers.CachedSliceSampler`` for the slice
column (slices from cached segments of trajectories only; semantics in docs/storage_format.md).
A second table compares chunk codecs (compression ratio, encode and decode speed), which is how
the default codec was chosen.

    python benchmarks/buffer.py            # full run
    python benchmarks/buffer.py --quick    # smaller data, fewer repeats
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import zarr.codecs
from tensordict import TensorDict
from torchrl.data import (
    LazyMemmapStorage,
    LazyTensorStorage,
    RandomSampler,
    SliceSampler,
    TensorDictReplayBuffer,
)
from zarrl.buffers import CachedSliceSampler, ZarrStorage


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


def fill(make, data: TensorDict, batch: int, path: Path) -> tuple[object, dict]:
    """Builds a storage and extends it batch by batch; the Zarr figure includes the commit."""
    storage = make(len(data), path)
    rb = TensorDictReplayBuffer(storage=storage, batch_size=256)
    t0 = time.perf_counter()
    for start in range(0, len(data), batch):
        rb.extend(data[start : start + batch])
    if isinstance(storage, ZarrStorage):
        storage.flush()  # durable: the commit is part of the extend cost
    extend_s = time.perf_counter() - t0
    return storage, {
        "rows/s": len(data) / extend_s,
        "MB/s": data.bytes() / extend_s / 1e6,
        "disk MB": dir_bytes(path) / 1e6 if path.exists() else float("nan"),
    }


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


def _no_fsync(storage: ZarrStorage) -> ZarrStorage:
    storage.durability = "process"
    return storage


def storages(data_bytes: int) -> dict[str, Callable]:
    quarter = max(1, data_bytes // 4)
    return {
        "LazyTensorStorage": lambda n, p: LazyTensorStorage(n),
        "LazyMemmapStorage": lambda n, p: LazyMemmapStorage(n, scratch_dir=str(p)),
        "Zarr default": lambda n, p: ZarrStorage(n, path=p),
        # flush() fsyncs by default (durability="os"); "process" survives a killed process only
        "Zarr no fsync": lambda n, p: _no_fsync(ZarrStorage(n, path=p)),
        "Zarr hot (ram)": lambda n, p: ZarrStorage(n, path=p, cache="ram"),
        "Zarr cache=1/4": lambda n, p: ZarrStorage(n, path=p, cache=quarter),
        # its own store: sharing one with the plain SliceSampler's synchronous reads would
        # measure the cache churn those cause, not this sampler
        _CACHED_SLICE: lambda n, p: ZarrStorage(n, path=p, cache=quarter),
    }


def codec_table(datasets: dict[str, TensorDict]) -> list[tuple]:
    """Compression ratio and zarr write/read MB/s per codec (crc32c appended), per data shape."""
    candidates = {
        "blosc-zstd3+shuffle": [zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
        "blosc-zstd3+bitshuffle": [
            zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
        ],
        "blosc-lz4+shuffle": [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
        "blosc-zlib5+shuffle": [zarr.codecs.BloscCodec(cname="zlib", clevel=5, shuffle="shuffle")],
        "zstd1": [zarr.codecs.ZstdCodec(level=1)],
        "zstd3": [zarr.codecs.ZstdCodec(level=3)],
    }
    rows = []
    for shape, data in datasets.items():
        leaves = {k: v.numpy() for k, v in data.items(include_nested=True, leaves_only=True)}
        raw = sum(v.nbytes for v in leaves.values())
        for cname, comps in candidates.items():
            with tempfile.TemporaryDirectory() as tmp:
                group = zarr.open_group(tmp, mode="w")
                arrays = {}
                enc = dec = 0.0
                for i, (key, value) in enumerate(leaves.items()):
                    chunk_rows = max(16, 2 ** int(math.log2(max(1, 2**20 // value[0].nbytes))))
                    arrays[key] = group.create_array(
                        f"a{i}",
                        shape=value.shape,
                        dtype=value.dtype,
                        chunks=(min(chunk_rows, len(value)), *value.shape[1:]),
                        compressors=[*comps, zarr.codecs.Crc32cCodec()],
                    )
                    t0 = time.perf_counter()
                    arrays[key][...] = value
                    enc += time.perf_counter() - t0
                on_disk = dir_bytes(Path(tmp))
                for key, arr in arrays.items():
                    t0 = time.perf_counter()
                    assert np.array_equal(arr[...], leaves[key])
                    dec += time.perf_counter() - t0
            rows.append((shape, cname, raw / on_disk, raw / enc / 1e6, raw / dec / 1e6))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scale = 0.2 if args.quick else 1.0
    repeats = 10 if args.quick else 40
    datasets = {
        "vector": (vector_transitions(int(100_000 * scale)), 1000),
        "pixel": (pixel_transitions(int(2_000 * scale)), 100),
        "tokens": (token_generations(int(20_000 * scale)), 250),
    }
    root = Path(tempfile.mkdtemp(prefix="zarrl-bench-"))
    results = {}
    try:
        for shape, (data, batch) in datasets.items():
            stores = {}
            for name, make in storages(data.bytes()).items():
                path = root / shape / name.replace(" ", "_")
                stores[name], results[shape, name] = fill(make, data, batch, path)
            for name, row in sample_times(stores, repeats).items():
                results[shape, name].update(row)
            for storage in stores.values():
                if isinstance(storage, ZarrStorage):
                    storage.close()
            del stores
            shutil.rmtree(root / shape, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    cols = ["rows/s", "MB/s", "random ms", "slice ms", "disk MB"]
    print(f"\nReplay storages, measured side by side (torch threads=1, {os.cpu_count()} cores)")
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
    print("\nChunk codecs (crc32c appended to each): compression ratio, encode / decode MB/s")
    codec_data = {s: d[: max(1, len(d) // 4)] for s, (d, _) in datasets.items()}
    for shape, cname, ratio, enc, dec in codec_table(codec_data):
        print(f"{shape:7} {cname:24} ratio {ratio:6.2f}  encode {enc:8.1f}  decode {dec:8.1f}")


if __name__ == "__main__":
    main()
