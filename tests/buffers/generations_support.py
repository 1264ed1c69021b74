"""Logged generations for the tests: random records in the import schema and writers for
each supported format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VOCAB, EOS, MAX_NEW = 13, 0, 9


def make_records(
    n: int, *, seed: int = 0, prompts: int = 4, ref: bool = True, min_len: int = 1
) -> list[dict]:
    """``n`` valid records over ``prompts`` distinct prompts: long-tailed completion lengths
    in ``[min_len, MAX_NEW]``, ended by ``EOS`` unless they hit ``MAX_NEW``; rewards on half of
    them, log-rewards on the rest, group ids on a third, policy versions on a quarter."""
    rng = np.random.default_rng(seed)
    table = [rng.integers(1, VOCAB, size=rng.integers(1, 6)).tolist() for _ in range(prompts)]
    out = []
    for i in range(n):
        length = int(min(MAX_NEW, max(min_len, rng.geometric(0.3))))
        tokens = rng.integers(1, VOCAB, size=length).tolist()
        if length < MAX_NEW or rng.random() < 0.5:
            tokens[-1] = EOS
        rec = {
            "prompt_ids": table[i % prompts],
            "completion_ids": tokens,
            "logprobs": (-rng.exponential(1.0, size=length)).tolist(),
        }
        if ref:
            rec["ref_logprobs"] = (-rng.exponential(1.0, size=length)).tolist()
        if i % 2:
            rec["reward"] = float(rng.normal())
        else:
            rec["log_reward"] = float(rng.normal())
        if i % 3 == 0:
            rec["group_id"] = 100 + i % 5
        if i % 4 == 0:
            rec["policy_version"] = i % 7
        out.append(rec)
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = list(dict.fromkeys(k for r in records for k in r))  # every field, null where absent
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in records]), path)
    return path


def write_datasets(path: Path, records: list[dict]) -> Path:
    import datasets

    keys = list(dict.fromkeys(k for r in records for k in r))
    datasets.Dataset.from_list([{k: r.get(k) for k in keys} for r in records]).save_to_disk(
        str(path)
    )
    return path


def expected(records: list[dict]) -> dict:
    """What the buffer must hold per completion, in import order."""
    prompts: dict[tuple, int] = {}
    index = [prompts.setdefault(tuple(r["prompt_ids"]), len(prompts)) for r in records]
    return {
        "prompt_index": index,
        "prompts": list(prompts),
        "log_reward": [r.get("reward", r.get("log_reward")) for r in records],
        "group_id": [r.get("group_id", index[i]) for i, r in enumerate(records)],
        "policy_version": [r.get("policy_version", -1) for r in records],
        "terminated": [r["completion_ids"][-1] == EOS for r in records],
    }
