"""The hot tier of a ``ZarrStorage``: the pool of decoded chunks, which rows it holds, and the
background refill that turns it over when the buffer is larger than the cache.

A buffer whose live chunks fit in the budget is mirrored (``is_mirror``: nothing is ever
decoded twice). A larger one keeps a bounded pool; samplers that draw from cached rows only
(``resident_positions``, ``sample``) earn refill credit with every batch (``refill``), and a
background thread decodes a run of committed, uncached live chunks once enough is earned; the
run is swapped in at a later sampling call, never between a draw and its gather.
"""

from __future__ import annotations

import concurrent.futures
import math
import time

import torch

from .chunk_io import Block, ChunkStore, StaleRead
from .chunk_pool import ChunkPool, load_group
from .commit_log import CommitLog
from .format import Header
from .ring import Ring

DEFAULT_CACHE_BYTES = 256 * 2**20


class HotTier:
    """Decoded chunks of one storage (``pool``, built by ``build``) and their refill.

    Args:
        ring, log, chunks: the storage's ring, commit log and chunk I/O.
        cache: ``None`` (256 MiB), ``"ram"`` (mirror every live row) or a budget in bytes.
        device: where the decoded chunks live.
    """

    def __init__(
        self,
        ring: Ring,
        log: CommitLog,
        chunks: ChunkStore,
        cache: None | str | int,
        device: torch.device,
    ) -> None:
        self.ring, self.log, self.chunks = ring, log, chunks
        self.cache, self.device = cache, device
        self.pool: ChunkPool | None = None
        self._refill: concurrent.futures.Future | None = None
        self._refill_credit = 0.0  # rows the background refill may decode
        self._next_refill = 0.0  # monotonic time before which no refill starts
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._resident_cache: tuple | None = None
        self._resident_mask: tuple | None = None

    # ------------------------------------------------------------------ the pool
    def build(self, header: Header) -> None:
        """A new pool sized for ``header`` within the cache budget."""
        R, tail, cap0 = header.chunk_rows, header.tail, header.capacity
        live_chunks = None if cap0 is None else -(cap0 // -R) + 2
        chunk_bytes = R * max(1, math.prod(tail)) * sum(s.nbytes for s in header.schema.values())
        if self.cache == "ram":
            max_slots = live_chunks if live_chunks is not None else 8
        else:
            budget = DEFAULT_CACHE_BYTES if self.cache is None else int(self.cache)
            max_slots = max(4, budget // max(1, chunk_bytes))
            if live_chunks is not None and live_chunks <= max_slots:
                max_slots = live_chunks  # a mirror: nothing is ever decoded outside the pool
            else:  # the budget also holds a refill run and a group of misses being decoded
                max_slots = max(4, max_slots - 2 * load_group(max_slots))
        # a bounded store reserves its whole cache at once (untouched pages cost nothing); an
        # unbounded one grows on demand up to max_slots
        n_slots = max_slots if live_chunks is not None else min(max_slots, 16)
        map_size = live_chunks if live_chunks is not None else max(64, 2 * max_slots)
        self.pool = ChunkPool(
            header.schema, tail, R, n_slots, map_size, self.device, max_slots=max_slots
        )

    @property
    def is_mirror(self) -> bool:
        """Whether every live chunk fits in the pool (no eviction ever needed)."""
        header = self.log.header
        cap0 = header.capacity if header else None
        if cap0 is None:
            return self.cache == "ram"
        return self.pool.max_slots >= -(cap0 // -header.chunk_rows) + 2

    def grow_for(self, max_phys: int) -> None:
        """Growing buffers: widen the chunk map (and the pool, for ``cache='ram'``) to reach
        physical row ``max_phys``."""
        if self.log.header.capacity is not None:
            return
        pool = self.pool
        span = max_phys // pool.R - self.ring.base // pool.R + 2
        if self.cache == "ram" and span > pool.max_slots:
            pool.max_slots = max(span, 2 * pool.max_slots)
        if span > pool.map_size or pool.max_slots > pool.map_size:
            pool.remap(max(span, pool.max_slots, 2 * pool.map_size))

    def gather(self, phys: torch.Tensor, keys: list[str]) -> tuple[dict, list[int]]:
        """Leaves ``keys`` at physical rows ``phys`` (``{path: [N, *tail, *shape]}`` on the
        pool's device), loading missed chunks; also returns the chunk ids it loaded."""
        loaded: list[int] = []

        def load(chunks: list[int]) -> list[Block]:
            loaded.extend(chunks)
            return self.chunks.load(chunks)

        return self.pool.gather(phys, load, keys), loaded

    def drop_clean(self) -> None:
        """Forgets every cached chunk that holds no staged rows."""
        with self.pool.lock:
            self.pool.drop_clean()

    # ------------------------------------------------------------------ residency
    def resident_positions(self, live_rows: int) -> torch.Tensor | None:
        """bool ``[live_rows]``: whether each ring position's chunk is cached (``live_rows``:
        the storage's rows along dim 0); ``None`` for a mirror. The same tensor object is returned until the residency or the live range
        changes (callers may cache on its identity and must not modify it)."""
        if self.log.header is None or self.is_mirror:
            return None
        n0 = live_rows
        live = self.ring.live_range(n0)
        key = (self.pool, self.pool.version, live, self.ring.base, n0)
        if self._resident_mask is None or self._resident_mask[0] != key:
            R = self.pool.R
            first = live[0] // R
            cached = torch.zeros(max(0, -(live[1] // -R) - first), dtype=torch.bool)
            with self.pool.lock:
                chunks = self.pool.resident() - first
            cached[chunks[(chunks >= 0) & (chunks < cached.numel())]] = True
            phys = torch.arange(*live)
            mask = torch.zeros(n0, dtype=torch.bool)
            mask[self.ring.position(phys)] = cached[phys // R - first]
            self._resident_mask = (key, mask)
        return self._resident_mask[1]

    def _resident_runs(self, live_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached live rows as runs, int64 ``[n_cached_chunks]`` each: ``shift`` (physical row
        of a run minus the number of cached rows before it) and the cumulative row count, so
        the ``u``-th cached row is ``shift[k] + u`` with ``k = searchsorted(cum, u, right)``.
        Recomputed only when the pool's residency or the live range changed."""
        R = self.pool.R
        live = self.ring.live_range(live_rows)
        key = (self.pool, self.pool.version, live)
        if self._resident_cache is None or self._resident_cache[0] != key:
            with self.pool.lock:
                chunks = self.pool.resident()
            lo = torch.clamp(chunks * R, min=live[0])
            counts = (torch.clamp((chunks + 1) * R, max=live[1]) - lo).clamp_min(0)
            lo, counts = lo[counts > 0], counts[counts > 0]
            cum = counts.cumsum(0)
            self._resident_cache = (key, lo - (cum - counts), cum)
        return self._resident_cache[1], self._resident_cache[2]

    def sample(self, batch_size: int, live_rows: int, rng: torch.Generator | None) -> torch.Tensor:
        """``batch_size`` ring positions (int64) drawn uniformly from the cached live rows."""
        shift, cum = self._resident_runs(live_rows)
        if cum.numel() == 0:  # nothing cached yet: load a few chunks synchronously
            R = self.pool.R
            start, end = self.ring.live_range(live_rows)
            want = torch.randint(start // R, (end - 1) // R + 1, (min(4, self.pool.max_slots),))
            self.pool.ensure(torch.unique(want), self.chunks.load)
            return self.sample(batch_size, live_rows, rng)
        u = torch.randint(int(cum[-1]), (batch_size,), generator=rng)
        phys = shift[torch.searchsorted(cum, u, right=True)] + u
        return self.ring.position(phys)

    # ------------------------------------------------------------------ refill
    @property
    def refill_rows(self) -> int:
        """Rows one background refill decodes: a run of 1/16 of the cache's chunks."""
        return self.pool.load_group * self.pool.R

    @property
    def refill_pending(self) -> bool:
        """Whether a background refill was started and not yet swapped in."""
        return self._refill is not None

    def wait_refill(self) -> list[int]:
        """Waits for the pending background refill to finish decoding (it is swapped in at the
        next ``refill``); returns the chunk ids it decoded (none when none is pending)."""
        if self._refill is None:
            return []
        return [c for c, _ in self._refill.result()[1]]

    def skip_rest(self) -> None:
        """The next refill may start at once (no rest after the last one)."""
        self._next_refill = 0.0

    def refill(
        self, rows: float, live_rows: int, in_place: bool, rng: torch.Generator | None
    ) -> None:
        """Swaps a finished background refill into the pool, earns ``rows`` rows of refill
        credit and starts the next refill when the credit suffices. ``live_rows``: the
        storage's rows along dim 0; ``in_place``: committed rows were rewritten since the last
        commit (a refill decoded before that is stale)."""
        self._install_refill(live_rows, in_place)
        self._refill_credit = min(self._refill_credit + rows, 2 * self.refill_rows)
        self._schedule_refill(live_rows, in_place, rng)

    def _schedule_refill(self, live_rows: int, in_place: bool, rng) -> None:
        """Starts decoding a run of consecutive uncached, committed live chunks (1/16 of the
        cache) in the background once enough credit is earned and the refill thread has rested
        3x its last run (so it works at most ~1/4 of the time)."""
        R = self.pool.R
        if (
            self._refill is not None
            or self._refill_credit < self.refill_rows
            or time.monotonic() < self._next_refill
        ):
            return
        start, _ = self.ring.live_range(live_rows)
        # whole committed chunks only: their bytes change only through in-place writes
        first, last = start // R, (self.ring.base + self.log.commit.write_count) // R - 1
        if last < first:
            return
        n = self.refill_rows // R
        run_start = int(torch.randint(first, max(first, last - n + 1) + 1, (1,), generator=rng))
        want = torch.arange(run_start, min(last, run_start + n - 1) + 1)
        with self.pool.lock:
            missing = want[self.pool.slots_of(want) < 0].tolist()
        if not missing:
            return
        self._refill_credit -= len(missing) * R
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, "zarrl-refill")
        version, gc_chunk = self._version(in_place), self.log.commit.gc_below // R
        read_only = self.chunks.read_only

        def refill():
            t0 = time.monotonic()
            try:  # may be rewritten before it is used: not recorded in the seal table
                decoded = list(zip(missing, self.chunks.load(missing, record=False)))
            except StaleRead:  # a reader the writer moved past: refill after a refresh
                return None, []
            if read_only:  # the writer may have recycled (deleted) them since our refresh
                gc_chunk_now = max(gc_chunk, self.log.latest().gc_below // R)
                decoded = [(c, a) for c, a in decoded if c >= gc_chunk_now]
            self._next_refill = time.monotonic() + 3 * (time.monotonic() - t0)
            return version, decoded

        self._refill = self._executor.submit(refill)

    def _version(self, in_place: bool) -> tuple:
        """Changes whenever committed chunks may have changed bytes (in-place writes, a new
        base or a reader's full refresh), which makes a pending refill stale."""
        c = self.log.commit
        return c.inplace_revision, c.base, in_place, self.ring.base

    def _install_refill(self, live_rows: int, in_place: bool) -> None:
        """Installs the chunks of a finished refill that are still uncached and not stale."""
        if self._refill is None or not self._refill.done():
            return
        future, self._refill = self._refill, None
        version, decoded = future.result()  # a corrupt chunk raises here, in the sampler
        if version != self._version(in_place) or in_place:
            return
        start, _ = self.ring.live_range(live_rows)
        R = self.pool.R
        with self.pool.lock:
            for c, arrays in decoded:
                if len(self.pool.dirty) >= self.pool.max_slots:
                    return  # every slot holds unflushed rows: nothing may be evicted
                if c >= start // R and int(self.pool.slots_of(torch.tensor([c]))[0]) < 0:
                    self.pool.install(c, arrays)

    def close(self) -> None:
        """Waits for a running refill and releases its thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
