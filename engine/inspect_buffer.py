"""``zarrl inspect``: what a Zarr replay buffer holds (rows, episodes, schema, size, returns)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from zarrl.buffers import CorruptChunkError, StoreFormatError
from zarrl.engine.config import BufferConfig
from zarrl.engine.policies import TRAJ_KEY
from zarrl.engine.registry import BufferPathError, open_storage

__all__ = ["describe_buffer", "episode_returns", "format_description", "verify_buffer"]


READ_ROWS = 65_536  # rows read per step while scanning the index columns


def _disk_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def episode_returns(
    reward: torch.Tensor, done: torch.Tensor, traj_ids: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns and lengths ``[E]`` of the complete episodes in a ``[N]`` row sequence.

    An episode is complete when its last stored row is ``done``; rows are grouped by trajectory
    id (``traj_ids``) or, without ids, split after every ``done`` row.
    """
    reward = reward.reshape(-1).to(torch.float64)
    done = done.reshape(-1).to(torch.bool)
    if traj_ids is None:
        traj_ids = torch.cat([done.new_zeros(1, dtype=torch.int64), done[:-1].cumsum(0)])
    traj_ids = traj_ids.reshape(-1)
    ids, inverse = torch.unique(traj_ids, return_inverse=True)
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, reward)
    lengths = torch.zeros(len(ids), dtype=torch.int64).index_add_(
        0, inverse, torch.ones_like(inverse)
    )
    complete = torch.zeros(len(ids), dtype=torch.bool).index_put_(
        (inverse[done],), torch.ones(int(done.sum()), dtype=torch.bool)
    )
    return sums[complete], lengths[complete]


def describe_buffer(path: str | Path) -> dict[str, Any]:
    """Open the store read-only and summarise it (no data is modified); a corrupt or invalid
    store raises ``BufferPathError`` with a one-line reason (``zarrl inspect`` prints it)."""
    try:
        return _describe(Path(path))
    except (StoreFormatError, CorruptChunkError) as err:
        raise BufferPathError(f"{path}: corrupt or invalid zarrl store: {err}") from err


def verify_buffer(path: str | Path) -> tuple[bool, list[str]]:
    """``zarrl verify``: (sound, lines). Each problem of the store is one line naming the file,
    or the array and chunk; a sound store gives one summary line. A missing path raises
    ``BufferPathError``."""
    from zarrl.buffers.verify import check_store

    if not Path(path).exists():
        raise BufferPathError(f"buffer path {str(path)!r} does not exist")
    report = check_store(path)
    if not report.ok:
        return False, [" ".join(str(p).split()) for p in report.problems]
    bound = "chunks bound to their place" if (report.version or 0) >= 3 else "chunks unbound"
    return True, [
        f"{report.where}: OK (format version {report.version}, {bound}): {report.rows} rows in "
        f"{report.chunks} chunk(s) of {report.arrays} arrays checked"
    ]


def _describe(path: Path) -> dict[str, Any]:
    storage = open_storage(path, mode="r", config=BufferConfig(cache=None))
    try:
        n = len(storage)
        info: dict[str, Any] = {
            "path": str(path),
            "rows": n,
            "capacity": None
            if storage.max_size >= 2**31 - 1
            else int(storage.max_size),  # None: growing
            "size on disk (MB)": round(_disk_bytes(path) / 2**20, 3),
        }
        if n == 0:
            info.update({"episodes": 0, "keys": {}})
            return info
        first = storage[0:1]
        info["keys"] = {
            ".".join(k) if isinstance(k, tuple) else k: {
                "dtype": str(v.dtype).replace("torch.", ""),
                "shape": list(v.shape[1:]),
            }
            for k, v in first.items(include_nested=True, leaves_only=True)
        }
        row_bytes = sum(
            v.element_size() * v[0].numel()
            for v in first.values(include_nested=True, leaves_only=True)
        )
        raw = row_bytes * n
        info["raw size (MB)"] = round(raw / 2**20, 3)
        disk = _disk_bytes(path)
        info["compression ratio"] = round(raw / disk, 2) if disk else None
        codec = _codec_description(path)
        if codec:
            info["compression"] = codec
        keys = first.keys(include_nested=True)
        wanted = [k for k in (("next", "reward"), ("next", "done"), TRAJ_KEY) if k in keys]
        if ("next", "reward") in wanted and ("next", "done") in wanted:
            cols: dict[Any, list[torch.Tensor]] = {k: [] for k in wanted}
            for start in range(0, n, READ_ROWS):
                part = storage[start : min(n, start + READ_ROWS)].select(*wanted)
                for k in wanted:
                    cols[k].append(part[k].reshape(-1))
            reward = torch.cat(cols[("next", "reward")])
            done = torch.cat(cols[("next", "done")])
            traj = torch.cat(cols[TRAJ_KEY]) if TRAJ_KEY in cols else None
            returns, lengths = episode_returns(reward, done, traj)
            info["episodes"] = int(returns.numel())
            if returns.numel():
                info["return mean"] = round(float(returns.mean()), 3)
                info["return std"] = round(float(returns.std()), 3) if returns.numel() > 1 else 0.0
                info["return min"] = round(float(returns.min()), 3)
                info["return max"] = round(float(returns.max()), 3)
                info["episode length mean"] = round(float(lengths.double().mean()), 2)
        return info
    finally:
        storage.close()


def _codec_description(path: Path) -> str | None:
    """The codecs of the store's arrays, read from the Zarr metadata (``zarr.json``)."""
    import json

    names: set[str] = set()
    for meta in path.rglob("zarr.json"):
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        for codec in data.get("codecs", []) or []:
            names.add(_codec_name(codec))
            for inner in (codec.get("configuration") or {}).get("codecs", []) or []:
                names.add(_codec_name(inner))
    names.discard("bytes")
    names.discard("")
    return ", ".join(sorted(names)) or None


def _codec_name(codec: dict[str, Any]) -> str:
    name = codec.get("name", "")
    conf = codec.get("configuration") or {}
    if name == "blosc":
        return f"blosc({conf.get('cname', '?')}, clevel={conf.get('clevel', '?')})"
    if name == "zstd":
        return f"zstd(level={conf.get('level', '?')})"
    return name


def format_description(info: dict[str, Any]) -> str:
    """A readable table of :func:`describe_buffer`'s result."""
    from zarrl.engine.reporting import format_table

    keys = info.get("keys", {})
    rows = {k: v for k, v in info.items() if k != "keys"}
    lines = [format_table(rows, title="zarrl buffer")]
    if keys:
        width = max(len(k) for k in keys)
        lines.append("keys:")
        lines += [
            f"  {k.ljust(width)}  {v['dtype']:<8} {tuple(v['shape'])}"
            for k, v in sorted(keys.items())
        ]
    return "\n".join(lines)
