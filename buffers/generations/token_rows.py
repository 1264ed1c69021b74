"""The token rows of a block of good records: one row per completion token (``layout.LEAVES``),
written by ``TokenRows.fill`` straight into the bulk appender's chunk buffers, in the stored
dtypes, with no intermediate array per leaf. Format version 1 and 2 buffers also store the index
leaves (``layout.INDEX_LEAVES``, which newer buffers derive from the lengths: ``token_index.py``);
``fill`` writes them when the storage has them. The rows of a version 1 buffer, with its extra
leaves, are built whole by ``legacy_token_rows``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from tensordict import TensorDict

from ..format import path_key
from .records import Columns
from .token_index import INDEX_DTYPES, derived_index

if TYPE_CHECKING:
    from .token_sink import Summary

ACTION_DTYPE = np.int32
"""Dtype of ``action`` (the token id) in new buffers: any vocabulary fits, and it halves what
is copied and encoded against int64 (buffers made before keep int64; readers widen both)."""


def token_schema(has_ref: bool, action_dtype=None, with_index: bool = False) -> dict[str, np.dtype]:
    """Leaf path -> dtype of the token rows of a new buffer: ``action`` (in ``ACTION_DTYPE``
    unless given), ``sample_log_prob``, ``ref_log_prob`` with reference log-probs; the index
    leaves too ``with_index`` (the leaves of a format version 1 or 2 buffer)."""
    schema = {
        "action": np.dtype(ACTION_DTYPE if action_dtype is None else action_dtype),
        "sample_log_prob": np.dtype(np.float32),
    }
    if has_ref:
        schema["ref_log_prob"] = np.dtype(np.float32)
    if with_index:
        schema |= {path: np.dtype(dt) for path, dt in INDEX_DTYPES.items()}
    return schema


class TokenRows:
    """The token rows ``[T]`` of good records ``cols`` (every completion non-empty) whose first
    completion is number ``completion0`` of the buffer, as a ``bulk_append.RowSource``:
    ``action`` (token id), ``sample_log_prob`` / ``ref_log_prob`` (float32, nats); for a
    format version 1 or 2 buffer also ``position`` (int32, 0 at each completion's first
    token), ``completion`` (int64, the buffer's completion number) and ``next/done`` (bool, a
    completion's last token)."""

    def __init__(self, cols: Columns, completion0: int, has_ref: bool) -> None:
        self.cols, self.completion0, self.has_ref = cols, completion0, has_ref
        self.lens = cols.comp_len
        self.ends = np.cumsum(self.lens)  # one past each completion's last row
        self.first = self.ends - self.lens
        self.leaves = frozenset(token_schema(has_ref, with_index=True))
        self._index: dict | None = None  # the block's index leaves, derived once if written

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def example(self) -> TensorDict:
        """One row of a new buffer's token schema (``empty``)."""
        return self.empty(self.has_ref)

    @staticmethod
    def empty(has_ref: bool) -> TensorDict:
        """One zero row ``[1]`` of a new buffer's token schema (its layout)."""
        leaves = {
            path_key(p): torch.from_numpy(np.zeros(1, dtype=dt))
            for p, dt in token_schema(has_ref).items()
        }
        return TensorDict(leaves, batch_size=[1])

    def rows(self, a: int, b: int, action_dtype=None, with_index: bool = False) -> TensorDict:
        """Rows ``[a, b)`` as a TensorDict (fresh arrays; ``token_schema``'s arguments)."""
        schema = token_schema(self.has_ref, action_dtype, with_index)
        arrays = {path: np.empty(b - a, dtype=dt) for path, dt in schema.items()}
        self.fill(arrays, a, b)
        leaves = {path_key(p): torch.from_numpy(v) for p, v in arrays.items()}
        return TensorDict(leaves, batch_size=[b - a])

    def fill(self, out: Mapping[str, np.ndarray], a: int, b: int) -> None:
        """Rows ``[a, b)`` into ``out`` (leaf path -> ``[b - a]`` array of the stored dtype):
        the token leaves cast as they are copied (ids were checked against the vocabulary,
        log-probs are finite), the index leaves, where ``out`` has them, computed in place
        from the lengths."""
        cols = self.cols
        np.copyto(out["action"], cols.comp_tok[a:b], casting="unsafe")
        np.copyto(out["sample_log_prob"], cols.logp[a:b], casting="same_kind")
        if self.has_ref:
            np.copyto(out["ref_log_prob"], cols.ref[a:b], casting="same_kind")
        if "completion" in out:
            self._fill_index(out, a, b)

    def _fill_index(self, out: Mapping[str, np.ndarray], a: int, b: int) -> None:
        """The index leaves of rows ``[a, b)``: the block's, derived once from its lengths as
        readers of newer buffers derive them (``token_index.derived_index``)."""
        if self._index is None:
            self._index = derived_index(self.first, self.lens, len(self))
        index = self._index
        np.copyto(out["completion"], index["completion"][a:b].numpy() + self.completion0)
        np.copyto(out["position"], index["position"][a:b].numpy())
        np.copyto(out["next/done"], index["next", "done"][a:b].numpy())


def legacy_token_rows(
    cols: Columns, completion0: int, has_ref: bool, prompt: np.ndarray, summary: Summary
) -> TensorDict:
    """The token rows of a format version 1 buffer (its int64 ``action``): the leaves of
    ``TokenRows`` plus ``layout.LEGACY_LEAVES``, the per-completion values repeated on every
    row, from ``prompt`` (the records' prompt index ``[n]``) and their ``summary``."""
    source = TokenRows(cols, completion0, has_ref)
    T = len(source)
    td = source.rows(0, T, action_dtype=np.int64, with_index=True)
    owner = np.repeat(np.arange(cols.n), cols.comp_len)
    done = td.get(("next", "done")).numpy()
    log_reward = summary.log_reward
    done_terminated = np.zeros(T, dtype=bool)
    done_terminated[source.ends - 1] = summary.terminated
    reward = np.zeros(T, dtype=np.float32)
    reward[source.ends - 1] = log_reward
    group = np.where(summary.has_group, summary.group_id, prompt)
    legacy = {
        "prompt": prompt[owner],
        "group_id": group[owner],
        "policy_version": summary.policy_version[owner],
        "log_reward": log_reward[owner],
        ("next", "terminated"): done_terminated,
        ("next", "truncated"): done & ~done_terminated,
        ("next", "reward"): reward,
    }
    for key, value in legacy.items():
        td.set(key, torch.from_numpy(value))
    return td
