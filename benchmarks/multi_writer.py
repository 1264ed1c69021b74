"""Several writers into one logical buffer: per-writer segments vs Icechunk, side by side.

Each writer is its own process appending ``--batches`` batches of ``--rows`` transition rows
(obs 16 x f32, next obs 16 x f32, action, id i64, reward f32, done bool: 153 bytes per row) and
committing after each batch. Printed per design and writer count (1, 2): total rows/s over the
wall time of all writers, the median and 95th percentile commit latency, the conflicts met, and
what a plain zarr-python reader (no zarrl, no icechunk) sees.

- **segments**: writer ``k`` appends to its own zarrl store ``<root>/segments/w<k>.zarr`` (its
  own rows, chunks and commit record; ``ZarrStorage.flush`` per batch, ``durability="process"``).
  Writers share no object, so none can conflict or wait for another.
- **icechunk**: all writers append to the same arrays of one Icechunk repository (branch
  ``main``): each batch resizes the arrays and writes its rows in a session, then commits; a
  ``ConflictError`` (another writer committed first) is retried from a fresh session at the new
  end (the resize touches the same array metadata, so ``rebase`` cannot resolve it).

Both on the local file system (Icechunk with one writer only there: its local storage is not
safe for concurrent commits), and with ``--s3`` also on a moto S3 server on 127.0.0.1.

    python benchmarks/multi_writer.py            # ~1 min on 2 cores
    python benchmarks/multi_writer.py --s3       # adds the S3 (moto, loopback) rows
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ICECHUNK_LOG", "error")  # its warning about local storage, once per call
OBS = 16
LOCAL_ICECHUNK = "Icechunk's local file system storage is not safe for concurrent commits"


def rows(writer: int, start: int, n: int) -> dict[str, np.ndarray]:
    i = np.arange(start, start + n, dtype=np.int64)
    obs = (i[:, None] * (writer + 1) + np.arange(OBS)).astype(np.float32)
    return {
        "obs": obs,
        "next/obs": obs + 1,
        "action": i % 7,
        "reward": (i % 3).astype(np.float32),
        "done": i % 50 == 49,
        "id": (writer << 32) | i,  # unique across writers
    }


def _segments_writer(args) -> dict:
    import torch
    from tensordict import TensorDict
    from torchrl.data import ReplayBuffer
    from zarrl.buffers import ZarrStorage

    root, writer, batches, n, options = args
    url = f"{root}/segments/w{writer}.zarr"
    storage = ZarrStorage(None, path=url, chunk_rows=n, storage_options=options)
    storage.durability = "process"
    rb = ReplayBuffer(storage=storage)
    latencies = []
    t0 = time.perf_counter()
    for b in range(batches):
        data = rows(writer, b * n, n)
        td = TensorDict(
            {
                "obs": torch.from_numpy(data["obs"]),
                ("next", "obs"): torch.from_numpy(data["next/obs"]),
                "action": torch.from_numpy(data["action"]),
                "reward": torch.from_numpy(data["reward"]),
                "done": torch.from_numpy(data["done"]),
                "id": torch.from_numpy(data["id"]),
            },
            batch_size=[n],
        )
        rb.extend(td)
        t = time.perf_counter()
        storage.flush()
        latencies.append(time.perf_counter() - t)
    storage.close()
    return {"seconds": time.perf_counter() - t0, "latencies": latencies, "conflicts": 0}


def _icechunk_storage(root: str, options: dict | None):
    import icechunk as ic

    if options is None:
        return ic.local_filesystem_storage(f"{root}/icechunk")
    bucket, _, prefix = root.removeprefix("s3://").partition("/")
    return ic.s3_storage(
        bucket=bucket,
        prefix=f"{prefix}/icechunk",
        endpoint_url=options["endpoint_url"],
        region="us-east-1",
        allow_http=True,
        access_key_id="testing",
        secret_access_key="testing",
        force_path_style=True,
    )


def _icechunk_create(root: str, n: int, options: dict | None) -> None:
    import icechunk as ic
    import zarr

    repo = ic.Repository.create(_icechunk_storage(root, options))
    session = repo.writable_session("main")
    group = zarr.group(store=session.store, zarr_format=3)
    for name, data in rows(0, 0, 1).items():
        group.create_array(
            name, shape=(0, *data.shape[1:]), chunks=(n, *data.shape[1:]), dtype=data.dtype
        )
    session.commit("empty buffer")


def _icechunk_writer(args) -> dict:
    import icechunk as ic
    import zarr

    root, writer, batches, n, options = args
    repo = ic.Repository.open(_icechunk_storage(root, options))
    latencies, conflicts = [], 0
    t0 = time.perf_counter()
    for b in range(batches):
        data = rows(writer, b * n, n)
        t = time.perf_counter()
        while True:
            session = repo.writable_session("main")
            group = zarr.open_group(store=session.store, mode="r+", zarr_format=3)
            end = group["obs"].shape[0]
            for name, values in data.items():
                array = group[name]
                array.resize((end + n, *values.shape[1:]))
                array[end : end + n] = values
            try:
                session.commit(f"writer {writer} batch {b}")
                break
            except ic.ConflictError:
                conflicts += 1
        latencies.append(time.perf_counter() - t)
    return {"seconds": time.perf_counter() - t0, "latencies": latencies, "conflicts": conflicts}


def _plain_reader(design: str, root: str, options: dict | None) -> str:
    """What zarr-python alone (no zarrl, no icechunk) reads at the design's location."""
    import zarr

    if options is not None:
        return "(local runs only)"
    target = f"{root}/segments/w0.zarr" if design == "segments" else f"{root}/icechunk"
    try:
        group = zarr.open_group(target, mode="r")
        return f"each segment: a Zarr v3 group, obs {group['obs'].shape}"
    except Exception as err:
        return f"nothing: {type(err).__name__}"


def _check_rows(design: str, root: str, writers: int, batches: int, n: int, options) -> None:
    """Every row of every writer present, bit-exact (order: per writer for segments, commit
    order for icechunk)."""
    if design == "segments":
        import torch
        from zarrl.buffers import ZarrStorage

        for k in range(writers):
            with ZarrStorage.open(f"{root}/segments/w{k}.zarr", "r", storage_options=options) as s:
                got = s.get(torch.arange(len(s)))["obs"].numpy()
            assert np.array_equal(got, rows(k, 0, batches * n)["obs"]), f"writer {k}"
        return
    import icechunk as ic
    import zarr

    repo = ic.Repository.open(_icechunk_storage(root, options))
    group = zarr.open_group(store=repo.readonly_session("main").store, mode="r")
    ids, obs = group["id"][:], group["obs"][:]
    want = np.concatenate([rows(k, 0, batches * n)["id"] for k in range(writers)])
    assert np.array_equal(np.sort(ids), np.sort(want)), "rows lost or repeated"
    k, i = ids >> 32, ids & 0xFFFFFFFF
    assert np.array_equal(obs[:, 0], (i * (k + 1)).astype(np.float32)), "torn rows"


def run(design: str, writers: int, batches: int, n: int, s3: str | None, options) -> dict:
    with tempfile.TemporaryDirectory(prefix="zarrl-mw-") as tmp:
        root = s3 or tmp
        if s3 is not None:
            root = f"{s3}/{design}{writers}"
        if design == "icechunk":
            _icechunk_create(root, n, options)
        work = _segments_writer if design == "segments" else _icechunk_writer
        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(writers) as pool:
            results = pool.map(work, [(root, k, batches, n, options) for k in range(writers)])
        wall = time.perf_counter() - t0
        _check_rows(design, root, writers, batches, n, options)
        lat = np.concatenate([r["latencies"] for r in results]) * 1e3
        return {
            "rows/s": writers * batches * n / max(r["seconds"] for r in results),
            "wall": wall,
            "commit ms p50": float(np.median(lat)),
            "commit ms p95": float(np.percentile(lat, 95)),
            "conflicts": sum(r["conflicts"] for r in results),
            "plain zarr reads": _plain_reader(design, root, options),
        }


def _moto() -> tuple[object, str, dict]:
    from zarrl.buffers.local_s3 import LocalS3

    server = LocalS3().start()
    return server, server.create_bucket("bench"), server.storage_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048, help="rows per batch (and chunk)")
    parser.add_argument("--batches", type=int, default=20, help="batches per writer")
    parser.add_argument("--s3", action="store_true", help="also on a moto S3 server (loopback)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    from machine import cpu_model

    print(f"CPU: {cpu_model()} ({mp.cpu_count()} cores)")
    print(f"{args.batches} batches x {args.rows} rows per writer, a commit per batch")
    places: list[tuple[str, str | None, dict | None]] = [("local", None, None)]
    server = None
    if args.s3:
        server, bucket, options = _moto()
        places.append(("s3 (moto)", bucket, options))
    header = f"{'store':10} {'design':9} {'writers':>7} {'rows/s':>10} {'x 1 writer':>10} "
    header += f"{'commit p50':>10} {'p95 ms':>8} {'conflicts':>9}  plain zarr reader"
    print(header)
    out = []
    try:
        for place, s3, options in places:
            for design in ("segments", "icechunk"):
                one = None
                for writers in (1, 2):
                    if design == "icechunk" and s3 is None and writers > 1:
                        print(f"{place:10} {design:9} {writers:>7}  skipped: {LOCAL_ICECHUNK}")
                        continue
                    r = run(design, writers, args.batches, args.rows, s3, options)
                    one = one or r["rows/s"]
                    out.append({"store": place, "design": design, "writers": writers, **r})
                    print(
                        f"{place:10} {design:9} {writers:>7} {r['rows/s']:>10.0f} "
                        f"{r['rows/s'] / one:>10.2f} {r['commit ms p50']:>10.1f} "
                        f"{r['commit ms p95']:>8.1f} {r['conflicts']:>9}  {r['plain zarr reads']}",
                        flush=True,
                    )
    finally:
        if server is not None:
            server.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
