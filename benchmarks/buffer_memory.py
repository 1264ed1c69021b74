"""Peak memory of sampling a ZarrStorage much larger than its chunk cache.

A writer process fills a store of pixel transitions (``benchmarks/buffer.py``'s data, uint8
[3, 84, 84] frames and their next frames), batch by batch so its own RAM stays small; then a
fresh sampler process imports everything, records its RSS (``imports``), opens the store with
``cache=<bytes>`` and draws RandomSampler batches (served from cached chunks, refilled in the
background) and SliceSampler batches (exact: missed chunks are read synchronously), and reports
its peak RSS (``VmHWM``). The bound zarrl states (docs/storage_format.md, "Memory"):

    peak RSS <= imports + 1.25 x cache

Each process is started fresh, so its RSS is only its own.

    python benchmarks/buffer_memory.py              # 0.85 GB store, 64 MiB cache (~2 min, 2 cores)
    python benchmarks/buffer_memory.py --large      # 3.4 GB store, 256 MiB cache (the issue's case)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BOUND = 1.25  # peak RSS <= imports + BOUND * cache
ROW_BYTES = 2 * 3 * 84 * 84 + 8 + 8 + 4 + 1  # pixels, next pixels, action, episode, reward, done


def _status_kib(field: str) -> int:
    """``VmRSS``/``VmHWM`` of this process, in KiB (Linux ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _reset_peak() -> None:
    """Resets ``VmHWM`` to the current RSS (Linux >= 4.0), so the peak excludes the warm-up."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # the peak then also covers the warm-up, which is far smaller


def write_store(path: str, rows: int, batch: int = 1000) -> None:
    """Fills a store of ``rows`` pixel transitions at ``path``, ``batch`` rows per extend."""
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from buffer import pixel_transitions
    from torchrl.data import TensorDictReplayBuffer
    from zarrl.buffers import ZarrStorage

    torch.set_num_threads(1)
    storage = ZarrStorage(rows, path=path, cache=64 * 2**20)
    rb = TensorDictReplayBuffer(storage=storage)
    block = pixel_transitions(
        batch, traj_len=min(200, batch)
    )  # one block of trajectories, re-labelled per batch
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        data = block[:n].clone()
        data["episode"] += start  # distinct trajectories in each batch
        rb.extend(data)
    storage.close()


def sample_store(path: str, cache: int, batches: int) -> dict:
    """Opens the store with a ``cache``-byte chunk cache in this (fresh) process and samples;
    returns RSS figures in bytes."""
    import torch
    from torchrl.data import RandomSampler, SliceSampler, TensorDictReplayBuffer
    from zarrl.buffers import ZarrStorage

    torch.set_num_threads(1)

    def buffers(storage):
        return (
            TensorDictReplayBuffer(storage=storage, sampler=RandomSampler(), batch_size=256),
            TensorDictReplayBuffer(
                storage=storage,
                sampler=SliceSampler(num_slices=32, traj_key="episode"),
                batch_size=256,
            ),
        )

    # warm-up on a tiny store (written by the writer process): the code every step runs
    # (torch's lazy set-up, zarr's codec pipeline, blosc) counts as imports, not as cache
    tiny = ZarrStorage.open(str(Path(path).with_name("tiny.zarr")), mode="r", cache=1)
    for rb in buffers(tiny):
        rb.sample()
    tiny.close()
    del tiny, rb
    imports = _status_kib("VmRSS") * 1024
    _reset_peak()
    storage = ZarrStorage.open(path, mode="r", cache=cache)
    random_rb, slice_rb = buffers(storage)
    t0 = time.perf_counter()
    checksum = 0
    for i in range(batches):
        checksum += int(random_rb.sample()["action"].sum())
        if i % 4 == 0:  # exact slices read missed chunks synchronously: the larger transients
            checksum += int(slice_rb.sample()["action"].sum())
    elapsed = time.perf_counter() - t0
    pool = storage.hot.pool
    return {
        "imports": imports,
        "cache": cache,
        "pool": pool.max_slots * pool.chunk_nbytes,
        "chunk": pool.chunk_nbytes,
        "peak": _status_kib("VmHWM") * 1024,
        "rows": len(storage),
        "seconds": elapsed,
        "checksum": checksum,
    }


def run(store_bytes: int, cache: int, batches: int, root: str | None = None) -> dict:
    """Writes a store of about ``store_bytes`` (raw) in one process, samples it in another;
    returns the sampler's figures plus ``store`` (raw bytes) and ``disk`` (bytes on disk)."""
    rows = max(1000, store_bytes // ROW_BYTES // 1000 * 1000)
    tmp = Path(tempfile.mkdtemp(prefix="zarrl-mem-", dir=root))
    path = str(tmp / "store.zarr")
    me = [sys.executable, str(Path(__file__).resolve())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        for where, n in ((tmp / "tiny.zarr", 64), (path, rows)):
            subprocess.run([*me, "--write", str(where), "--rows", str(n)], check=True, env=env)
        out = subprocess.run(
            [*me, "--sample", path, "--cache", str(cache), "--batches", str(batches)],
            check=True,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout
        result = json.loads(out.strip().splitlines()[-1])
        result["store"] = rows * ROW_BYTES
        result["disk"] = sum(f.stat().st_blocks * 512 for f in tmp.rglob("*") if f.is_file())
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(r: dict) -> str:
    """One line: the figures in MB and the ratio (peak - imports) / cache against the bound."""
    over = (r["peak"] - r["imports"]) / r["cache"]
    return (
        f"store {r['store'] / 1e9:.2f} GB raw ({r['disk'] / 1e9:.2f} GB on disk, "
        f"{r['rows']} rows), cache {r['cache'] / 2**20:.0f} MiB (pool "
        f"{r['pool'] / 2**20:.0f} MiB, chunk {r['chunk'] / 2**20:.1f} MiB): imports RSS "
        f"{r['imports'] / 1e6:.0f} MB, peak RSS {r['peak'] / 1e6:.0f} MB, peak - imports = "
        f"{over:.2f} x cache (bound {BOUND} x: {'ok' if over <= BOUND else 'EXCEEDED'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="3.4 GB store, 256 MiB cache")
    parser.add_argument("--store-gb", type=float, default=None, help="raw store size, GB")
    parser.add_argument("--cache-mib", type=int, default=None)
    parser.add_argument("--batches", type=int, default=400, help="RandomSampler batches")
    parser.add_argument("--write", help=argparse.SUPPRESS)
    parser.add_argument("--sample", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        write_store(args.write, args.rows)
        return
    if args.sample:
        print(json.dumps(sample_store(args.sample, args.cache, args.batches)))
        return
    store_gb = args.store_gb or (3.4 if args.large else 0.85)
    cache = (args.cache_mib or (256 if args.large else 64)) * 2**20
    print(report(run(int(store_gb * 1e9), cache, args.batches)))


if __name__ == "__main__":
    main()
