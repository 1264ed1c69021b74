"""The prompt table of an import: identical prompts share an index (with earlier imports' too),
new ones are numbered in order of first appearance, and a hash collision never merges two
different prompts."""

from __future__ import annotations

import numpy as np
from zarrl.buffers.generations import prompts


def _flat(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(x) for x in lists], dtype=np.int64)
    tokens = np.array([t for x in lists for t in x], dtype=np.int64)
    return tokens, lengths


def _reference(known: list[list[int]], block: list[list[int]]):
    table = {tuple(p): i for i, p in reversed(list(enumerate(known)))}
    index, new = [], []
    for p in block:
        if tuple(p) not in table:
            table[tuple(p)] = len(known) + len(new)
            new.append(p)
        index.append(table[tuple(p)])
    return index, new


def _check(known: list[list[int]], block: list[list[int]]) -> None:
    ktok, klen = _flat(known)
    koff = np.concatenate([[0], np.cumsum(klen)]).astype(np.int64)
    tok, lengths = _flat(block)
    index, new_tok, new_off = prompts.prompt_index(ktok, koff, tok, lengths)
    want_index, want_new = _reference(known, block)
    assert index.tolist() == want_index
    got_new = [new_tok[a:b].tolist() for a, b in zip(new_off[:-1], new_off[1:])]
    assert got_new == want_new


def test_identical_prompts_share_an_index_with_known_ones():
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 50, size=rng.integers(0, 6)).tolist() for _ in range(30)]
    pool += [[1, 2], [2, 1], [1, 2, 0], [0, 1, 2], []]  # order and length matter
    known = pool[:10]
    block = [pool[i] for i in rng.integers(0, len(pool), size=400)]
    _check(known, block)
    _check([], block)
    _check(known, [])


def test_arrow_and_hashed_paths_find_the_same_representatives():
    rng = np.random.default_rng(1)
    pool = [rng.integers(0, 40, size=rng.integers(0, 5)).tolist() for _ in range(25)] + [[]]
    tokens, lengths = _flat([pool[i] for i in rng.integers(0, len(pool), size=500)])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    arrow = prompts.arrow_representatives(tokens, offsets)
    hashed = prompts.hashed_representatives(tokens, offsets, lengths)
    assert arrow is not None and arrow.tolist() == hashed.tolist()
    first = {}
    want = [
        first.setdefault(tuple(tokens[a:b]), i)
        for i, (a, b) in enumerate(zip(offsets, offsets[1:]))
    ]
    assert arrow.tolist() == want


def test_a_key_collision_falls_back_to_the_exact_comparison(monkeypatch):
    known = [[5, 6], [7]]
    block = [[7], [1, 2, 3], [5, 6], [9], [1, 2, 3], [8, 8]]
    monkeypatch.setattr(prompts, "arrow_representatives", lambda tokens, offsets: None)  # numpy
    _check(known, block)  # the hashed path without pyarrow
    monkeypatch.setattr(  # every prompt gets the same key
        prompts, "prompt_keys", lambda tokens, offsets: np.zeros(len(offsets) - 1, np.uint64)
    )
    _check(known, block)
