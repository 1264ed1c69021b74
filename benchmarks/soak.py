"""Soak: writers and a learner, killed and restarted at random; every committed row checked.

``--mode ray`` (the default): TorchRL Ray collectors into a Ray-hosted ``ZarrStorage`` and a
learner that trains (``benchmarks/soak_ray.py``, ``docs/scale-out.md``). ``--mode segments``:
``--writers`` writer processes append to their own segments (``buffers/segments.py``) of one
logical buffer; writer ``k``'s row ``i`` is a pure function of ``(k, i)`` (so a restarted writer
continues after its committed rows with the same values). A learner process refreshes a
``SegmentedReader`` and samples random rows of the union, checking every sampled row, and reports
its resident memory. For ``--minutes``, the driver SIGKILLs a random process (among those that
reported since they started) every 0.5-3 s and restarts it. At the end: every row each writer reported committed is present
and bit-exact, no row is torn, and the learner's memory stayed bounded (its peak RSS against its RSS after the first
minute of warm-up, or the first report). ``--s3`` runs on a moto S3 server on 127.0.0.1.

    python benchmarks/soak.py --minutes 30                      # the Ray soak (not in CI)
    python benchmarks/soak.py --mode segments --minutes 30      # segment writers
    python benchmarks/soak.py --mode segments --minutes 1       # as tests/buffers/test_soak.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from json_lines import JsonLines  # benchmarks/json_lines.py (sibling script)

OBS = 8


def rows(writer: int, start: int, n: int):
    """Writer ``writer``'s rows ``start .. start + n`` (a TensorDict)."""
    import torch
    from tensordict import TensorDict

    i = torch.arange(start, start + n, dtype=torch.int64)
    obs = (i[:, None] * 7 + writer * 1000 + torch.arange(OBS)).float()
    return TensorDict(
        {"id": i, "writer": torch.full((n,), writer), "obs": obs, ("next", "obs"): obs + 1},
        batch_size=[n],
    )


def check(batch) -> None:
    """Raises ``AssertionError`` if any row differs from ``rows`` (torn or corrupt)."""
    import torch

    ids, writers = batch["id"], batch["writer"]
    obs = (ids[:, None] * 7 + writers[:, None] * 1000 + torch.arange(OBS)).float()
    assert torch.equal(batch["obs"], obs), "torn or corrupt obs"
    assert torch.equal(batch["next", "obs"], obs + 1), "torn or corrupt next/obs"


def writer_main(root: str, k: int, options: dict | None, seed: int) -> None:
    from torchrl.data import ReplayBuffer
    from zarrl.buffers.segments import open_segment_writer

    rng = random.Random(seed)
    storage = open_segment_writer(root, f"w{k}", chunk_rows=64, storage_options=options)
    storage.durability = "process"
    rb = ReplayBuffer(storage=storage)
    n = len(storage)
    while True:
        size = rng.randint(1, 150)
        rb.extend(rows(k, n, size))
        n += size
        if rng.random() < 0.3:
            storage.flush()
            print(json.dumps({"committed": n}), flush=True)


def learner_main(root: str, options: dict | None, seed: int) -> None:
    import torch
    from zarrl.buffers.segments import SegmentedReader

    torch.manual_seed(seed)
    reader = SegmentedReader(root, options, cache=16 * 2**20)
    samples = 0
    while True:
        reader.refresh()
        n = len(reader)
        if n:
            check(reader.get(torch.randint(n, (256,))))
            samples += 1
        with open(f"/proc/{os.getpid()}/status") as f:
            rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")) * 1024
        print(json.dumps({"rows": n, "samples": samples, "rss": rss}), flush=True)
        time.sleep(0.05)


class Proc:
    """A child process of this script, its last report, restarted on demand."""

    def __init__(self, role: list[str]) -> None:
        self.role, self.proc, self.last, self.starts = role, None, {}, 0
        self.reported = False  # since its last start

    def start(self, seed: int) -> None:
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (stderr; lives as the child)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *self.role, str(seed)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.lines = JsonLines(self.proc.stdout)
        self.starts += 1
        self.reported = False

    def _drain(self) -> list[dict]:
        out = self.lines.read()
        if out:
            self.last.update(out[-1])
            self.reported = True
        return out

    def poll(self) -> list[dict]:
        out = self._drain()
        if self.proc.poll() not in (None, -signal.SIGKILL):
            self.log.seek(0)
            raise RuntimeError(f"{self.role} died: {self.log.read()[-2000:]}")
        return out

    def kill(self) -> None:
        self.poll()
        self.proc.kill()
        self.proc.wait()
        self._drain()


def soak(
    root: str,
    writers: int,
    minutes: float,
    options: dict | None,
    seed: int,
    kill_every: tuple[float, float] = (0.5, 3.0),
) -> dict:
    rng = random.Random(seed)
    opt = json.dumps(options)
    procs = [Proc(["writer", root, str(k), opt]) for k in range(writers)]
    learner = Proc(["learner", root, opt])
    for p in [*procs, learner]:
        p.start(rng.randrange(2**31))
    committed = [0] * writers
    rss, kills = [], 0
    end = time.monotonic() + 60 * minutes
    next_kill = time.monotonic() + rng.uniform(*kill_every)
    warm = time.monotonic() + min(60.0, 20 * minutes)
    while time.monotonic() < end:
        time.sleep(0.1)
        for k, p in enumerate(procs):
            p.poll()
            committed[k] = max(committed[k], p.last.get("committed", 0))
        for report in learner.poll():
            if time.monotonic() >= warm or not rss:
                rss.append(report["rss"])
        working = [p for p in [*procs, learner] if p.reported]  # past its start-up
        if time.monotonic() >= next_kill and working:
            victim = rng.choice(working)
            victim.kill()
            kills += 1
            victim.start(rng.randrange(2**31))
            next_kill = time.monotonic() + rng.uniform(*kill_every)
    for k, p in enumerate(procs):
        p.kill()
        committed[k] = max(committed[k], p.last.get("committed", 0))
    learner.kill()
    import torch
    from zarrl.buffers.segments import SegmentedReader

    with SegmentedReader(root, options) as reader:
        lengths = reader.lengths()
        for k in range(writers):
            got = lengths.get(f"w{k}", 0)
            assert got >= committed[k], f"writer {k}: {got} rows stored, {committed[k]} committed"
        assert len(reader), "no row was committed"
        data = reader.get(torch.arange(len(reader)))
    check(data)
    order = torch.cat([torch.arange(n) for n in lengths.values()])
    assert torch.equal(data["id"], order), "rows missing or out of place"
    return {
        "minutes": minutes,
        "writers": writers,
        "kills": kills,
        "restarts": sum(p.starts - 1 for p in [*procs, learner]),
        "rows": int(len(data)),
        "committed rows reported": sum(committed),
        "learner samples (last run)": learner.last.get("samples", 0),
        "learner rss MiB first/peak": [rss[0] / 2**20, max(rss) / 2**20] if rss else None,
        "rss growth": max(rss) / rss[0] if rss else float("nan"),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("writer", "learner"):
        role, root = sys.argv[1], sys.argv[2]
        if role == "writer":
            writer_main(root, int(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5]))
        else:
            learner_main(root, json.loads(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument(
        "--writers",
        "--workers",
        type=int,
        default=2,
        help="segment writers (segments) or Ray collector workers (ray)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--s3", action="store_true", help="on a moto S3 server (loopback)")
    parser.add_argument(
        "--mode",
        choices=["ray", "segments"],
        default="ray",
        help="ray: Ray collectors into a Ray-hosted store and a training learner "
        "(benchmarks/soak_ray.py); segments: segment writer processes and a sampling learner",
    )
    parser.add_argument("--kill-every", type=float, nargs=2, default=None, metavar=("MIN", "MAX"))
    args = parser.parse_args()
    server, options = None, None
    with tempfile.TemporaryDirectory(prefix="zarrl-soak-") as tmp:
        root = f"{tmp}/buffer"
        if args.s3:
            from zarrl.buffers.local_s3 import LocalS3

            server = LocalS3().start()
            server.create_bucket("soak")
            options = server.storage_options
            root = "s3://soak/buffer"
        try:
            if args.mode == "ray":
                sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
                from soak_ray import soak as ray_soak

                every = tuple(args.kill_every or (3.0, 20.0))
                result = ray_soak(root, args.writers, args.minutes, options, args.seed, every)
            else:
                every = tuple(args.kill_every or (0.5, 3.0))
                result = soak(root, args.writers, args.minutes, options, args.seed, every)
        finally:
            if server is not None:
                server.stop()
    print(json.dumps(result, indent=1, default=lambda x: float(np.round(x, 2))))


if __name__ == "__main__":
    main()
