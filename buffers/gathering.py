"""Reads of a ``ZarrStorage``: leaves gathered at ring positions (index columns from RAM, other
leaves through the hot tier, checked against recycling for readers), and the TensorDicts,
tensors and lazy views built from them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

from . import pytrees
from .chunk_io import StaleRead
from .commit_log import CommitLog
from .format import key_path
from .hot_tier import HotTier
from .index_columns import IndexColumns
from .indexing import apply_reindex, rows_and_reindex
from .lazy_view import lazy_tensordict
from .reader import Reader
from .ring import Ring
from .row_data import TENSOR_KEY, nested_td


class Gatherer:
    """Reads rows of one storage by ring position.

    Args:
        ring, log, hot, index, reader: the storage's parts.
        read_only: a reader (rows it loads are checked against the writer's recycling).
        device: where the returned tensors go.
    """

    def __init__(
        self,
        ring: Ring,
        log: CommitLog,
        hot: HotTier,
        index: IndexColumns,
        reader: Reader,
        read_only: bool,
        device: torch.device,
    ) -> None:
        self.ring, self.log, self.hot, self.index, self.reader = ring, log, hot, index, reader
        self.read_only, self.device = read_only, device

    def gather(self, rows: torch.Tensor, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Leaves ``keys`` (default: all) at ring positions ``rows`` (int64 ``[N]``) as
        ``{path: [N, *tail, *shape]}`` on the device; raises ``StaleRead`` when a reader loaded
        chunks the writer has recycled since its last refresh."""
        keys = [*self.log.header.schema, *self.index.attached] if keys is None else keys
        out = {}
        big = [k for k in keys if k not in self.index]
        if big:
            phys = self.ring.phys(rows)
            got, loaded = self.hot.gather(phys, big)
            if self.read_only and loaded:
                fresh = torch.isin(phys // self.log.header.chunk_rows, torch.tensor(loaded))
                self.reader.check_not_stale(int(phys[fresh].min()))
            out.update(got)
        for k in keys:
            if k in self.index:
                out[k] = self.index.gather(k, rows)
        if all(out[k].device == self.device for k in keys):
            return {k: out[k] for k in keys}
        return {k: out[k].to(self.device, non_blocking=True) for k in keys}

    def batch_of(self, n: int) -> list[int]:
        """Batch size of ``n`` rows as returned: ``[n, *tail, *item_batch]``."""
        return [n, *self.log.header.tail, *self.log.item_batch]

    def to_td(self, leaves: Mapping[str, torch.Tensor], batch: list[int]) -> TensorDictBase:
        """The TensorDict of gathered ``leaves`` with batch size ``batch``."""
        return nested_td(leaves, torch.Size(batch), self.device)

    def to_data(self, leaves: Mapping[str, torch.Tensor], batch: list[int]) -> Any:
        """What ``get`` returns for gathered ``leaves``: the tensor of a tensor store (its
        batch dims as ``batch``), else ``to_td``."""
        if self.log.header.tensor_root:
            return TensorDict({TENSOR_KEY: leaves[TENSOR_KEY]}, batch_size=batch)[TENSOR_KEY]
        return self.to_td(leaves, batch)

    def is_full_view(self, index: Any, ndim: int) -> bool:
        """Whether ``index`` is ``:`` (or ``(:, :)`` up to ``ndim``) of a TensorDict store."""
        if isinstance(index, tuple) and 1 <= len(index) <= ndim:
            if any(not (isinstance(i, slice) and i == slice(None)) for i in index):
                return False
            index = index[0]
        return (
            isinstance(index, slice)
            and index == slice(None)
            and not self.log.header.tensor_root
            and self.log.pytree is None
        )

    def lazy(self, rows: torch.Tensor | None, n: int, read: Callable) -> TensorDictBase:
        """The ``n`` rows at ring positions ``rows`` (``None``: the first ``n``, the whole
        buffer) with index columns gathered at once and the other leaves read by
        ``read(rows, [path])`` (under the storage's lock) when first looked up."""
        if rows is None:
            eager = {k: self.index.head(k, n).to(self.device) for k in self.index}
        else:
            eager = {k: self.index.gather(k, rows).to(self.device) for k in self.index}

        def loader(path: str) -> Callable[[], torch.Tensor]:  # positions built only if used
            return lambda: read(torch.arange(n) if rows is None else rows, [path])[path]

        lazy = {k: loader(k) for k in self.log.header.schema if k not in self.index}
        return lazy_tensordict(eager, lazy, self.batch_of(n), self.device)

    def get(self, index: Any, n0: int, refresh: Callable[[], Any]) -> Any:
        """What ``ZarrStorage.get(index)`` returns for ``n0`` live rows along dim 0 (not the
        whole-buffer view): a TensorDict, a tensor or the stored pytree, indexed as TorchRL
        indexes a ``TensorStorage``. A reader whose chunks were recycled under it adopts the
        newest commit (``refresh()``) and reads the same positions again, up to 3 times."""
        rows, reindex = rows_and_reindex(index, n0)
        for attempt in range(4):
            try:
                leaves = self.gather(rows)
                break
            except StaleRead:  # readers only: adopt the newest commit, read the same positions
                if attempt == 3:
                    raise
                refresh()
        td = apply_reindex(self.to_data(leaves, self.batch_of(rows.numel())), reindex)
        if self.log.pytree is not None:  # the stored pytree, each leaf indexed as the TensorDict
            flat = {key_path(k): v for k, v in td.items(include_nested=True, leaves_only=True)}
            return pytrees.unflatten(flat, self.log.pytree)
        return td

    def lookup(self, index: Any, n0: int, ndim: int, read: Callable) -> TensorDictBase | None:
        """``storage[index]`` of a writer's TensorDict store (``n0`` live rows along dim 0, ``ndim``
        batch dims counted by the capacity) as
        a ``lazy`` view (index columns gathered at once); ``None`` where ``get`` serves it
        (no index columns, a tensor or pytree store, the whole buffer, a multi-key index)."""
        header = self.log.header
        if (
            header is None
            or header.tensor_root
            or self.log.pytree is not None
            or self.read_only
            or self.is_full_view(index, ndim)
            or not self.index
        ):
            return None
        rows, reindex = rows_and_reindex(index, n0)
        if reindex is not None and not (isinstance(reindex[0], str) and len(reindex[1]) == 1):
            return None
        return self.lazy(rows, rows.numel(), read)
