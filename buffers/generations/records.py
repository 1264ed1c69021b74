"""The import record of logged generations, held column-wise, and its vectorized validation.

One record per completion (names fixed by issue 16): ``prompt_ids`` (list of int),
``completion_ids`` (list of int), ``logprobs`` (behaviour log-probs, one per completion token),
optional ``ref_logprobs`` (same length), exactly one of ``reward`` / ``log_reward`` (float),
optional ``prompt`` (text), ``group_id`` and ``policy_version`` (int).

Readers (``readers.py``) turn a block of records into ``Columns``: flat token arrays plus
per-record lengths, so every check below is a handful of numpy operations over the block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

FIELDS = (
    "prompt_ids",
    "completion_ids",
    "logprobs",
    "ref_logprobs",
    "reward",
    "log_reward",
    "prompt",
    "group_id",
    "policy_version",
)
"""The schema's field names."""


class GenerationsImportError(ValueError):
    """An import refused: bad rows (with ``on_error="fail"``), an unreadable file, a duplicate
    import or arguments that disagree with the buffer. Nothing was committed."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One bad record: ``file``, ``where`` (``"line 7"`` for JSONL, 1-based; ``"row 6"`` for
    Parquet and ``datasets``, 0-based), the schema ``field`` (or ``None``: the whole line)."""

    file: str
    where: str
    field: str | None
    message: str

    def __str__(self) -> str:
        field = f" field {self.field!r}:" if self.field else ""
        return f"{self.file}, {self.where}:{field} {self.message}"


@dataclasses.dataclass
class Columns:
    """A block of ``n`` records, column-wise. Token fields are flat arrays with per-record
    lengths (``*_len`` int64 ``[n]``); ``ref_len`` is -1 where a record has no ``ref_logprobs``.
    ``reward`` / ``log_reward`` are float64 ``[n]``, NaN where the record has no such field
    (``has_reward`` / ``has_log_reward`` say which records carry one). ``group_id`` /
    ``policy_version`` are int64 ``[n]`` with ``has_group`` marking given group ids (absent
    policy versions are -1). ``location`` int64 ``[n]``: line (1-based) or row (0-based)."""

    prompt_len: np.ndarray
    prompt_tok: np.ndarray
    comp_len: np.ndarray
    comp_tok: np.ndarray
    logp_len: np.ndarray
    logp: np.ndarray
    ref_len: np.ndarray
    ref: np.ndarray
    reward: np.ndarray
    has_reward: np.ndarray
    log_reward: np.ndarray
    has_log_reward: np.ndarray
    group_id: np.ndarray
    has_group: np.ndarray
    policy_version: np.ndarray
    location: np.ndarray
    prompt_text: list | None = None
    pre_problems: list = dataclasses.field(default_factory=list)
    """Problems found while reading (malformed lines): their records are not in the block."""

    @property
    def n(self) -> int:
        return len(self.comp_len)

    def take(self, keep: np.ndarray) -> Columns:
        """The records where ``keep`` (bool ``[n]``) is true."""
        out = {}
        for name in ("prompt", "comp", "logp"):
            lens = getattr(self, f"{name}_len")
            out[f"{name}_len"] = lens[keep]
            toks = self._flat(name)
            out[f"{name}_tok" if name != "logp" else "logp"] = toks[np.repeat(keep, lens)]
        ref_lens = np.maximum(self.ref_len, 0)
        out["ref_len"] = self.ref_len[keep]
        out["ref"] = self.ref[np.repeat(keep, ref_lens)]
        for name in (
            "reward",
            "has_reward",
            "log_reward",
            "has_log_reward",
            "group_id",
            "has_group",
            "policy_version",
            "location",
        ):
            out[name] = getattr(self, name)[keep]
        text = None
        if self.prompt_text is not None:
            text = [t for t, k in zip(self.prompt_text, keep.tolist()) if k]
        return Columns(**out, prompt_text=text)

    def _flat(self, name: str) -> np.ndarray:
        return {"prompt": self.prompt_tok, "comp": self.comp_tok, "logp": self.logp}[name]


def concat_columns(blocks: list[Columns]) -> Columns:
    """The records of ``blocks`` in order, as one ``Columns`` (prompt texts and problems are
    kept when every block has texts / concatenated)."""
    if len(blocks) == 1:
        return blocks[0]
    fields = {}
    for f in dataclasses.fields(Columns):
        if f.name in ("prompt_text", "pre_problems"):
            continue
        fields[f.name] = np.concatenate([getattr(b, f.name) for b in blocks])
    text = None
    if all(b.prompt_text is not None for b in blocks):
        text = [t for b in blocks for t in b.prompt_text]
    return Columns(
        **fields, prompt_text=text, pre_problems=[p for b in blocks for p in b.pre_problems]
    )


def _segment_any(bad_tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """bool ``[n]``: some token of the record is bad (``lengths`` >= 0 per record)."""
    n = len(lengths)
    if not bad_tokens.any():
        return np.zeros(n, dtype=bool)
    owner = np.repeat(np.arange(n), lengths)
    return np.bincount(owner[bad_tokens], minlength=n) > 0


def _ids_outside(tokens: np.ndarray, lengths: np.ndarray, vocab_size: int) -> np.ndarray:
    """bool ``[n]``: the record holds an id outside ``[0, vocab_size)``; a block's min and max
    settle the common case of none without a pass per check."""
    if not tokens.size or (tokens.min() >= 0 and tokens.max() < vocab_size):
        return np.zeros(len(lengths), dtype=bool)
    return _segment_any((tokens < 0) | (tokens >= vocab_size), lengths)


def _early_end(tokens: np.ndarray, lengths: np.ndarray, eos_id: int) -> np.ndarray:
    """bool ``[n]``: the record holds ``eos_id`` before its last token; none when the block
    holds as many end tokens as its records' last tokens do."""
    ends = np.cumsum(lengths)[lengths > 0] - 1
    is_eos = tokens == eos_id
    if np.count_nonzero(is_eos) == np.count_nonzero(is_eos[ends]):
        return np.zeros(len(lengths), dtype=bool)
    is_eos[ends] = False
    return _segment_any(is_eos, lengths)


def _bad_log_probs(values: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """bool ``[n]`` twice: the record holds a NaN or infinite value / a value > 0; a block's
    min and max settle the common case of neither (a NaN fails both comparisons)."""
    n = len(lengths)
    if not values.size or (values.max() <= 0 and values.min() > -np.inf):
        return np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    return _segment_any(~np.isfinite(values), lengths), _segment_any(values > 0, lengths)


def validate(
    cols: Columns,
    *,
    file: str,
    where_word: str,
    vocab_size: int,
    eos_id: int,
    max_new_tokens: int | None,
    has_ref: bool | None,
) -> tuple[np.ndarray, list[Problem]]:
    """Checks every record of the block; returns ``(ok bool [n], problems)``: one ``Problem``
    per bad record (the first check it fails, in the order below).

    Checks: ``completion_ids`` not empty and at most ``max_new_tokens`` long, ``eos_id`` only as
    the last token; every id in ``[0, vocab_size)``; ``logprobs`` (and ``ref_logprobs``) as long
    as ``completion_ids``, finite and <= 0; ``ref_logprobs`` present on all records or none
    (``has_ref``: what the buffer holds, ``None``: decided by the first record); exactly one of
    ``reward`` / ``log_reward``, finite; ``group_id`` >= 0."""
    n = cols.n
    checks: list[tuple[str, np.ndarray, str]] = []

    def add(field: str, bad: np.ndarray, message: str) -> None:
        checks.append((field, bad, message))

    comp_len = cols.comp_len
    add("completion_ids", comp_len == 0, "is empty (a completion has at least one token)")
    if max_new_tokens is not None:
        add(
            "completion_ids",
            comp_len > max_new_tokens,
            f"is longer than the length limit max_new_tokens={max_new_tokens}",
        )
    for field, lens, toks in (
        ("prompt_ids", cols.prompt_len, cols.prompt_tok),
        ("completion_ids", comp_len, cols.comp_tok),
    ):
        add(
            field,
            _ids_outside(toks, lens, vocab_size),
            f"holds a token id outside the vocabulary [0, {vocab_size})",
        )
    add(
        "completion_ids",
        _early_end(cols.comp_tok, comp_len, eos_id),
        f"holds the end token eos_id={eos_id} before its last token",
    )
    add("logprobs", cols.logp_len != comp_len, "length differs from completion_ids")
    same = cols.logp_len == comp_len
    not_finite, positive = _bad_log_probs(cols.logp, cols.logp_len)
    add("logprobs", same & not_finite, "holds a NaN or infinite log-prob")
    add("logprobs", same & positive, "holds a log-prob > 0")
    has = cols.ref_len >= 0
    if has_ref is None and n:
        has_ref = bool(has[0])
    if has_ref:
        add("ref_logprobs", ~has, "is missing (this buffer stores reference log-probs)")
    elif has_ref is False:
        add("ref_logprobs", has, "is given but this buffer stores no reference log-probs")
    ref_lens = np.maximum(cols.ref_len, 0)
    add("ref_logprobs", has & (cols.ref_len != comp_len), "length differs from completion_ids")
    ref_same = has & (cols.ref_len == comp_len)
    not_finite, positive = _bad_log_probs(cols.ref, ref_lens)
    add("ref_logprobs", ref_same & not_finite, "holds a NaN or infinite log-prob")
    add("ref_logprobs", ref_same & positive, "holds a log-prob > 0")
    both = cols.has_reward & cols.has_log_reward
    add("reward", both, "both reward and log_reward are given (exactly one is allowed)")
    add("reward", ~cols.has_reward & ~cols.has_log_reward, "missing (give reward or log_reward)")
    add("reward", cols.has_reward & ~np.isfinite(cols.reward), "is not finite")
    add("log_reward", cols.has_log_reward & ~np.isfinite(cols.log_reward), "is not finite")
    add("group_id", cols.has_group & (cols.group_id < 0), "is negative")

    ok = np.ones(n, dtype=bool)
    problems: list[Problem] = []
    for field, bad, message in checks:
        new = bad & ok
        if new.any():
            for i in np.flatnonzero(new).tolist():
                problems.append(
                    Problem(file, f"{where_word} {int(cols.location[i])}", field, message)
                )
            ok &= ~new
    order = np.argsort([_location_key(p) for p in problems], kind="stable")
    return ok, [problems[i] for i in order]


def _location_key(p: Problem) -> int:
    return int(p.where.split()[-1])
