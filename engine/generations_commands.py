"""``zarrl sample`` and ``zarrl score``: completions from, and log-probs under, the policy of a
``generations`` run (import-schema JSON Lines in and out, so one round's samples import as the
logs of the next)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_sample_score_parsers", "sample_run", "score_records", "score_run"]

CHUNK = 1024  # completions generated or scored per batched call


def _prompts_of_run(run) -> list[list[int]]:
    """The prompt table of the buffer the run (``tasks.generations.RunPolicy``) trained on (a
    folder, or a store URL reopened with the run's ``buffer.storage_options``)."""
    import torch
    from zarrl.engine.generations_data import open_generations_buffer

    options = run.config.buffer.storage_options
    buffer = open_generations_buffer(run.extra["buffer_path"], options)
    try:
        tokens, mask = buffer.prompt_tokens(torch.arange(buffer.num_prompts))
    finally:
        buffer.close()
    return [t[m].tolist() for t, m in zip(tokens, mask)]


def sample_run(
    run_dir: str | Path,
    n: int,
    *,
    prompt_ids: list[int] | None = None,
    seed: int = 0,
    temperature: float = 1.0,
) -> list[dict[str, Any]]:
    """``n`` completions of ``prompt_ids`` (or of each prompt of the run's buffer) from the run's
    final policy, as import records with ``logprobs`` = the policy's."""
    import torch
    from zarrl.engine.generations_io import batch_to_records
    from zarrl.engine.tasks.generations import load_run

    if n <= 0:
        raise ValueError(f"--n: got {n}, expected > 0")
    run = load_run(run_dir)  # the checkpoint is read once, for the policy and the prompts
    policy, facts = run.policy, run.facts
    policy.eval()
    prompts = [prompt_ids] if prompt_ids is not None else _prompts_of_run(run)
    for ids in prompts:
        bad = [t for t in ids if not 0 <= t < facts["vocab_size"]]
        if bad:
            raise ValueError(
                f"--prompt-ids: token id {bad[0]} outside the vocabulary [0, {facts['vocab_size']})"
            )
    generator = torch.Generator().manual_seed(seed)
    rows = [(p, ids) for p, ids in enumerate(prompts) for _ in range(n)]
    records: list[dict[str, Any]] = []
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        Lp = max(len(ids) for _, ids in chunk)
        tokens = torch.zeros(len(chunk), Lp, dtype=torch.long)
        mask = torch.zeros(len(chunk), Lp, dtype=torch.bool)
        for i, (_, ids) in enumerate(chunk):
            if ids:
                tokens[i, Lp - len(ids) :] = torch.tensor(ids)
                mask[i, Lp - len(ids) :] = True
        batch = policy.generate(
            tokens,
            mask,
            facts["max_new_tokens"],
            facts["eos_id"],
            generator=generator,
            temperature=temperature,
        )
        for (p, _), record in zip(chunk, batch_to_records(batch)):
            record["group_id"] = p
            records.append(record)
    return records


def score_records(policy, records: list[dict[str, Any]], facts: dict[str, int], source: str):
    """``records`` each with ``policy_logprobs`` (per completion token) and ``policy_logprob``
    (their sum) under ``policy``; the input fields are kept."""
    import torch
    from zarrl.engine.generations_io import records_to_batch

    with torch.no_grad():
        return _score(policy, records, facts, source, records_to_batch)


def _score(policy, records, facts, source, records_to_batch) -> list[dict[str, Any]]:
    out = []
    for start in range(0, len(records), CHUNK):
        chunk = records[start : start + CHUNK]
        batch = records_to_batch(
            chunk,
            vocab_size=facts["vocab_size"],
            eos_id=facts["eos_id"],
            source=f"{source} (from record {start + 1})",
        )
        log_probs = policy.token_log_probs(batch).double()
        mask = batch["masks", "response"]
        for record, lp, m in zip(chunk, log_probs, mask):
            per_token = lp[m].tolist()
            out.append({**record, "policy_logprobs": per_token, "policy_logprob": sum(per_token)})
    return out


def score_run(run_dir: str | Path, path: str | Path) -> list[dict[str, Any]]:
    """The records of the JSON Lines file ``path`` scored by the run's final policy."""
    from zarrl.engine.generations_io import read_jsonl
    from zarrl.engine.tasks.generations import load_run_policy

    policy, facts = load_run_policy(run_dir)
    policy.eval()
    return score_records(policy, read_jsonl(path), facts, str(path))


def add_sample_score_parsers(sub) -> None:
    """The ``sample`` and ``score`` subcommands (handlers set as ``handler``)."""
    p = sub.add_parser("sample", help="completions from a generations run's policy, as JSONL")
    p.add_argument("run_dir", help="run folder of a `zarrl train` on the generations task")
    p.add_argument("--n", type=int, required=True, help="completions per prompt")
    p.add_argument(
        "--prompt-ids", help="comma-separated prompt token ids (default: every prompt of the run)"
    )
    p.add_argument("--out", required=True, help="JSON Lines file to write (import schema)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.set_defaults(handler=main_sample)
    p = sub.add_parser(
        "score", help="per-token log-probs of JSONL completions under a run's policy"
    )
    p.add_argument("run_dir")
    p.add_argument("file", help="JSON Lines records (import schema)")
    p.add_argument("--out", required=True, help="JSON Lines file to write")
    p.set_defaults(handler=main_score)


def _check_run(run_dir: str) -> None:
    from zarrl.engine.checkpoint import CheckpointError

    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run folder {run_dir!r} does not exist")


def main_sample(args: argparse.Namespace) -> int:
    from zarrl.engine.config import ConfigError

    _check_run(args.run_dir)
    prompt = None
    if args.prompt_ids is not None:
        try:
            prompt = [int(x) for x in args.prompt_ids.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(
                f"--prompt-ids: got {args.prompt_ids!r}, expected comma-separated integers"
            ) from None
    if args.temperature <= 0:
        raise ConfigError(f"--temperature: got {args.temperature}, expected > 0")
    try:
        records = sample_run(
            args.run_dir, args.n, prompt_ids=prompt, seed=args.seed, temperature=args.temperature
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    from zarrl.engine.generations_io import write_jsonl

    count = write_jsonl(args.out, records)
    print(f"zarrl sample: {count} completions written to {args.out}")
    return 0


def main_score(args: argparse.Namespace) -> int:
    from zarrl.engine.config import ConfigError

    _check_run(args.run_dir)
    try:
        records = score_run(args.run_dir, args.file)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    from zarrl.engine.generations_io import write_jsonl

    count = write_jsonl(args.out, records)
    print(f"zarrl score: {count} records scored into {args.out}")
    return 0
