"""A bounded pool of decoded chunks (the hot tier), addressed by physical chunk id.

The pool holds ``n_slots`` chunk slots of ``chunk_rows`` rows for every stored leaf, in one
contiguous tensor per leaf (``[n_slots * chunk_rows, *tail, *leaf_shape]``) on ``device``, so
gathering a batch is one vectorized index per leaf. A chunk id ``c`` maps to a slot through a
direct-mapped table of size ``map_size`` (``c % map_size``), which must exceed the span of live
chunks. Dirty chunks (staged writes not yet flushed) are pinned; clean ones are evicted by a
clock sweep over reference bits set at every gather.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import numpy as np
import torch

from .format import LeafSpec, torch_dtype

LOAD_FRACTION = 16


def load_group(n_slots: int) -> int:
    """``ChunkPool.load_group`` of a pool of ``n_slots`` slots."""
    return max(1, n_slots // LOAD_FRACTION)


# decodes a list of chunk ids -> one {leaf: rows} mapping (or None = zeros) per chunk
Loader = Callable[[list], list]


def unique_chunks(chunks: torch.Tensor) -> torch.Tensor:
    """``torch.unique(chunks)`` (int64 [N]); a sorted input (the chunks of an append) takes
    ``unique_consecutive``, linear where ``unique`` sorts (0.25 s for 10^6 rows on 2 cores)."""
    if chunks.numel() > 1 and bool((chunks[1:] >= chunks[:-1]).all()):
        return torch.unique_consecutive(chunks)
    return torch.unique(chunks)


class ChunkPool:
    """Decoded chunks in RAM (or on a GPU): ``[n_slots * chunk_rows, ...]`` per leaf."""

    def __init__(
        self,
        specs: Mapping[str, LeafSpec],
        tail: tuple[int, ...],
        chunk_rows: int,
        n_slots: int,
        map_size: int,
        device: torch.device,
        max_slots: int | None = None,
    ) -> None:
        self.specs = dict(specs)
        self.tail = tuple(tail)
        self.R = int(chunk_rows)
        self.device = device
        self.lock = threading.RLock()
        self.n_slots = 0
        self.data: dict[str, torch.Tensor] = {
            k: torch.zeros((0, *self.tail, *s.shape), dtype=torch_dtype(s.dtype), device=device)
            for k, s in self.specs.items()
        }
        self.slot_chunk = torch.zeros(0, dtype=torch.long)  # chunk held by each slot, -1 = free
        self.referenced = torch.zeros(0, dtype=torch.bool)
        self.dirty: set[int] = set()
        self.version = 0  # bumped whenever the set of resident chunks changes
        self._hand = 0
        self.map_size = 0
        self._map_slot = torch.zeros(0, dtype=torch.long)
        self._map_chunk = torch.zeros(0, dtype=torch.long)
        self.max_slots = max(n_slots, max_slots or n_slots)
        self.grow(n_slots)
        self.remap(map_size)

    # ------------------------------------------------------------------ sizing
    @property
    def load_group(self) -> int:
        """Chunks decoded at once outside the pool (a group of misses, or one background
        refill run): ``1 / LOAD_FRACTION`` of the pool, at least one."""
        return load_group(self.max_slots)

    @property
    def chunk_nbytes(self) -> int:
        tail = int(np.prod(self.tail, dtype=np.int64))
        return self.R * tail * sum(s.nbytes for s in self.specs.values())

    def grow(self, n_slots: int) -> None:
        """Enlarges the pool to ``n_slots`` slots, keeping resident chunks."""
        with self.lock:
            self.max_slots = max(self.max_slots, n_slots)
            if n_slots <= self.n_slots:
                return
            # torch.empty: a slot's rows are written (decoded chunk or zeros) when it is
            # installed, so fresh slots cost address space only until then
            for k, t in self.data.items():
                grown = torch.empty(
                    (n_slots * self.R, *t.shape[1:]), dtype=t.dtype, device=t.device
                )
                if len(t):
                    grown[: len(t)].copy_(t)
                self.data[k] = grown
            self.slot_chunk = torch.cat(
                [self.slot_chunk, torch.full((n_slots - self.n_slots,), -1, dtype=torch.long)]
            )
            self.referenced = torch.cat(
                [self.referenced, torch.zeros(n_slots - self.n_slots, dtype=torch.bool)]
            )
            self.n_slots = n_slots

    def remap(self, map_size: int) -> None:
        """Rebuilds the chunk -> slot table with ``map_size`` entries."""
        with self.lock:
            self.map_size = int(map_size)
            self._map_slot = torch.full((self.map_size,), -1, dtype=torch.long)
            self._map_chunk = torch.full((self.map_size,), -1, dtype=torch.long)
            live = (self.slot_chunk >= 0).nonzero().squeeze(-1)
            chunks = self.slot_chunk[live]
            self._map_slot[chunks % self.map_size] = live
            self._map_chunk[chunks % self.map_size] = chunks

    # ----------------------------------------------------------------- lookups
    def slots_of(self, chunks: torch.Tensor) -> torch.Tensor:
        """Slot of each chunk id, -1 where not resident. ``chunks``: int64 [N] (CPU)."""
        h = chunks % self.map_size
        slots = torch.index_select(self._map_slot, 0, h)
        return slots.masked_fill_(torch.index_select(self._map_chunk, 0, h) != chunks, -1)

    def _resident_slots(self, chunks: list[int]) -> list[int] | None:
        """Slots of a few resident ``chunks`` (an append's one or two) by scalar lookups,
        cheaper than ``slots_of`` for them; ``None`` if any is not resident."""
        slots = []
        for c in chunks:
            h = c % self.map_size
            if int(self._map_chunk[h]) != c:
                return None
            slots.append(int(self._map_slot[h]))
        return slots

    def resident(self) -> torch.Tensor:
        return self.slot_chunk[self.slot_chunk >= 0]

    def pool_rows(self, phys: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return slots * self.R + phys % self.R

    # ------------------------------------------------------------- residency
    def _free_slot(self, protect: frozenset = frozenset()) -> int:
        free = (self.slot_chunk < 0).nonzero()
        if free.numel():
            return int(free[0])
        if self.n_slots < self.max_slots:  # allocate lazily, up to the budget
            first_new = self.n_slots
            self.grow(min(self.max_slots, max(2 * self.n_slots, 4)))
            return first_new
        for _ in range(2 * self.n_slots):
            s = self._hand
            self._hand = (self._hand + 1) % self.n_slots
            c = int(self.slot_chunk[s])
            if c in self.dirty or c in protect:
                continue
            if self.referenced[s]:
                self.referenced[s] = False
                continue
            self.evict(c)
            return s
        raise MemoryError(
            f"chunk cache full: all {self.n_slots} slots hold unflushed chunks; flush() first "
            "or raise the cache size"
        )

    def evict(self, chunk: int) -> None:
        with self.lock:
            h = chunk % self.map_size
            if int(self._map_chunk[h]) != chunk:
                return
            s = int(self._map_slot[h])
            self._map_chunk[h] = -1
            self._map_slot[h] = -1
            self.slot_chunk[s] = -1
            self.referenced[s] = False
            self.dirty.discard(chunk)
            self.version += 1

    def install(
        self,
        chunk: int,
        arrays: Mapping[str, np.ndarray] | None,
        protect: frozenset = frozenset(),
        zero: bool = True,
    ) -> int:
        """Places a decoded chunk (``None`` = all zeros; with ``zero=False``: rows left as they
        are, for a chunk the caller overwrites whole at once) in a slot, never evicting a chunk
        in ``protect``; returns the slot."""
        with self.lock:
            slot = int(self.slots_of(torch.tensor([chunk]))[0])
            if slot < 0:
                h = chunk % self.map_size
                occupant = int(self._map_chunk[h])
                if occupant >= 0:
                    # Chunks sharing an entry are >= map_size apart and the map covers the live
                    # span, so an older occupant is dead (its rows were overwritten) and only
                    # lingers until garbage collection: drop it from the cache.
                    if occupant in protect or (occupant > chunk and occupant in self.dirty):
                        raise RuntimeError(
                            f"chunk map collision ({chunk} vs {occupant}): the live span "
                            "exceeds the map size"
                        )
                    self.evict(occupant)
                slot = self._free_slot(protect)
                self._map_chunk[h] = chunk
                self._map_slot[h] = slot
                self.slot_chunk[slot] = chunk
                self.version += 1
            rows = slice(slot * self.R, (slot + 1) * self.R)
            for k, t in self.data.items():
                if arrays is None:
                    if zero:
                        t[rows].zero_()
                else:
                    src = torch.from_numpy(np.ascontiguousarray(arrays[k]))
                    n = src.shape[0]
                    t[rows][:n].copy_(src, non_blocking=False)
                    if n < self.R:
                        t[rows][n:].zero_()
            self.referenced[slot] = True
            return slot

    def ensure(
        self, chunks: torch.Tensor, loader: Loader, overwritten: frozenset = frozenset()
    ) -> torch.Tensor:
        """Slots for ``chunks`` (int64 [N]), loading the missing ones with ``loader``; a missing
        chunk in ``overwritten`` (every row of it about to be written) that the loader finds
        absent is not zeroed first."""
        with self.lock:
            slots = self.slots_of(chunks)
            missing = (slots < 0).nonzero().squeeze(-1)
            if missing.numel():
                need = unique_chunks(chunks[missing])
                protect = frozenset(unique_chunks(chunks).tolist())
                need = need.tolist()
                step = self.load_group
                for i in range(0, len(need), step):  # a group's reads run concurrently
                    group = need[i : i + step]
                    for c, arrays in zip(group, loader(group)):
                        self.install(c, arrays, protect, zero=c not in overwritten)
                slots = self.slots_of(chunks)
            assert bool((slots >= 0).all()), "chunk pool lost a chunk it was asked to keep"
            return slots

    # ------------------------------------------------------------ read/write
    def gather(self, phys: torch.Tensor, loader: Loader, keys=None) -> dict[str, torch.Tensor]:
        """Rows at physical positions ``phys`` (int64 [N]) for ``keys`` -> {key: [N, ...]}.

        A read touching more chunks than the free slots is served in groups of chunks."""
        keys = list(keys or self.data)
        with self.lock:
            chunks = phys // self.R
            slots = self.slots_of(chunks)
            if bool((slots >= 0).all()):  # hot path: everything cached
                self.referenced.index_fill_(0, slots, True)
                rows = self.pool_rows(phys, slots).to(self.device)
                return {k: torch.index_select(self.data[k], 0, rows) for k in keys}
            uniq = unique_chunks(chunks)
            room = self.max_slots - len(self.dirty)
            if uniq.numel() <= room:
                return self._gather_resident(phys, chunks, loader, keys)
            out = {
                k: torch.empty(
                    (phys.numel(), *self.data[k].shape[1:]),
                    dtype=self.data[k].dtype,
                    device=self.device,
                )
                for k in keys
            }
            for group in uniq.split(max(1, room)):
                mask = torch.isin(chunks, group)
                part = self._gather_resident(phys[mask], chunks[mask], loader, keys)
                dev_mask = mask.to(self.device)
                for k in keys:
                    out[k][dev_mask] = part[k]
            return out

    def _gather_resident(self, phys, chunks, loader, keys):
        slots = self.ensure(chunks, loader)
        self.referenced.index_fill_(0, slots, True)
        rows = self.pool_rows(phys, slots).to(self.device)
        return {k: torch.index_select(self.data[k], 0, rows) for k in keys}

    def write(
        self,
        phys: torch.Tensor,
        values: Mapping[str, torch.Tensor],
        loader: Loader,
        run: bool = False,
    ):
        """Stages rows at ``phys`` (pinning their chunks as dirty until ``mark_clean``);
        ``run``: ``phys`` is a run of consecutive rows (``phys[0] + arange(n)``, appends)."""
        with self.lock:
            if run:  # one slice copy per chunk, several times cheaper than an indexed write
                n, first = phys.numel(), int(phys[0])
                # the chunks of a run, without a per-row division nor lookup
                touched = list(range(first // self.R, (first + n - 1) // self.R + 1))
                starts = self._resident_slots(touched) if len(touched) <= 4 else None
                if starts is None:  # a chunk to install: the vectorized path
                    whole = range(-(first // -self.R), (first + n) // self.R)  # fully covered
                    starts = self.ensure(torch.tensor(touched), loader, frozenset(whole)).tolist()
                self.dirty.update(touched)
                for chunk, slot in zip(touched, starts):
                    lo, hi = max(first, chunk * self.R), min(first + n, (chunk + 1) * self.R)
                    dst = slice(slot * self.R + lo % self.R, slot * self.R + (hi - 1) % self.R + 1)
                    for k, t in self.data.items():
                        t[dst].copy_(values[k][lo - first : hi - first])
                return
            chunks = phys // self.R
            slots = self.ensure(chunks, loader)
            self.dirty.update(unique_chunks(chunks).tolist())
            rows = self.pool_rows(phys, slots).to(self.device)
            for k, t in self.data.items():
                t[rows] = values[k].to(t.device)

    def chunk_arrays(self, chunk: int) -> dict[str, np.ndarray]:
        """Host copy of a resident chunk, for writing to the store."""
        with self.lock:
            slot = int(self.slots_of(torch.tensor([chunk]))[0])
            rows = slice(slot * self.R, (slot + 1) * self.R)
            return {k: t[rows].cpu().numpy() for k, t in self.data.items()}

    def mark_clean(self, chunks) -> None:
        with self.lock:
            self.dirty.difference_update(chunks)

    def drop_clean(self) -> None:
        """Evicts every chunk that has no staged writes (readers, after a refresh)."""
        with self.lock:
            for c in self.resident().tolist():
                if c not in self.dirty:
                    self.evict(c)
