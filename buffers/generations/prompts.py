"""The prompt table of an import: identical prompts (token lists) share one index, across the
buffer's earlier imports too, found without a Python loop over records.

With pyarrow (the ``generations`` extra), each prompt's token bytes go through Arrow's hash table
(``dictionary_encode`` of a binary view of the tokens: exact). Without it, each prompt gets a 64-bit key (a wrapping sum of per-token hashes of token and position,
mixed with the length); prompts are grouped by key, then every prompt is compared token by token
with its group's first member, so two prompts share an index only if they are equal. Should two
different prompts ever share a key, the exact path (a dictionary of token bytes) decides instead.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer, in place on a uint64 array (wrapping arithmetic)."""
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def ranges(begin: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(b, b + n) for b, n in zip(begin, lengths)])``, without the loop."""
    total = int(lengths.sum())
    first = np.cumsum(lengths) - lengths
    return np.repeat(begin - first, lengths) + np.arange(total)


def prompt_keys(tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """uint64 ``[P]``: a hash of each prompt ``tokens[offsets[i]:offsets[i + 1]]`` (int64)."""
    lengths = np.diff(offsets)
    position = np.arange(len(tokens), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    with np.errstate(over="ignore"):
        h = tokens.astype(np.uint64) * _GOLDEN
        h += position.astype(np.uint64) * _M1
        _mix(h)
        sums = np.zeros(len(tokens) + 1, dtype=np.uint64)
        np.cumsum(h, out=sums[1:])
        key = sums[offsets[1:]] - sums[offsets[:-1]]  # wrapping: empty prompts give 0
        key ^= lengths.astype(np.uint64) * _GOLDEN
        return _mix(key)


def prompt_index(
    known_tokens: np.ndarray,
    known_offsets: np.ndarray,
    tokens: np.ndarray,
    lengths: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of ``n`` prompts (flat int64 ``tokens`` with ``lengths`` ``[n]``) in the table
    of the buffer's ``K`` known prompts (``known_tokens`` with ``known_offsets`` ``[K + 1]``)
    extended by the new ones in order of first appearance: returns ``(index int64 [n], the new
    prompts' tokens, their offsets [new + 1])``."""
    K = len(known_offsets) - 1
    all_tokens = np.concatenate([known_tokens, tokens]).astype(np.int64, copy=False)
    offsets = np.concatenate([known_offsets, known_offsets[-1] + np.cumsum(lengths)])
    all_lengths = np.diff(offsets)
    rep = arrow_representatives(all_tokens, offsets)
    if rep is None:
        rep = hashed_representatives(all_tokens, offsets, all_lengths)
    rep_new = rep[K:]
    new_reps = np.unique(rep_new[rep_new >= K])  # new prompts, in order of first appearance
    index = rep_new.copy()
    fresh = rep_new >= K
    index[fresh] = K + np.searchsorted(new_reps, rep_new[fresh])
    new_lengths = all_lengths[new_reps]
    new_tokens = all_tokens[ranges(offsets[new_reps], new_lengths)]
    new_offsets = np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int64)
    return index.astype(np.int64, copy=False), new_tokens, new_offsets


def arrow_representatives(tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray | None:
    """int64 ``[P]``: the first prompt equal to each prompt, by Arrow's hash table over the
    prompts' bytes (exact: equal bytes, equal prompts); ``None`` without pyarrow, or past 2 GiB
    of prompt bytes."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:
        return None
    if tokens.nbytes >= 1 << 31:
        return None
    bounds = (offsets * 8).astype(np.int32)
    data = np.ascontiguousarray(tokens, dtype="<i8")
    prompts = pa.Array.from_buffers(
        pa.binary(), len(offsets) - 1, [None, pa.py_buffer(bounds), pa.py_buffer(data)]
    )
    encoded = pc.dictionary_encode(prompts)  # dictionary in order of first appearance
    index = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    first = np.full(len(encoded.dictionary), len(index), dtype=np.int64)
    np.minimum.at(first, index, np.arange(len(index)))
    return first[index]


def hashed_representatives(
    tokens: np.ndarray, offsets: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    """int64 ``[P]``: the first prompt equal to each prompt, grouped by a 64-bit key and then
    compared token by token (the exact path decides should two prompts share a key)."""
    _, first, inverse = np.unique(
        prompt_keys(tokens, offsets), return_index=True, return_inverse=True
    )
    rep = first[inverse]  # the first prompt (known ones first) with the same key
    same_length = lengths[rep] == lengths
    equal = same_length.all() and np.array_equal(tokens[ranges(offsets[rep], lengths)], tokens)
    return rep if equal else _exact_representatives(tokens, offsets)


def _exact_representatives(tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """int64 ``[P]``: the first prompt equal to each prompt, by a dictionary of their bytes."""
    seen: dict[bytes, int] = {}
    rep = np.empty(len(offsets) - 1, dtype=np.int64)
    for i, (a, b) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist())):
        rep[i] = seen.setdefault(tokens[a:b].tobytes(), i)
    return rep
