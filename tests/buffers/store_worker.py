"""Subprocess helpers for the durability tests (run as a script, never imported by pytest).

``zygote``: imports everything once, then for each ``go SEED PATH MAX_SIZE`` line on stdin forks
a child that reopens (or creates) the store and appends deterministic rows forever, flushing at
random moments; prints the child's pid. The test SIGKILLs the child at a random moment.

``read TARGET PATH -`` (a zygote command): forks a reader that refreshes a read-only storage
until it sees ``TARGET`` rows appended, checking every visible row, and prints a JSON summary.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

import torch
from tensordict import TensorDict
from zarrl.buffers import ZarrStorage


def _obs(i: torch.Tensor) -> torch.Tensor:
    x = i.double()
    return torch.stack([x, torch.sin(x), -x, x / 3, torch.cos(x)], -1).float()  # 20 bytes


def rows(start: int, n: int) -> TensorDict:
    """Row ``i`` is a pure function of its global id ``i`` across five arrays; its next obs is
    the obs of row ``i + 1`` except at episode ends (stored de-duplicated, format version 2)."""
    i = torch.arange(start, start + n, dtype=torch.int64)
    done = (i % 13 == 12).unsqueeze(-1)
    return TensorDict(
        {
            "obs": _obs(i),
            "action": torch.stack([i, 7 * i], -1),
            "pixels": (i.view(-1, 1, 1) % 251).expand(n, 6, 6).to(torch.uint8).contiguous(),
            ("next", "obs"): torch.where(done, -_obs(i), _obs(i + 1)),
            ("next", "done"): done,
        },
        batch_size=[n],
    )


def check_rows(data: TensorDict) -> torch.Tensor:
    """Raises AssertionError if any row is torn or corrupt; returns the row ids."""
    ids = data["action"][:, 0]
    data = data.exclude("index")  # added by TensorDictReplayBuffer's writer
    expected = rows(0, 0)  # schema only
    assert set(data.keys(True, True)) == set(expected.keys(True, True)), data
    want = rows(0, int(ids.max()) + 1 if ids.numel() else 0)[ids] if ids.numel() else None
    if want is not None:
        for key in want.keys(True, True):
            assert torch.equal(data[key], want[key]), f"torn or corrupt rows in {key}"
    return ids


def storage_at(path: str, max_size: int | None, **kw) -> ZarrStorage:
    if os.path.exists(path):
        return ZarrStorage.open(path, mode="r+", **kw)
    return ZarrStorage(max_size, path=path, chunk_rows=16, dedupe_next=True, **kw)


def child(path: str, max_size: int | None, seed: int) -> None:
    from torchrl.data import TensorDictReplayBuffer

    rng = random.Random(seed)
    storage = storage_at(path, max_size, flush_every_rows=rng.choice([None, 7, 40]))
    rb = TensorDictReplayBuffer(storage=storage, batch_size=4)
    next_id = storage.ring.write_count
    while True:
        n = rng.randint(1, 40)
        rb.extend(rows(next_id, n))
        next_id += n
        if rng.random() < 0.3:
            storage.flush()


def zygote() -> None:
    """Reads ``go SEED PATH MAX_SIZE|none`` lines (fork a writer child) and ``read TARGET PATH
    -`` lines (fork a reader child that prints to stdout)."""
    from torchrl.data import TensorDictReplayBuffer  # noqa: F401  (imported before forking)

    torch.set_num_threads(1)
    pid = None
    for line in sys.stdin:
        cmd, arg, *where = line.split()
        if pid is not None:
            os.waitpid(pid, 0)
            pid = None
        if cmd == "quit":
            return
        pid = os.fork()
        if pid == 0:
            try:
                if cmd == "read":
                    try:
                        reader(where[0], int(arg))
                    except BaseException as err:  # report to the test instead of hanging it
                        print(json.dumps({"error": repr(err)}), flush=True)
                    os._exit(0)
                child(where[0], None if where[1] == "none" else int(where[1]), int(arg))
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(1)
        if cmd == "go":
            print(pid, flush=True)


def reader(path: str, target_wc: int) -> None:
    """Follows the writer until its commit reaches ``target_wc`` appended rows."""
    torch.set_num_threads(1)
    storage = ZarrStorage.open(path, mode="r", cache=1)
    print("ready", flush=True)
    states, checked = set(), 0
    deadline = time.monotonic() + 120
    while storage.ring.write_count < target_wc and time.monotonic() < deadline:
        storage.refresh()
        if len(storage):
            data = storage[torch.arange(len(storage))]
            ids = check_rows(data)
            wc = storage.ring.write_count  # a stale read refreshes
            live = set(range(wc - len(storage), wc))
            assert len(set(ids.tolist())) == ids.numel() and set(ids.tolist()) <= live
            checked += ids.numel()
            states.add((len(storage), storage.ring.write_count))
    wc = storage.ring.write_count
    print(json.dumps({"states": len(states), "checked": checked, "wc": wc}), flush=True)


if __name__ == "__main__":
    zygote()
