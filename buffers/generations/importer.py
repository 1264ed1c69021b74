"""``import_generations``: files of logged generations -> a generations buffer, validated.

Order of an import (the last step is its commit point, ``layout.py``): the files are read and
validated block by block, and each good block's token rows are appended to ``tokens/`` as it
comes (``token_sink.py``: whole chunks encoded, written and fsynced in the background while the
next blocks are read; none after a bad row with ``on_error="fail"``, and nothing of them is
committed then); at the end the token rows are committed, the import's arrays written under
``imports/<id>/``, then its record. Until it commits, an import holds its records'
per-completion values and prompts in RAM, and at most a chunk of token rows per leaf.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..store_io import put_group_attributes, run_io
from .layout import (
    IMPORT_ARRAYS,
    IMPORT_ATTR,
    Facts,
    Tables,
    load_tables,
    new_import_group,
    open_root,
    read_facts,
    recorded_digest,
    write_arrays,
)
from .prefetch import prefetched
from .prompts import prompt_index
from .readers import (
    DIGEST,
    LEGACY_DIGEST,
    digest,
    format_of,
    known_has_ref,
    parse_field_map,
    read_blocks,
)
from .records import GenerationsImportError, Problem, validate
from .stores import check_import_lock, import_lock
from .token_sink import Summary, TokenSink, concat_summaries, summarize


@dataclasses.dataclass
class FileReport:
    path: str
    digests: dict[str, str]  # ``readers.DIGEST`` (and ``LEGACY_DIGEST`` for older buffers)
    records: int = 0
    skipped: int = 0
    tokens: int = 0


@dataclasses.dataclass
class ImportReport:
    """What an import did: per file, records imported and skipped; ``problems`` lists every
    skipped record with its reason; ``import_id`` is ``None`` when nothing was committed."""

    files: list[FileReport]
    problems: list[Problem]
    import_id: str | None
    completions: int
    tokens: int
    new_prompts: int

    @property
    def skipped(self) -> int:
        return len(self.problems)


def import_generations(
    files: Sequence[str | os.PathLike],
    buffer: str | os.PathLike,
    *,
    vocab_size: int | None = None,
    eos_id: int | None = None,
    max_new_tokens: int | None = None,
    on_error: str = "fail",
    field_map: str | Mapping[str, str] | None = None,
    allow_duplicate: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> ImportReport:
    """Imports ``files`` (``.jsonl``, ``.parquet``, saved ``datasets`` folders) into the buffer
    at ``buffer`` (created when absent: ``vocab_size`` and ``eos_id`` are then required), a
    local folder or a store URL (``s3://...`` with ``storage_options``, ``memory://``,
    ``file://``). One import at a time per buffer (``stores.import_lock``).

    ``on_error="fail"``: any bad record raises ``GenerationsImportError`` listing every bad
    record, and nothing is committed; ``"skip"``: the good records are imported and the bad ones
    reported. A file whose hash (``readers.DIGEST``) an earlier import of this buffer (or this
    call) already holds is refused unless ``allow_duplicate``.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    if not files:
        raise ValueError("no file to import")
    fmap = parse_field_map(field_map)
    for f in files:
        if not Path(f).exists():
            raise FileNotFoundError(f"{f}: no such file or folder")
        format_of(f)
    where = os.fspath(buffer)
    with import_lock(where, storage_options):
        return _import(
            where,
            files,
            fmap,
            vocab_size,
            eos_id,
            max_new_tokens,
            on_error,
            allow_duplicate,
            storage_options,
        )


def _import(
    where: str,
    files: Sequence[str | os.PathLike],
    fmap: dict[str, str],
    vocab_size: int | None,
    eos_id: int | None,
    max_new_tokens: int | None,
    on_error: str,
    allow_duplicate: bool,
    storage_options: dict[str, Any] | None = None,
) -> ImportReport:
    root = open_root(where, "a", storage_options)
    stored = read_facts(root, where)
    tables = load_tables(root, where)
    facts = _agree_facts(stored, tables, vocab_size, eos_id, max_new_tokens, where)
    sink = TokenSink(root, where, tables, facts, stored, storage_options)
    try:
        # the files' hashes on a thread while they are read (xxhash and hashlib release the
        # GIL); a duplicate is refused before any error of its reading is raised
        reports = [FileReport(os.fspath(f), {}) for f in files]
        names = [DIGEST, LEGACY_DIGEST] if _has_legacy_digests(tables) else [DIGEST]
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zarrl-digest") as pool:
            digests = [pool.submit(digest, f, names) for f in files]
            try:
                blocks, problems, has_ref = _read_all(
                    reports, fmap, facts, tables.has_ref, sink, on_error
                )
            finally:
                for report, d in zip(reports, digests):
                    report.digests = d.result()
                _refuse_duplicates(reports, tables, allow_duplicate)
        if problems and on_error == "fail":
            raise GenerationsImportError(
                f"{len(problems)} bad record(s); nothing imported (use --on-error skip to "
                f"import the rest). First: {problems[0]}",
                problems,
            )
        if stored != facts:
            sink.put_facts()
        if not blocks:
            sink.abandon()
            return ImportReport(reports, problems, None, 0, 0, 0)
        summary = concat_summaries(blocks)
        # the blocks' distinct prompts into the buffer's table, then each record's
        distinct, ptok, poff = prompt_index(
            tables.prompt_tokens, tables.prompt_offsets, summary.prompt_tok, summary.prompt_len
        )
        prompt = distinct[summary.prompt]
        # the import's arrays are written on a thread while the token rows are committed
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zarrl-arrays") as pool:
            first = not tables.records
            arrays = pool.submit(_write_import_arrays, root, first, summary, prompt, ptok, poff)
            r0, r1 = sink.finish(bool(has_ref), prompt)
            group = arrays.result()
    except BaseException:
        sink.abandon()  # nothing of this import is committed
        raise
    rows, completions = (r0, r1), (tables.num_completions, tables.num_completions + len(prompt))
    prompts = (tables.num_prompts, tables.num_prompts + len(poff) - 1)
    _write_record(group, reports, rows, completions, prompts, bool(has_ref))
    return ImportReport(reports, problems, group.basename, len(prompt), r1 - r0, len(poff) - 1)


def _read_all(
    reports: list[FileReport],
    fmap: dict[str, str],
    facts: Facts,
    has_ref: bool | None,
    sink: TokenSink,
    on_error: str,
) -> tuple[list[Summary], list[Problem], bool | None]:
    """Reads and validates every file, block by block: the token rows of each good block go
    to ``sink`` as soon as it is validated (none after a bad record with ``on_error="fail"``:
    the import will commit nothing). Returns ``(per-completion summaries of the good blocks,
    problems, has_ref)``; ``reports`` get their counts."""
    blocks: list[Summary] = []
    problems: list[Problem] = []
    # the token storage's layout made while the first block is read, when the first file's
    # metadata settles whether its records carry reference log-probs
    guess = known_has_ref(reports[0].path, fmap) if has_ref is None and reports else None
    if guess is not None:
        sink.prepare(guess)
    for report in reports:
        # the next block is read and decoded on a thread while this one is validated and added
        with contextlib.closing(prefetched(read_blocks(report.path, fmap))) as file_blocks:
            for cols in file_blocks:
                if has_ref is None and cols.n:
                    has_ref = bool(cols.ref_len[0] >= 0)
                    if guess is not None and guess != has_ref:
                        raise GenerationsImportError(
                            f"{report.path}: its Parquet statistics say every record carries "
                            "ref_logprobs, yet the first record has none (a damaged file)"
                        )
                    sink.prepare(has_ref)
                ok, bad = validate(
                    cols,
                    file=report.path,
                    where_word="line" if format_of(report.path) == "jsonl" else "row",
                    vocab_size=facts.vocab_size,
                    eos_id=facts.eos_id,
                    max_new_tokens=facts.max_new_tokens,
                    has_ref=has_ref,
                )
                found = cols.pre_problems + bad
                problems += found
                report.skipped += len(found)
                good = cols if ok.all() else cols.take(ok)
                report.records += good.n
                report.tokens += int(good.comp_len.sum())
                if good.n:
                    blocks.append(summarize(good, facts.eos_id))
                    if not (problems and on_error == "fail"):
                        sink.add(good, bool(has_ref))
    return blocks, problems, has_ref


def _agree_facts(
    stored: Facts | None,
    tables: Tables,
    vocab_size: int | None,
    eos_id: int | None,
    max_new_tokens: int | None,
    where: str,
) -> Facts:
    """The buffer's facts: the stored ones, which the arguments given must match once an
    import is committed; a buffer with no import yet takes the arguments."""
    for name, v, lo in (("vocab_size", vocab_size, 1), ("eos_id", eos_id, 0)):
        if v is not None and (not isinstance(v, int) or v < lo):
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if stored is not None and tables.records:
        given = {"vocab_size": vocab_size, "eos_id": eos_id, "max_new_tokens": max_new_tokens}
        for name, v in given.items():
            if v is not None and v != getattr(stored, name):
                raise GenerationsImportError(
                    f"{where} stores {name}={getattr(stored, name)}, the import says {v}"
                )
        return stored
    base = stored or Facts(0, -1, None)
    vocab = vocab_size if vocab_size is not None else (base.vocab_size or None)
    eos = eos_id if eos_id is not None else (base.eos_id if base.eos_id >= 0 else None)
    if vocab is None or eos is None:
        raise GenerationsImportError(
            f"{where} is a new buffer: give its vocabulary size and end token "
            "(--vocab-size V --eos-id E)"
        )
    if eos >= vocab:
        raise GenerationsImportError(f"eos_id={eos} is outside the vocabulary [0, {vocab})")
    limit = max_new_tokens if max_new_tokens is not None else base.max_new_tokens
    return Facts(vocab, eos, limit)


def _has_legacy_digests(tables: Tables) -> bool:
    """Whether an import record of the buffer names a file by its ``LEGACY_DIGEST`` only."""
    return any(
        recorded_digest(f)[0] == LEGACY_DIGEST for rec in tables.records for f in rec["files"]
    )


def _refuse_duplicates(reports: list[FileReport], tables: Tables, allow: bool) -> None:
    if allow:
        return
    seen: dict[tuple[str, str], str] = {}
    for rec in tables.records:
        for f in rec["files"]:
            seen.setdefault(recorded_digest(f), f"import {rec['id']} ({f.get('path', '?')})")
    for r in reports:
        for name, value in r.digests.items():
            if (name, value) in seen:
                raise GenerationsImportError(
                    f"{r.path} was already imported into this buffer by {seen[name, value]} "
                    f"(same {name} hash); pass --allow-duplicate to import it again"
                )
        seen[DIGEST, r.digests[DIGEST]] = f"this import ({r.path})"


def _write_import_arrays(
    root,
    first: bool,
    summary: Summary,
    prompt: np.ndarray,
    prompt_tokens: np.ndarray,
    prompt_offsets: np.ndarray,
):
    """Creates the import's group ``imports/<id>`` (and ``imports/`` for the buffer's
    ``first`` import) and writes its arrays (``IMPORT_ARRAYS``); nothing refers to it before
    its record. Returns the group."""
    import_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
    group = new_import_group(root, import_id, create_parent=first)
    arrays = {
        "prompt_tokens": prompt_tokens,
        "prompt_offsets": prompt_offsets,
        "completion_length": summary.length,
        "completion_prompt": prompt,
        "completion_group": np.where(summary.has_group, summary.group_id, prompt),
        "completion_policy_version": summary.policy_version,
        "completion_log_reward": summary.log_reward,
        "completion_terminated": summary.terminated,
    }
    write_arrays(group, {name: arrays[name].astype(dt) for name, dt in IMPORT_ARRAYS.items()})
    return group


def _write_record(
    group,
    reports: list[FileReport],
    rows: tuple[int, int],
    completions: tuple[int, int],
    prompts: tuple[int, int],
    has_ref: bool,
) -> None:
    """Writes the import's record into its group: the commit point (the token rows and the
    group's arrays were written before; they are fsynced first, then this one atomic write)."""
    record = {
        "id": group.basename,
        "time": time.time(),
        "files": [
            {
                "path": r.path,
                DIGEST: r.digests[DIGEST],
                "records": r.records,
                "skipped": r.skipped,
                "tokens": r.tokens,
            }
            for r in reports
        ],
        "rows": list(rows),
        "completions": list(completions),
        "prompts": list(prompts),
        "has_ref": has_ref,
    }
    # the commit point: the arrays above are fsynced first, then this one atomic write
    check_import_lock()  # an object-store lock whose lease ran out: commit nothing
    run_io(put_group_attributes(group, {IMPORT_ATTR: record}, durable=True))
