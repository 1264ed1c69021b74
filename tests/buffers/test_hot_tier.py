"""The hot tier (``buffers/hot_tier.py``) through its public methods, on a store of 16 chunks
written by ``ChunkStore``."""

import numpy as np
import torch
from parts_support import store_parts
from zarrl.buffers.format import Commit
from zarrl.buffers.hot_tier import HotTier

R, CHUNKS = 8, 16


def _tier(path, cache) -> HotTier:
    rows = R * CHUNKS
    log, ring, chunks = store_parts(path, rows, R, (64,))
    ids = np.arange(rows)
    blocks = [(c, {"obs": np.repeat(ids[c * R : (c + 1) * R, None], 64, 1)}) for c in range(CHUNKS)]
    chunks.write(blocks, io=[], fresh_from=0)
    ring.advance(rows)
    log.publish(Commit(revision=1, write_count=rows, length=rows, extent=rows), False, 0)
    tier = HotTier(ring, log, chunks, cache, torch.device("cpu"))
    tier.build(log.header)
    return tier


def test_a_budget_that_holds_every_chunk_is_a_mirror(tmp_path):
    tier = _tier(tmp_path / "m.zarr", cache="ram")
    assert tier.is_mirror and tier.resident_positions(R * CHUNKS) is None
    got, loaded = tier.gather(torch.tensor([5, 100]), ["obs"])
    assert got["obs"][:, 0].tolist() == [5, 100] and loaded == [0, 12]
    assert tier.gather(torch.tensor([6]), ["obs"])[1] == []  # cached now


def test_samples_come_from_cached_rows_and_refills_turn_the_cache_over(tmp_path):
    tier = _tier(tmp_path / "c.zarr", cache=1)  # the smallest pool: 4 chunks
    assert not tier.is_mirror and tier.pool.max_slots == 4
    gen = torch.Generator().manual_seed(0)
    pos = tier.sample(256, R * CHUNKS, gen)  # loads a few chunks first
    mask = tier.resident_positions(R * CHUNKS)
    assert mask[pos].all() and 0 < int(mask.sum()) <= 4 * R
    cached = set(torch.unique(pos // R).tolist())
    seen = set(cached)
    for _ in range(50):
        tier.refill(4 * R, R * CHUNKS, in_place=False, rng=gen)  # earns one run per call
        tier.wait_refill()
        tier.skip_rest()
        seen.update(torch.unique(tier.sample(64, R * CHUNKS, gen) // R).tolist())
    assert len(seen) > 8  # the cache moved over the buffer
    assert tier.pool.n_slots <= 4
    tier.close()


def test_a_refill_decoded_before_an_in_place_write_is_not_installed(tmp_path):
    tier = _tier(tmp_path / "s.zarr", cache=1)
    gen = torch.Generator().manual_seed(1)
    tier.sample(8, R * CHUNKS, gen)
    before = tier.pool.resident().tolist()
    while not tier.refill_pending:
        tier.refill(4 * R, R * CHUNKS, in_place=False, rng=gen)
    assert tier.wait_refill()
    tier.refill(0, R * CHUNKS, in_place=True, rng=gen)  # rows were rewritten meanwhile
    assert tier.pool.resident().tolist() == before
    tier.close()
