"""Import-schema records (one completion each) <-> sequence batches, and JSON Lines files.

A record: ``prompt_ids`` (list of int), ``completion_ids`` (list of int), ``logprobs`` (one float
per completion token), optional ``ref_logprobs``, ``reward`` or ``log_reward``, ``prompt``,
``group_id``, ``policy_version`` (``docs/generations.md``). A batch: see
:mod:`zarrl.algorithms.sequence_scoring`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

__all__ = [
    "GenerationsFileError",
    "batch_to_records",
    "read_jsonl",
    "records_to_batch",
    "write_jsonl",
]


class GenerationsFileError(ValueError):
    """A records file or record cannot be used; the message names the file, line and field."""


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON Lines file (blank lines skipped); a line that is not a JSON object
    raises :class:`GenerationsFileError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise GenerationsFileError(f"{str(path)!r} does not exist")
    records = []
    with path.open() as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise GenerationsFileError(f"{path}:{number}: not valid JSON ({err})") from None
            if not isinstance(record, dict):
                raise GenerationsFileError(f"{path}:{number}: expected a JSON object per line")
            records.append(record)
    return records


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write ``records`` one JSON object a line (atomically: a temporary file renamed); returns
    the count."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with tmp.open("w") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
            n += 1
    tmp.replace(path)
    return n


def _int_list(record: dict, field: str, where: str) -> list[int]:
    value = record.get(field)
    if not isinstance(value, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    ):
        raise GenerationsFileError(f"{where}: field {field!r} must be a list of int")
    return value


def records_to_batch(
    records: Sequence[dict[str, Any]],
    *,
    vocab_size: int,
    eos_id: int,
    prompt_index: dict[tuple[int, ...], int] | None = None,
    require_reward: bool = False,
    source: str = "records",
) -> TensorDict:
    """A sequence batch ``[len(records)]`` (prompts left-padded, completions right-padded).

    ``prompt`` is the index of each record's ``prompt_ids`` in ``prompt_index`` (a prompt not in
    it gets the next free index), ``terminated`` whether the completion ends with ``eos_id``. The
    behaviour log-probs are the records' ``logprobs`` when every record has them (else 0), the
    reference ones their ``ref_logprobs`` when every record has them; ``log_reward`` is
    ``log_reward`` or ``reward`` (stored as given: the target is prior·exp(β·reward)), NaN when
    absent (an error with ``require_reward``). Every field is checked; an error names
    ``source``, the record number and the field.
    """
    if not records:
        raise GenerationsFileError(f"{source}: no records")
    index = dict(prompt_index or {})
    prompts, completions, prompt_ids = [], [], []
    behaviour, ref, rewards = [], [], []
    for n, record in enumerate(records, 1):
        where = f"{source}: record {n}"
        p = _int_list(record, "prompt_ids", where)
        c = _int_list(record, "completion_ids", where)
        if not c:
            raise GenerationsFileError(f"{where}: field 'completion_ids' is empty")
        for field, ids in (("prompt_ids", p), ("completion_ids", c)):
            bad = [x for x in ids if not 0 <= x < vocab_size]
            if bad:
                raise GenerationsFileError(
                    f"{where}: field {field!r} holds token id {bad[0]} outside the vocabulary "
                    f"[0, {vocab_size})"
                )
        for field, out in (("logprobs", behaviour), ("ref_logprobs", ref)):
            lp = record.get(field)
            if lp is None:
                out.append(None)
                continue
            if not isinstance(lp, list) or len(lp) != len(c):
                raise GenerationsFileError(
                    f"{where}: field {field!r} must be a list of {len(c)} floats (one per "
                    "completion token)"
                )
            if not all(isinstance(x, (int, float)) and math.isfinite(x) and x <= 0 for x in lp):
                raise GenerationsFileError(f"{where}: field {field!r} must hold finite values <= 0")
            out.append([float(x) for x in lp])
        if "log_reward" in record and "reward" in record:
            raise GenerationsFileError(f"{where}: give 'reward' or 'log_reward', not both")
        r = record.get("log_reward", record.get("reward"))
        if r is None:
            if require_reward:
                raise GenerationsFileError(f"{where}: field 'log_reward' (or 'reward') is missing")
            r = math.nan
        elif not isinstance(r, (int, float)) or isinstance(r, bool) or not math.isfinite(r):
            raise GenerationsFileError(f"{where}: field 'log_reward' must be a finite number")
        key = tuple(p)
        if key not in index:
            index[key] = len(index)
        prompts.append(index[key])
        prompt_ids.append(p)
        completions.append(c)
        rewards.append(float(r))
    B = len(records)
    Lp = max(len(p) for p in prompt_ids)
    L = max(len(c) for c in completions)
    ptok = torch.zeros(B, Lp, dtype=torch.long)
    pmask = torch.zeros(B, Lp, dtype=torch.bool)
    rtok = torch.zeros(B, L, dtype=torch.long)
    rmask = torch.zeros(B, L, dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompt_ids, completions)):
        if p:
            ptok[i, Lp - len(p) :] = torch.tensor(p)
            pmask[i, Lp - len(p) :] = True
        rtok[i, : len(c)] = torch.tensor(c)
        rmask[i, : len(c)] = True
    out: dict[Any, Any] = {
        ("tokens", "prompt"): ptok,
        ("masks", "prompt"): pmask,
        ("tokens", "response"): rtok,
        ("masks", "response"): rmask,
        "log_reward": torch.tensor(rewards, dtype=torch.float32),
        "prompt": torch.tensor(prompts, dtype=torch.long),
        "group_id": torch.tensor(
            [int(r.get("group_id", prompts[i])) for i, r in enumerate(records)], dtype=torch.long
        ),
        "terminated": torch.tensor([c[-1] == eos_id for c in completions]),
    }
    for key, rows in ((("log_probs", "behaviour"), behaviour), (("log_probs", "ref"), ref)):
        if all(r is not None for r in rows):
            padded = torch.zeros(B, L)
            for i, r in enumerate(rows):
                padded[i, : len(r)] = torch.tensor(r)
            out[key] = padded
        elif key[1] == "behaviour":
            out[key] = torch.zeros(B, L)
    return TensorDict(out, batch_size=[B])


def batch_to_records(batch: TensorDictBase) -> list[dict[str, Any]]:
    """The import-schema records of a sequence batch (``logprobs`` = its behaviour log-probs,
    ``log_reward`` when it has one that is not NaN)."""
    pt, pm = batch["tokens", "prompt"], batch["masks", "prompt"]
    rt, rm = batch["tokens", "response"], batch["masks", "response"]
    lp = batch["log_probs", "behaviour"]
    reward = batch.get("log_reward", None)
    records = []
    for i in range(batch.batch_size[0]):
        record: dict[str, Any] = {
            "prompt_ids": pt[i][pm[i]].tolist(),
            "completion_ids": rt[i][rm[i]].tolist(),
            "logprobs": lp[i][rm[i]].tolist(),
        }
        if reward is not None and math.isfinite(float(reward[i])):
            record["log_reward"] = float(reward[i])
        records.append(record)
    return records
