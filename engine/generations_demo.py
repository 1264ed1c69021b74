"""``zarrl demo generations``: a character-level model trained in zarrl, its own samples logged,
imported and fine-tuned offline toward a reward on the strings.

The text is built here by a small grammar (no download, no licence question: it is this file's,
Apache-2.0 as the rest of zarrl): "words" of one to four consonant-vowel syllables over the
consonants ``bdklmnrst`` and the vowels ``aeiou``, drawn with skewed, seeded syllable
frequencies. The reward on a string is its number of ``a`` (``log_reward``: the target is
prior·exp(β·count('a'))).

Rounds, all through the public commands' functions:

1. the grammar's words -> JSONL -> ``zarrl import generations`` -> ``zarrl train`` with
   ``sequence_mle`` (maximum likelihood): the prior, a small causal transformer;
2. ``zarrl sample`` from the prior (``logprobs`` = the prior's, also stored as ``ref_logprobs``),
   the reward added -> JSONL -> import -> ``zarrl train generations/rtb`` started from the
   prior (``env.options.init_run``): the fine-tuned policy;
3. samples of both, scored by the prior: mean reward, KL(policy ‖ prior) (Monte Carlo, nats),
   distinct completions; a figure of the reward distributions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["CHARS", "grammar_log_probs", "grammar_words", "main_demo", "run_demo"]

CONSONANTS, VOWELS = "bdklmnrst", "aeiou"
CHARS = "^" + CONSONANTS + VOWELS + "$"  # ^: the prompt (start), $: the end token
START, EOS = 0, len(CHARS) - 1
MAX_NEW_TOKENS = 9  # 4 syllables + the end token


def grammar_words(n: int, seed: int = 0) -> list[str]:
    """``n`` words of the grammar (module docstring), drawn with seeded syllable frequencies."""
    g = torch.Generator().manual_seed(seed)
    c_weights, v_weights = torch.tensor(C_WEIGHTS), torch.tensor(V_WEIGHTS)
    syllables = torch.randint(1, 5, (n,), generator=g)
    cons = torch.multinomial(c_weights, n * 4, replacement=True, generator=g).reshape(n, 4)
    vows = torch.multinomial(v_weights, n * 4, replacement=True, generator=g).reshape(n, 4)
    return [
        "".join(CONSONANTS[int(c)] + VOWELS[int(v)] for c, v in zip(cons[i, :k], vows[i, :k]))
        for i, k in enumerate(syllables.tolist())
    ]


C_WEIGHTS = [3.0 - 2.5 * i / (len(CONSONANTS) - 1) for i in range(len(CONSONANTS))]
V_WEIGHTS = [0.6, 2.0, 1.5, 1.2, 0.8]  # 'a' is rare


def grammar_log_probs(word: str) -> list[float]:
    """The grammar's own log-probability of each character of ``word`` and of the end token
    (syllable count uniform over 1..4: after j syllables the word stops with 1/(5 − j))."""
    import math

    c_total, v_total = sum(C_WEIGHTS), sum(V_WEIGHTS)
    out = []
    for j in range(len(word) // 2):
        stop = 0.0 if j == 0 else 1.0 / (5 - j)
        out.append(math.log((1 - stop) * C_WEIGHTS[CONSONANTS.index(word[2 * j])] / c_total))
        out.append(math.log(V_WEIGHTS[VOWELS.index(word[2 * j + 1])] / v_total))
    j = len(word) // 2
    out.append(0.0 if j == 4 else math.log(1.0 / (5 - j)))
    return out


def _encode(word: str) -> list[int]:
    return [CHARS.index(ch) for ch in word] + [EOS]


def _decode(ids: list[int]) -> str:
    return "".join(CHARS[i] for i in ids if i != EOS)


def _reward(ids: list[int]) -> float:
    return float(_decode(ids).count("a"))


def _stats(records: list[dict[str, Any]], prior_scored: list[dict[str, Any]]) -> dict[str, float]:
    rewards = [_reward(r["completion_ids"]) for r in records]
    kl = [
        sum(r["logprobs"]) - s["policy_logprob"] for r, s in zip(records, prior_scored)
    ]  # log π − log π_prior of π's own samples
    return {
        "mean reward (count of 'a')": round(sum(rewards) / len(rewards), 3),
        "KL to the prior (nats)": round(sum(kl) / len(kl), 3),
        "distinct completions": len({tuple(r["completion_ids"]) for r in records}),
    }


def run_demo(
    folder: str | Path,
    *,
    words: int = 4000,
    samples: int = 4000,
    pretrain_updates: int = 600,
    finetune_updates: int = 600,
    beta: float = 1.0,
    figure: str | Path | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Run the demo in ``folder`` (created; must not hold a demo already); returns the
    before/after table and writes ``table.md`` and the figure (``figure`` or
    ``folder/generations_demo.png``)."""
    from zarrl.buffers.generations import import_generations
    from zarrl.engine.config import load_config
    from zarrl.engine.generations_commands import sample_run, score_records
    from zarrl.engine.generations_io import write_jsonl
    from zarrl.engine.reporting import format_table
    from zarrl.engine.tasks.generations import load_run_policy
    from zarrl.engine.trainer import Trainer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=False)
    quiet = [] if progress else ["log.progress=false"]

    def train(config: str, buffer: Path, name: str, *overrides: str) -> Path:
        cfg = load_config(
            config,
            [f"run.dir={folder / 'runs'}", f"run.name={name}", *quiet, *overrides]
            + [f"buffer.path={buffer}"],
        )
        trainer = Trainer(cfg)
        try:
            trainer.run()
        finally:
            trainer.close()
        return folder / "runs" / name

    def say(text: str) -> None:
        if progress:
            print(f"zarrl demo generations: {text}", flush=True)

    say(f"1/3 {words} words of the grammar -> maximum likelihood (the prior)")
    text = [
        {
            "prompt_ids": [START],
            "completion_ids": _encode(w),
            "logprobs": grammar_log_probs(w),
            "log_reward": _reward(_encode(w)),
        }
        for w in grammar_words(words)
    ]
    write_jsonl(folder / "words.jsonl", text)
    vocab = {"vocab_size": len(CHARS), "eos_id": EOS, "max_new_tokens": MAX_NEW_TOKENS}
    import_generations([folder / "words.jsonl"], folder / "words.zarr", **vocab)
    prior_run = train(
        "generations/mle", folder / "words.zarr", "prior", f"train.total_updates={pretrain_updates}"
    )

    say(f"2/3 {samples} samples of the prior, logged with log-probs and rewards -> offline RTB")
    before = sample_run(prior_run, samples, seed=1)
    for r in before:
        r["ref_logprobs"] = list(r["logprobs"])
        r["log_reward"] = _reward(r["completion_ids"])
    write_jsonl(folder / "prior_samples.jsonl", before)
    import_generations([folder / "prior_samples.jsonl"], folder / "logs.zarr", **vocab)
    tuned_run = train(
        "generations/rtb",
        folder / "logs.zarr",
        "tuned",
        f"env.options.init_run={prior_run}",
        f"loss.beta={beta}",
        f"train.total_updates={finetune_updates}",
    )

    say("3/3 before / after")
    after = sample_run(tuned_run, samples, seed=2)
    write_jsonl(folder / "tuned_samples.jsonl", after)
    prior, facts = load_run_policy(prior_run)
    prior.eval()
    table = {
        "prior (before)": _stats(before, score_records(prior, before, facts, "prior samples")),
        "RTB fine-tuned (after)": _stats(after, score_records(prior, after, facts, "samples")),
    }
    rewards = torch.tensor([r["log_reward"] for r in before], dtype=torch.float64)
    weights = (beta * rewards).softmax(0)  # the prior's samples reweighted toward the target
    table["target prior·exp(β·reward) (reweighted prior samples)"] = {
        "mean reward (count of 'a')": round(float((weights * rewards).sum()), 3),
        "KL to the prior (nats)": round(
            float(beta * (weights * rewards).sum() - torch.logsumexp(beta * rewards, 0))
            + float(torch.log(torch.tensor(float(len(before))))),
            3,
        ),
        "distinct completions": "",
    }
    lines = ["| | " + " | ".join(table["prior (before)"]) + " |", "|---|---|---|---|"]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row.values()) + " |")
    (folder / "table.md").write_text("\n".join(lines) + "\n")
    _plot(before, after, Path(figure) if figure else folder / "generations_demo.png", beta)
    if progress:
        for name, row in table.items():
            print(format_table(row, title=name))
        print("examples after: " + ", ".join(_decode(r["completion_ids"]) for r in after[:12]))
    return table


def _plot(before: list[dict], after: list[dict], path: Path, beta: float) -> None:
    """Reward histograms of the prior's and the fine-tuned policy's samples, with the target's
    expected histogram (the prior's reweighted by exp(β·reward))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = 5
    counts_b = torch.bincount(
        torch.tensor([int(_reward(r["completion_ids"])) for r in before]), minlength=top
    )[:top].double()
    counts_a = torch.bincount(
        torch.tensor([int(_reward(r["completion_ids"])) for r in after]), minlength=top
    )[:top].double()
    ks = torch.arange(top, dtype=torch.float64)
    target = counts_b * torch.exp(beta * ks)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.28
    ax.bar(ks - width, counts_b / counts_b.sum(), width, label="prior (before)")
    ax.bar(ks, counts_a / counts_a.sum(), width, label="RTB fine-tuned (after)")
    ax.bar(ks + width, target / target.sum(), width, label="target prior·exp(β·r)", alpha=0.6)
    ax.set_xlabel("reward: number of 'a' in the word")
    ax.set_ylabel("share of samples")
    ax.set_title("zarrl demo generations: offline RTB from the prior's own logs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main_demo(runs: str | Path, options: list[str]) -> int:
    """``zarrl demo generations [key=value ...]`` (keys: the keyword arguments of
    :func:`run_demo`) in a new folder ``runs/generations_demo[-N]``."""
    from zarrl.engine.config import ConfigError

    kwargs: dict[str, Any] = {}
    allowed = {"words", "samples", "pretrain_updates", "finetune_updates", "beta", "figure"}
    for option in options:
        key, _, value = option.partition("=")
        if key not in allowed or not value:
            raise ConfigError(
                f"demo generations: got {option!r}, expected key=value with key one of "
                f"{', '.join(sorted(allowed))}"
            )
        try:
            kwargs[key] = (
                value if key == "figure" else (float(value) if key == "beta" else int(value))
            )
        except ValueError:
            raise ConfigError(
                f"demo generations: {key}: got {value!r}, expected a number"
            ) from None
    base, n = Path(runs) / "generations_demo", 1
    folder = base
    while folder.exists():  # never overwrite an earlier demo
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    print(f"zarrl demo generations: folder {folder}")
    run_demo(folder, **kwargs)
    print(f"table: {folder / 'table.md'}")
    return 0
