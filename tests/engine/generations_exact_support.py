"""The exact check's logs shared by the logged-generations engine tests: a known random
autoregressive prior (vocabulary 5 with end token 4, at most 4 tokens, 2 prompts), its sampled
logs imported into a buffer through ``zarrl import generations``, and every possible completion
written beside them for enumeration."""

from __future__ import annotations

from pathlib import Path

import torch
from zarrl.engine.cli import main
from zarrl.engine.generations_io import write_jsonl
from zarrl.envs.generations.toy import RandomAutoregressivePrior


def exact_prior() -> RandomAutoregressivePrior:
    return RandomAutoregressivePrior(5, 4, 4, 2, seed=0, temperature=0.5)


def import_exact_logs(root: Path, per_prompt: int) -> tuple[Path, Path]:
    """Samples ``per_prompt`` logs of each prompt from ``exact_prior()`` and imports them into
    ``root/buffer.zarr``; returns ``(buffer, file of every completion)``."""
    prior = exact_prior()
    prompts = torch.arange(2).repeat_interleave(per_prompt)
    write_jsonl(root / "logs.jsonl", prior.sample(prompts, torch.Generator().manual_seed(1)))
    write_jsonl(root / "all.jsonl", prior.all_records())
    buffer = root / "buffer.zarr"
    code = main(
        ["import", "generations", str(root / "logs.jsonl"), "--buffer", str(buffer)]
        + ["--vocab-size", "5", "--eos-id", "4", "--max-new-tokens", "4"]
    )
    assert code == 0
    return buffer, root / "all.jsonl"
