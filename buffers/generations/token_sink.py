"""The token side of an import: its token rows, built block by block, and the token storage
they are appended to in bulk while the next blocks are read (``importer.py`` drives it)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Any

import numpy as np
import zarr.codecs
from tensordict import TensorDict

from ..bulk_append import RESERVE_CHUNKS, BulkAppender, ensure_layout
from ..storage import ZarrStorage
from ..store_io import clear_store, put_group_attributes, run_io
from .layout import FACTS_ATTR, TOKENS, Facts, Tables, legacy_tokens, token_path
from .prompts import prompt_index
from .records import Columns, concat_columns
from .token_rows import TokenRows, legacy_token_rows

TOKEN_CHUNK_ROWS = 1 << 20
"""Token rows per chunk of a new buffer (12 MB of the 3 leaves before compression): fewer chunk
files per token than ``ZarrStorage``'s default chunks (4 to 8 MiB), and file creation costs
0.1-0.4 ms each on the machines measured. Alternated imports (format version 3) of a 7.8
M-token Parquet file: median 228 ms with 2**20 rows against 246 ms with 2**19 (min 209 and
216); of a 0.79 M-token file, 79 against 86 ms (the last, partly filled chunk is written in
bulk too, no longer staged in the chunk pool)."""

INDEX_KEYS: list = []
"""The token storage's ``index_keys`` in a new buffer: none (its leaves are per-token data; the
index leaves TorchRL's slice samplers look up are derived from the imports' lengths by readers,
``token_index.py``). Format version 1 and 2 buffers stored and mirrored ``completion``,
``position`` and ``next/done``."""

LOGPROB_CODECS = [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")]
TOKEN_CODECS = {"sample_log_prob": LOGPROB_CODECS, "ref_log_prob": LOGPROB_CODECS}
"""Codecs of the token leaves (``ZarrStorage(compressors=...)``): the log-probs are scalar
floats per row, but noise, not series: the default row delta and zstd encode a 262,144-row chunk
in 1.4 ms to 1.17x, LZ4 with bit shuffle and no filter in 0.3 ms to 1.11x (measured on the
benchmark's log-probs; 1.08x on log-probs concentrated near 0, as a language model's are).
Storing them uncompressed (crc32c only) was measured too: no faster an import (alternated, on
the 7.8 M-token file: median 282 ms against 258 ms, more system time writing the larger
files). The other leaves keep their default (LZ4, byte shuffle)."""

MAX_WAITING_BLOCKS = 1
"""Blocks of token rows that may wait for the token storage to open (its layout is made from
the first block); the next block waits for it instead, so an import's rows never pile up in RAM
behind a slow opening (an object store)."""

IMPORT_COMMIT_INTERVAL = 3600.0
"""``min_commit_interval`` of the import's token storage: no automatic commit while the rows
are appended (none would be visible: the import's record counts them), one at its end."""


@dataclasses.dataclass
class Summary:
    """Per-completion values of good records ``[n]`` (what the import's arrays hold, but the
    prompt index): ``length`` int64, ``group_id`` int64 with ``has_group`` bool,
    ``policy_version`` int64, ``log_reward`` float32, ``terminated`` bool (ends with the end
    token); ``prompt`` int64 ``[n]``: each record's prompt among the distinct prompts of its
    block (tokens ``prompt_tok`` int64 flat with ``prompt_len`` int64 ``[p]``), so that only
    distinct prompts are held until the import's prompt table is made."""

    length: np.ndarray
    prompt: np.ndarray
    prompt_tok: np.ndarray
    prompt_len: np.ndarray
    group_id: np.ndarray
    has_group: np.ndarray
    policy_version: np.ndarray
    log_reward: np.ndarray
    terminated: np.ndarray


def summarize(cols: Columns, eos_id: int) -> Summary:
    """The per-completion values of a block of good records (every completion non-empty)."""
    lens = cols.comp_len
    empty = np.zeros(0, dtype=np.int64)
    prompt, ptok, poff = prompt_index(
        empty, np.zeros(1, dtype=np.int64), cols.prompt_tok, cols.prompt_len
    )
    return Summary(
        length=lens.astype(np.int64),
        prompt=prompt,
        prompt_tok=ptok,
        prompt_len=np.diff(poff),
        group_id=cols.group_id,
        has_group=cols.has_group,
        policy_version=cols.policy_version.astype(np.int64, copy=False),
        log_reward=np.where(cols.has_reward, cols.reward, cols.log_reward).astype(np.float32),
        terminated=cols.comp_tok[np.cumsum(lens) - 1] == eos_id,
    )


def concat_summaries(blocks: list[Summary]) -> Summary:
    """The summaries of consecutive blocks as one (``prompt`` renumbered to index the
    concatenated distinct prompts)."""
    if len(blocks) == 1:
        return blocks[0]
    fields = dataclasses.fields(Summary)
    out = {f.name: np.concatenate([getattr(b, f.name) for b in blocks]) for f in fields}
    first = np.cumsum([0] + [len(b.prompt_len) for b in blocks[:-1]])
    out["prompt"] += np.repeat(first, [len(b.prompt) for b in blocks])
    return Summary(**out)


class TokenSink:
    """The token storage of one import, opened (created on a new buffer, after the buffer's
    facts) on a thread of its own from the start, while the files are read; its layout is
    made there from the first good block. The blocks' token rows wait for it, then are
    appended in bulk (``BulkAppender``: whole chunks encoded, written and fsynced in the
    background). ``finish`` commits them, ``abandon`` drops them (no commit)."""

    def __init__(
        self,
        root,
        where: str,
        tables: Tables,
        facts: Facts,
        stored: Facts | None,
        storage_options: dict[str, Any] | None,
    ) -> None:
        self.root, self.where, self.facts = root, where, facts
        self.facts_stored = stored == facts
        self.attrs_before = root.attrs.asdict()  # restored by ``abandon`` on a new buffer
        self.new_buffer = not tables.records and TOKENS not in root
        self.storage_options = storage_options
        self.legacy = legacy_tokens(root)
        self.c0 = self.c_next = tables.num_completions
        self.storage: ZarrStorage | None = None
        self.appender: BulkAppender | None = None
        self.r0 = 0
        self.waiting: list[TokenRows | TensorDict] = []  # rows waiting for the storage
        self.kept: list[Columns] = []  # a version 1 buffer's blocks, appended at ``finish``
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zarrl-open")
        self._tasks = [self._pool.submit(self._open)]  # run in order on that thread
        self._layout_asked = False

    def put_facts(self) -> None:
        """Writes the buffer's facts (once; fsynced with the import's record)."""
        self.opened()
        self._put_facts()

    def prepare(self, has_ref: bool) -> None:
        """Asks for the storage's layout as soon as the import knows whether its records carry
        reference log-probs (the token schema depends on nothing else), so that the layout is
        made on the opening thread while the first block is read or validated; the first call
        decides (the importer checks that the records agree)."""
        if not self.legacy:
            self._ask_layout(TokenRows.empty(has_ref))

    def add(self, cols: Columns, has_ref: bool) -> None:
        """Appends the token rows of good records ``cols`` after those before."""
        if self.legacy:
            self.kept.append(cols)
            return
        rows = TokenRows(cols, self.c_next, has_ref)
        self.c_next += cols.n
        self._ask_layout(TokenRows.empty(has_ref))
        self.waiting.append(rows)
        if len(self.waiting) > MAX_WAITING_BLOCKS or self._tasks[-1].done():
            self._drain()

    def finish(self, has_ref: bool, prompt: np.ndarray) -> tuple[int, int]:
        """Commits the rows appended (``prompt``: the prompt index of every good record, for a
        version 1 buffer's leaves); returns the token rows ``[r0, r1)`` they fill."""
        if self.legacy:
            cols = concat_columns(self.kept)
            summary = summarize(cols, self.facts.eos_id)
            rows = legacy_token_rows(cols, self.c0, has_ref, prompt, summary)
            self._ask_layout(rows[:1])
            self.waiting.append(rows)
        self._drain()
        self.appender.finish()
        r1 = len(self.storage)
        self.storage.close()
        self._pool.shutdown()
        return self.r0, r1

    def abandon(self) -> None:
        """Closes the storage without committing anything of this import (an error of its
        opening is left to the error being handled). On a buffer this import was creating,
        what it created goes too: the token storage's objects (it held no committed row) and
        the facts, so the location is left as it was."""
        self._pool.shutdown()  # waits for the opening
        if self.storage is not None and not self.storage.closed:
            self.storage.abandon()
        if self.new_buffer:
            if self.storage is not None:
                clear_store(self.storage.store)
            if self.root.attrs.asdict() != self.attrs_before:
                run_io(put_group_attributes(self.root, self.attrs_before))

    def opened(self) -> None:
        """Waits for the storage's opening (and layout, once asked for), raising its error."""
        for task in self._tasks:
            task.result()

    def _ask_layout(self, example: TensorDict) -> None:
        if not self._layout_asked:
            self._tasks.append(self._pool.submit(self._layout, example))
            self._layout_asked = True

    def _drain(self) -> None:
        self.opened()
        for rows in self.waiting:
            self.appender.append(rows)
        self.waiting.clear()

    def _put_facts(self) -> None:
        if not self.facts_stored:
            attrs = {**self.root.attrs.asdict(), FACTS_ATTR: self.facts.to_attrs()}
            run_io(put_group_attributes(self.root, attrs))  # awaited on object stores
            self.facts_stored = True

    def _open(self) -> None:
        """Opens or creates the token storage."""
        self._put_facts()  # a new buffer's group holds its facts before any member
        path = token_path(self.where)
        # an import only appends: no RAM mirror of index columns (a version 2 buffer's:
        # neither its rows reloaded at opening nor the import's copied; 13 bytes a token)
        opts = {
            "storage_options": self.storage_options,
            "min_commit_interval": IMPORT_COMMIT_INTERVAL,
            "mirror_index": False,
        }
        self.storage = (
            ZarrStorage.open(path, mode="r+", **opts)
            if TOKENS in self.root
            else ZarrStorage(
                None,
                path=path,
                **opts,
                chunk_rows=TOKEN_CHUNK_ROWS,
                index_keys=INDEX_KEYS,
                compressors=TOKEN_CODECS,
            )
        )
        # rows of a killed import (no record) stay, uncounted, before these
        self.r0 = len(self.storage)
        self.appender = BulkAppender(self.storage)

    def _layout(self, example: TensorDict) -> None:
        """The storage's layout from ``example`` (one token row) when it has none, and room in
        its arrays for the rows to come (resized here rather than by the appends)."""
        ensure_layout(self.storage, example)
        self.appender.reserve(RESERVE_CHUNKS * self.storage.log.header.chunk_rows)
