"""Ray soak (``benchmarks/soak.py --mode ray``): TorchRL Ray collectors writing into a Ray-hosted
``ZarrStorage`` and a learner training on the store, all SIGKILLed and restarted at random.

Processes (``kind``: what the driver kills and restarts):

- ``collect``: a Ray driver that owns the Ray-hosted buffer (``DigestedBuffer``, a
  ``ZarrReplayBuffer`` in its own actor) and a ``RayCollector`` of ``--workers`` workers acting
  with the learner's latest checkpointed policy; it commits the store (``flush_storage``) every
  0.5-3 s and reports the committed row count. Killed: its actors die with it (Ray owner
  semantics); restarted: a new buffer actor reopens the store (``ZarrStorage.open(..., "r+")``)
  at its last commit.
- ``buffer``: the actor hosting the ``ZarrStorage``. Killed: the ``collect`` process sees it gone
  and exits (code 3); the driver restarts it.
- ``worker``: one collector worker actor. Killed: the ``collect`` process commits what the buffer
  holds, shuts the collector down and starts new workers on the same buffer.
- ``learner``: samples random committed rows of the store (read-only ``ZarrStorage.open`` +
  ``refresh``) and runs Adam steps of an off-policy actor-critic loss (TD(0) critic, clipped
  importance-weighted policy gradient on the stored ``action_log_prob``); it checkpoints
  (``torch.save`` to a temporary file, then ``os.replace``) every ~2 s and resumes from the
  checkpoint after a kill. The ``collect`` process loads each new checkpoint into the workers'
  policy (TorchRL's weight sync).

A committed row: a row counted in the store's commit record, written by a ``flush`` of the
``ZarrStorage`` inside the buffer actor (here: the ``collect`` process's periodic
``flush_storage`` call). Rows the actor received after its last commit are lost when the actor
(or its owner) is killed; the next buffer actor continues after the last commit.

Independent check of every row: before the actor writes a batch it appends a digest per row (a
64-bit hash of the row's bytes, ``row_digests``) with the row indices to its own log file
(``digests/<incarnation>.bin``). At the end the store must hold at least every row the driver was
told was committed, and every stored row must match the last digest logged for its index (a
later incarnation's rows replace the uncommitted ones of a killed actor).
"""

from __future__ import annotations

import functools
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from json_lines import JsonLines  # benchmarks/json_lines.py (sibling script)

ENV = "CartPole-v1"
#: digest multipliers (odd 64-bit constants, fixed so that any process computes the same hash)
_MULT = np.random.default_rng(17).integers(1, 2**63, size=4096, dtype=np.uint64) | np.uint64(1)


def row_digests(td, keys: list) -> np.ndarray:
    """``[n]`` uint64: a hash of each row's bytes over the leaves ``keys`` (in that order) of
    the 1-D TensorDict ``td``."""
    n = td.shape[0]
    cols = [
        td.get(k).reshape(n, -1).contiguous().numpy().view(np.uint8).reshape(n, -1) for k in keys
    ]
    raw = np.concatenate(cols, axis=1)
    pad = -raw.shape[1] % 8
    raw = np.ascontiguousarray(np.pad(raw, ((0, 0), (0, pad))))
    words = raw.view("<u8")
    words = words ^ (words >> np.uint64(31))  # mix high bytes into the low ones
    return (words * _MULT[: words.shape[1]]).sum(axis=1, dtype=np.uint64)


def leaf_keys(td) -> list:
    """The sorted leaf keys of ``td`` a row is made of (TorchRL's ``index`` excluded)."""
    keys = [k for k in td.keys(include_nested=True, leaves_only=True) if k != "index"]
    return sorted(keys, key=lambda k: (k,) if isinstance(k, str) else k)


def rss_of(pid: int) -> int | None:
    """Resident memory of process ``pid`` in bytes (``None`` if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")) * 1024
    except (OSError, StopIteration):
        return None


def _report(**fields) -> None:
    print(json.dumps(fields), flush=True)


# ---------------------------------------------------------------- collect process (Ray driver)
def _digested_buffer_class():
    from zarrl.engine.ray_buffer import ZarrReplayBuffer

    class DigestedBuffer(ZarrReplayBuffer):
        """``ZarrReplayBuffer`` that logs a digest per row before writing it (see module doc)."""

        def __init__(self, *args, digest_dir: str, incarnation: int, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._dir = Path(digest_dir)
            self._log = open(self._dir / f"{incarnation:06d}.bin", "ab")  # noqa: SIM115
            self._keys = None

        def extend(self, tensordicts, **kwargs):
            import torch

            rows = tensordicts.reshape(-1)
            if self._keys is None:
                self._keys = leaf_keys(rows)
                names = [list(k) if isinstance(k, tuple) else [k] for k in self._keys]
                keys_file = self._dir / "keys.json"
                if not keys_file.exists():
                    tmp = keys_file.with_suffix(f".{os.getpid()}")
                    tmp.write_text(json.dumps(names))
                    os.replace(tmp, keys_file)
                elif json.loads(keys_file.read_text()) != names:
                    raise RuntimeError(f"row keys changed: {names} vs {keys_file.read_text()}")
            start = len(self.storage)
            digests = row_digests(rows, self._keys)
            self._log.write(np.array([start, len(digests)], dtype="<i8").tobytes())
            self._log.write(digests.astype("<u8").tobytes())
            self._log.flush()
            index = super().extend(tensordicts, **kwargs)
            expected = torch.arange(start, start + len(digests))
            if not torch.equal(torch.as_tensor(index).reshape(-1).cpu(), expected):
                raise RuntimeError(f"rows written at {index}, expected {start}..")
            return index

        def pid(self) -> int:
            return os.getpid()

    return DigestedBuffer


def collect_main(args: dict) -> None:
    import torch
    from zarrl.buffers import ZarrStorage
    from zarrl.engine.config import EnvConfig, ModelConfig
    from zarrl.engine.models import build_actor
    from zarrl.engine.ray_collect import init_ray, ray_collector
    from zarrl.engine.registry import make_environment

    ray = init_ray()  # the driver's cluster (RAY_ADDRESS)
    rng = random.Random(args["seed"])
    root, options, workers = args["root"], args["options"], args["workers"]
    if args["create"]:
        factory = functools.partial(
            ZarrStorage, None, path=root, chunk_rows=256, storage_options=options
        )
    else:
        factory = functools.partial(ZarrStorage.open, root, "r+", storage_options=options)
    rb = _digested_buffer_class()(
        storage=factory,
        service_backend="ray",
        service_backend_options={"remote_config": {"num_cpus": 0}},
        digest_dir=args["digests"],
        incarnation=args["incarnation"],
    )
    remote = rb.client()
    env_cfg = EnvConfig(name=ENV)
    policy = build_actor(make_environment(env_cfg, seed=0), ModelConfig())
    ckpt, ckpt_mtime, policy_updates = Path(args["checkpoint"]), 0.0, 0

    def load_policy() -> bool:
        nonlocal ckpt_mtime, policy_updates
        try:
            mtime = ckpt.stat().st_mtime
            if mtime == ckpt_mtime:
                return False
            state = torch.load(ckpt, weights_only=True)
        except FileNotFoundError:
            return False
        policy.load_state_dict(state["actor"])
        ckpt_mtime, policy_updates = mtime, int(state["updates"])
        return True

    def start_collector():
        offset = int(remote.next_trajectory_id())
        makers = [
            functools.partial(make_environment, env_cfg, seed=rng.randrange(2**31))
            for _ in range(workers)
        ]
        collector = ray_collector(
            makers, policy, rb, num_workers=workers, frames_per_batch=64, total_frames=2**62,
            traj_offset=offset,
        )  # fmt: skip
        pids = ray.get(
            [w.__ray_call__.remote(lambda self: os.getpid()) for w in collector.remote_collectors]
        )
        _report(pids={"buffer": [int(remote.pid())], "worker": [int(p) for p in pids]})
        return collector, iter(collector)

    load_policy()
    collector, batches = start_collector()
    next_flush = time.monotonic() + rng.uniform(0.5, 3)
    while True:
        try:
            next(batches)
            if load_policy():
                collector.update_policy_weights_(policy)
        except Exception as err:  # a worker (or the buffer actor) was killed
            try:
                _report(committed=int(remote.flush_storage()), worker_lost=type(err).__name__)
            except Exception:  # the buffer actor is gone: the driver restarts this process
                os._exit(3)
            try:
                collector.shutdown()
            except Exception as shut:
                print(f"collector shutdown after a lost worker: {shut!r}", file=sys.stderr)
            collector, batches = start_collector()
            continue
        if time.monotonic() >= next_flush:
            try:
                _report(committed=int(remote.flush_storage()), policy_updates=policy_updates)
            except Exception:
                os._exit(3)
            next_flush = time.monotonic() + rng.uniform(0.5, 3)


# --------------------------------------------------------------------------- learner process
def learner_main(args: dict) -> None:
    import torch
    from torch import nn
    from zarrl.buffers import ZarrStorage
    from zarrl.engine.config import EnvConfig, ModelConfig
    from zarrl.engine.models import build_actor, observation_dim
    from zarrl.engine.registry import make_environment

    torch.manual_seed(args["seed"])
    env = make_environment(EnvConfig(name=ENV), seed=0)
    actor = build_actor(env, ModelConfig())
    critic = nn.Sequential(nn.Linear(observation_dim(env), 64), nn.Tanh(), nn.Linear(64, 1))
    params = [*actor.parameters(), *critic.parameters()]
    optim = torch.optim.Adam(params, lr=3e-4)
    ckpt, updates = Path(args["checkpoint"]), 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        actor.load_state_dict(state["actor"])
        critic.load_state_dict(state["critic"])
        optim.load_state_dict(state["optim"])
        updates = int(state["updates"])
    _report(resumed=updates)
    storage = None
    while storage is None:
        try:
            storage = ZarrStorage.open(args["root"], "r", storage_options=args["options"])
        except Exception:  # not created yet
            time.sleep(0.5)
    gamma, batch_size, next_save, loss = 0.99, 256, time.monotonic() + 2, float("nan")
    while True:
        storage.refresh()
        n = len(storage)
        if n < 64:  # batches of 256 rows drawn with replacement from at least 64
            time.sleep(0.2)
            continue
        for _ in range(8):
            batch = storage.get(torch.randint(n, (batch_size,)))
            dist = actor.get_dist(batch.select("observation").clone())
            logp = dist.log_prob(batch["action"])
            value = critic(batch["observation"]).squeeze(-1)
            with torch.no_grad():
                reward = batch["next", "reward"].reshape(-1)
                alive = 1.0 - batch["next", "terminated"].reshape(-1).float()
                target = reward + gamma * alive * critic(batch["next", "observation"]).squeeze(-1)
                advantage = target - value
                rho = (logp - batch["action_log_prob"].reshape(-1)).exp().clamp(max=1.0)
            total = (
                -(rho * advantage * logp).mean()
                + 0.5 * (target - value).pow(2).mean()
                - 0.01 * dist.entropy().mean()
            )
            optim.zero_grad()
            total.backward()
            optim.step()
            updates += 1
            loss = float(total)
        if time.monotonic() >= next_save:
            state = {
                "actor": actor.state_dict(),
                "critic": critic.state_dict(),
                "optim": optim.state_dict(),
                "updates": updates,
            }
            tmp = ckpt.with_suffix(".tmp")
            torch.save(state, tmp)
            os.replace(tmp, ckpt)
            _report(updates=updates, rows=n, loss=loss)
            next_save = time.monotonic() + 2


# ------------------------------------------------------------------------------------ driver
class Child:
    """A child process of the soak (``collect`` or ``learner``), restarted on demand."""

    def __init__(self, role: str, args: dict) -> None:
        self.role, self.args, self.proc, self.starts = role, args, None, 0
        self.reported, self.last, self.pids = False, {}, {}

    def start(self, **extra) -> None:
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (stderr; lives as the child)
        args = json.dumps({**self.args, **extra})
        self.proc = subprocess.Popen(
            [sys.executable, __file__, self.role, args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
        )
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.lines = JsonLines(self.proc.stdout, prefix="{")
        self.starts += 1
        self.reported, self.pids = False, {}

    def reports(self) -> list[dict]:
        out = self.lines.read()
        for report in out:
            self.last.update(report)
            self.pids.update(report.get("pids", {}))
        self.reported = self.reported or bool(out)
        return out

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.reports()


def soak(
    root: str,
    workers: int,
    minutes: float,
    options: dict | None,
    seed: int,
    kill_every: tuple[float, float] = (3.0, 20.0),
    rss_bound_mib: float = 3072.0,
) -> dict:
    """Runs the Ray soak for ``minutes`` and checks the store; returns its figures (the
    digest logs and the learner's checkpoint live in a temporary folder, removed at the end)."""
    work = Path(tempfile.mkdtemp(prefix="zarrl-soak-ray-"))
    try:
        return _soak(work, root, workers, minutes, options, seed, kill_every, rss_bound_mib)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _soak(
    work: Path,
    root: str,
    workers: int,
    minutes: float,
    options: dict | None,
    seed: int,
    kill_every: tuple[float, float],
    rss_bound_mib: float,
) -> dict:
    import ray
    import torch
    from zarrl.buffers import ZarrStorage

    rng = random.Random(seed)
    (work / "digests").mkdir()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    os.environ["RAY_ADDRESS"] = address  # the children join this cluster
    common = {"root": root, "options": options, "checkpoint": str(work / "learner.pt")}
    collect = Child("collect", {**common, "digests": str(work / "digests"), "workers": workers})
    learner = Child("learner", common)
    kinds = {"collect": collect, "learner": learner}
    incarnation = 0
    collect.start(create=True, incarnation=incarnation, seed=rng.randrange(2**31))
    learner.start(seed=rng.randrange(2**31))
    kills = {"collect": 0, "buffer": 0, "worker": 0, "learner": 0}
    rss: dict[str, list[int]] = {k: [] for k in kills}
    lives: dict[int, list[tuple[float, int]]] = {}  # pid -> [(time, rss)]
    committed, updates, resumes, lost_workers = 0, 0, [], 0
    expect_exit = False  # the collect process may exit 3 after its buffer actor was killed
    t0 = time.monotonic()
    end, next_kill = t0 + 60 * minutes, t0 + rng.uniform(*kill_every)
    wanted: str | None = None  # the kind of process the next kill is for
    wanted_until = 0.0
    try:
        while time.monotonic() < end:
            time.sleep(0.25)
            for report in collect.reports():
                committed = max(committed, report.get("committed", 0))
                lost_workers += "worker_lost" in report
            for report in learner.reports():
                if "resumed" in report:
                    if report["resumed"] < updates:
                        raise AssertionError(f"learner resumed at {report['resumed']} < {updates}")
                    resumes.append(report["resumed"])
                updates = max(updates, report.get("updates", 0))
            if collect.proc.poll() is not None:
                if not (expect_exit and collect.proc.returncode == 3):
                    raise RuntimeError(
                        f"collect died ({collect.proc.returncode}): {collect.stderr()}"
                    )
                incarnation += 1
                collect.start(create=False, incarnation=incarnation, seed=rng.randrange(2**31))
                expect_exit = False
            if learner.proc.poll() is not None:
                raise RuntimeError(f"learner died ({learner.proc.returncode}): {learner.stderr()}")
            now = time.monotonic()
            procs = {k: [c.proc.pid] for k, c in (("collect", collect), ("learner", learner))}
            procs = {k: v for k, v in procs.items() if kinds[k].reported}  # past start-up
            procs.update(collect.pids)
            for kind, pids in procs.items():
                for pid in pids:
                    value = rss_of(pid)
                    if value is not None:
                        rss[kind].append(value)
                        lives.setdefault(pid, []).append((now, value))
            if now < next_kill or not committed:  # kills begin after the first commit
                continue
            targets = [("learner", learner.proc.pid)] if learner.reported else []
            if collect.reported and collect.pids and not expect_exit:
                targets += [("collect", collect.proc.pid)]
                targets += [(k, p) for k in ("buffer", "worker") for p in collect.pids.get(k, [])]
            # the kind is drawn first, then the slot waits until a process of that kind is up
            # (the learner restarts in seconds, Ray actors in tens of seconds: drawing among
            # the processes up would kill mostly the learner); a kind not up within the longest
            # kill interval is drawn again
            if wanted is None or now > wanted_until:
                wanted, wanted_until = rng.choice(sorted(kills)), now + kill_every[1]
            targets = [(k, p) for k, p in targets if k == wanted]
            if not targets:
                continue
            kind, pid = rng.choice(targets)
            wanted = None
            kills[kind] += 1
            if kind == "learner":
                learner.kill()
                learner.start(seed=rng.randrange(2**31))
            elif kind == "collect":
                collect.kill()
                incarnation += 1
                collect.start(create=False, incarnation=incarnation, seed=rng.randrange(2**31))
            else:
                os.kill(pid, signal.SIGKILL)
                collect.pids = {}  # new pids come with the next report
                expect_exit = kind == "buffer"
            next_kill = time.monotonic() + rng.uniform(*kill_every)
    finally:
        for child in (collect, learner):
            if child.proc is not None and child.proc.poll() is None:
                child.kill()
        actor_pids = [p for pids in collect.pids.values() for p in pids]
        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
    for report in collect.reports():
        committed = max(committed, report.get("committed", 0))
    time.sleep(1.0)
    left = [p for p in actor_pids if rss_of(p) is not None]
    assert not left, f"processes left running after ray.shutdown: {left}"

    # every committed row present and bit-exact
    if not committed:
        raise AssertionError(f"no row was committed in {minutes} minutes: {collect.stderr()}")
    keys = [
        tuple(k) if len(k) > 1 else k[0]
        for k in json.loads((work / "digests" / "keys.json").read_text())
    ]
    with ZarrStorage.open(root, "r", storage_options=options) as storage:
        stored = len(storage)
        expected = np.zeros(stored, dtype=np.uint64)
        known = np.zeros(stored, dtype=bool)
        for name in sorted(glob.glob(str(work / "digests" / "*.bin"))):
            raw = Path(name).read_bytes()
            at = 0
            while at + 16 <= len(raw):
                start, n = np.frombuffer(raw, "<i8", 2, at)
                body = raw[at + 16 : at + 16 + 8 * int(n)]
                if len(body) < 8 * n:
                    break  # torn by a kill before the rows were written
                hi = min(int(start + n), stored)
                if hi > start:
                    expected[start:hi] = np.frombuffer(body, "<u8")[: hi - start]
                    known[start:hi] = True
                at += 16 + 8 * int(n)
        exact = 0
        for lo in range(0, stored, 65536):
            idx = torch.arange(lo, min(lo + 65536, stored))
            got = row_digests(storage.get(idx), keys)
            exact += int(((got == expected[lo : lo + len(idx)]) & known[lo : lo + len(idx)]).sum())
    assert stored >= committed > 0, f"{stored} rows stored, {committed} reported committed"
    assert exact == stored, f"{stored - exact} of {stored} stored rows differ from their digest"
    growth = [
        life[-1][1] / next(r for t, r in life if t >= life[0][0] + 60)
        for life in lives.values()
        if life[-1][0] - life[0][0] >= 180
    ]
    peak = {k: max(v) / 2**20 for k, v in rss.items() if v}
    assert all(p < rss_bound_mib for p in peak.values()), f"RSS over {rss_bound_mib} MiB: {peak}"
    assert all(g < 1.5 for g in growth), f"RSS grew by {max(growth):.2f}x in one process"
    return {
        "mode": "ray",
        "minutes": minutes,
        "workers": workers,
        "kills": kills,
        "collect restarts": incarnation,
        "worker restarts (collector rebuilt)": lost_workers,
        "rows stored": stored,
        "rows reported committed": committed,
        "rows bit-exact": exact,
        "learner updates": updates,
        "learner resumes (from update)": resumes,
        "rss MiB min/max": {k: [min(v) / 2**20, max(v) / 2**20] for k, v in rss.items() if v},
        "rss growth over long lives (end / 1 min)": max(growth) if growth else None,
        "long lives (>= 3 min)": len(growth),
    }


def main() -> None:
    role, args = sys.argv[1], json.loads(sys.argv[2])
    if role == "collect":
        collect_main(args)
    else:
        learner_main(args)


if __name__ == "__main__":
    main()
