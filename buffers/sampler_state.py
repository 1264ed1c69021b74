"""A replay buffer's sampler state stored with its store (``<store>/.zarrl_sampler``).

What is stored is the sampler's own ``state_dict()`` (TorchRL's API): tensors and segment trees
(``PrioritizedSampler`` / ``PrioritizedSliceSampler`` priorities) become zarr arrays of the
``.zarrl_sampler`` group, scalars and the structure a JSON document in its attributes, with the
sampler's class and the commit it was saved at. Restoring calls ``load_state_dict`` with the
same structure, the trees rebuilt from the target sampler's own (same capacity). Leaf names
never start with ``.``, so the group cannot collide with a stored leaf.

Nothing is unpickled: a hostile store can only give arrays and JSON, both checked (type,
dtype, size bounded by the sampler's own state) before use.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import zarr

from ._compat_torchrl import buffer_lock, buffer_sampler
from .errors import StoreFormatError

if TYPE_CHECKING:
    from .commit_log import CommitLog
    from .guard import StoreGuard
    from .ring import Ring

GROUP = ".zarrl_sampler"
ATTR = "zarrl_sampler"
_SCALARS = (type(None), bool, int, float, str)


def sampler_name(sampler: Any) -> str:
    return f"{type(sampler).__module__}.{type(sampler).__qualname__}"


def _is_segment_tree(value: Any) -> bool:
    return all(hasattr(value, a) for a in ("query", "update", "size", "capacity"))


def encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """JSON for ``value`` (a ``state_dict`` or part of it); tensors and segment trees are
    appended to ``arrays``. Raises ``TypeError`` for anything else."""
    if isinstance(value, torch.Tensor):
        name = f"a{len(arrays)}"
        arrays[name] = value.detach().cpu().numpy()
        return {"tensor": name}
    if _is_segment_tree(value):
        name = f"a{len(arrays)}"
        arrays[name] = value[torch.arange(value.size)].numpy()
        return {"segment_tree": name}
    if isinstance(value, float) and not np.isfinite(value):
        return {"float": repr(value)}
    if isinstance(value, _SCALARS):
        return {"value": value}
    if isinstance(value, (tuple, list)):
        return {type(value).__name__: [encode(v, arrays) for v in value]}
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {"dict": [[k, encode(v, arrays)] for k, v in value.items()]}
    raise TypeError(f"cannot store a sampler state value of type {type(value).__name__}")


def decode(doc: Any, arrays: Mapping[str, np.ndarray], template: Any) -> Any:
    """The value ``encode`` described; segment trees are copies of ``template``'s tree at the
    same place, filled with the stored leaf values. Raises ``ValueError`` on any mismatch."""
    if not isinstance(doc, Mapping) or len(doc) != 1:
        raise ValueError(f"malformed entry {doc!r}")
    ((kind, body),) = doc.items()
    if kind == "value":
        if not isinstance(body, _SCALARS):
            raise ValueError(f"malformed value {body!r}")
        return body
    if kind == "float":
        if body not in ("inf", "-inf", "nan"):
            raise ValueError(f"malformed float {body!r}")
        return float(body)
    if kind == "tensor":
        return torch.from_numpy(np.array(arrays[body]))
    if kind == "segment_tree":
        if not _is_segment_tree(template):
            raise ValueError("a segment tree where the sampler has none")
        values = arrays[body]
        if values.shape != (template.size,):
            raise ValueError(f"{values.shape[0]} priorities for a tree of {template.size}")
        tree = copy.deepcopy(template)
        tree.update(torch.arange(template.size), torch.from_numpy(np.array(values)))
        return tree
    if kind in ("tuple", "list") and isinstance(body, list):
        subs = template if isinstance(template, (tuple, list)) else ()
        out = [decode(d, arrays, subs[i] if i < len(subs) else None) for i, d in enumerate(body)]
        return tuple(out) if kind == "tuple" else out
    if kind == "dict" and isinstance(body, list):
        subs = template if isinstance(template, Mapping) else {}
        out = OrderedDict()
        for item in body:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise ValueError(f"malformed dict item {item!r}")
            out[item[0]] = decode(item[1], arrays, subs.get(item[0]))
        return out
    raise ValueError(f"unknown entry kind {kind!r}")


def fingerprint(doc: Any, arrays: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.blake2b(repr(doc).encode(), digest_size=16)
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(str(arrays[name].dtype).encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def save(group: zarr.Group, sampler: Any, commit: Mapping) -> str | None:
    """Writes ``sampler.state_dict()`` into ``group``'s ``.zarrl_sampler`` (arrays first, the
    describing attributes last); returns its fingerprint, or ``None`` if the state is empty
    or holds something that cannot be stored (it is then not saved)."""
    arrays: dict[str, np.ndarray] = {}
    state = sampler.state_dict()
    if not state:  # e.g. RandomSampler: nothing to keep (and another sampler's state stays)
        return None
    try:
        doc = encode(state, arrays)
    except TypeError:
        return None
    sub = group.require_group(GROUP)
    for name, values in arrays.items():
        chunks = (max(1, min(values.shape[0], 2**20)), *values.shape[1:]) if values.ndim else ()
        array = sub.create_array(
            name, shape=values.shape, dtype=values.dtype, chunks=chunks, overwrite=True
        )
        array[...] = values
    attrs = {
        "sampler": sampler_name(sampler),
        "state": doc,
        "arrays": {k: [str(v.dtype), list(v.shape)] for k, v in arrays.items()},
        "base": int(commit["base"]),
        "write_count": int(commit["write_count"]),
    }
    sub.attrs.put({ATTR: attrs})
    return fingerprint(doc, arrays)


def load(group: zarr.Group, sampler: Any, where: str, rows: int) -> dict | None:
    """Restores ``sampler`` from ``group``'s ``.zarrl_sampler`` when it was saved by a sampler
    of the same class; returns the saved attributes (``base``, ``write_count``: the commit it
    matches) or ``None`` when there is nothing for this sampler. A malformed state raises
    ``StoreFormatError`` naming the group and nothing is loaded. ``rows``: the storage's row
    capacity, which with the sampler's own state bounds what may be read."""
    try:
        sub = group[GROUP]
    except KeyError:
        return None
    meta = sub.attrs.asdict().get(ATTR)
    if not isinstance(meta, Mapping) or meta.get("sampler") != sampler_name(sampler):
        return None
    file = f"{where}/{GROUP}"
    template = sampler.state_dict()
    bound = _elements(template) + 2 * rows
    try:
        described = meta["arrays"]
        arrays = {}
        for name, (dtype, shape) in described.items():
            if not all(isinstance(d, int) and d >= 0 for d in shape) or np.prod(shape) > bound:
                raise ValueError(f"array {name!r} of shape {shape} is larger than the sampler")
            array = sub[name]
            if str(array.dtype) != dtype or list(array.shape) != list(shape):
                raise ValueError(f"array {name!r} is {array.dtype}{list(array.shape)}")
            arrays[name] = array[...]
        for key in ("base", "write_count"):
            if type(meta.get(key)) is not int or meta[key] < 0:
                raise ValueError(f"{key} = {meta.get(key)!r}")
        state = decode(meta["state"], arrays, template)
        sampler.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as err:
        raise StoreFormatError(
            f"{file}/zarr.json: the stored state of {meta.get('sampler')} is invalid: {err}; "
            "nothing was loaded"
        ) from None
    return dict(meta)


def _elements(template: Any) -> int:
    """An upper bound on the elements a stored state of this sampler may hold."""
    if isinstance(template, torch.Tensor):
        return template.numel()
    if _is_segment_tree(template):
        return int(template.size)
    if isinstance(template, Mapping):
        return sum(_elements(v) for v in template.values())
    if isinstance(template, (tuple, list)):
        return sum(_elements(v) for v in template)
    return 0


class SamplerStates:
    """The sampler states one storage saved or loaded: a fingerprint per sampler (a state is
    saved again only when it changed) and the buffer lock each sampler is saved under."""

    def __init__(self) -> None:
        self._saved: dict[int, str] = {}  # id(sampler) -> fingerprint of its last save or load
        self._locks: dict[int, Any] = {}  # id(sampler) -> the lock of its buffer

    def save(self, group: zarr.Group, sampler: Any, commit: Mapping) -> bool:
        """``save`` under the sampler's buffer lock; returns whether it was saved."""
        with self._locks.get(id(sampler)) or contextlib.nullcontext():
            saved = save(group, sampler, commit)
        if saved is not None:
            self._saved[id(sampler)] = saved
        return saved is not None

    def load(self, group: zarr.Group, sampler: Any, where: str, ring: Any) -> bool:
        """Restores ``sampler`` from ``group`` (``load``) and announces to it the ring positions
        of the rows appended after the state was saved (``sampler.extend``: new rows get the
        default priority). ``ring``: the storage's ``Ring`` (``buffers/ring.py``). Returns
        whether a state was loaded."""
        meta = load(group, sampler, where, ring.capacity or ring.write_count)
        if meta is None:
            return False
        if meta["base"] == ring.base and meta["write_count"] < ring.write_count:
            start = ring.live_start(ring.base, ring.write_count)
            start = max(start, ring.base + meta["write_count"])
            missed = ring.position(torch.arange(start, ring.end))
            if missed.numel() and hasattr(sampler, "extend"):
                sampler.extend(missed)
        self.loaded(sampler)
        return True

    def loaded(self, sampler: Any) -> None:
        """``sampler`` holds the stored state now (its current state is the saved one)."""
        arrays: dict = {}
        doc = encode(sampler.state_dict(), arrays)
        self._saved[id(sampler)] = fingerprint(doc, arrays)

    def save_changed(
        self, buffers: list, sampler_of: Callable, lock_of: Callable, save: Callable
    ) -> None:
        """``save(sampler)`` for the first of ``buffers`` whose sampler (``sampler_of``) has a
        state that changed since it was saved or loaded, under its buffer's lock
        (``lock_of``); one sampler per store."""
        for buffer in buffers:
            sampler = sampler_of(buffer)
            if sampler is None:
                continue
            with lock_of(buffer) or contextlib.nullcontext():
                arrays: dict = {}
                try:
                    doc = encode(sampler.state_dict(), arrays)
                except TypeError:
                    continue
                if self._saved.get(id(sampler)) == fingerprint(doc, arrays):
                    return
                self._locks[id(sampler)] = lock_of(buffer)
                save(sampler)
            return


class StoreSamplers:
    """The sampler states kept with one store: saved after committing the rows they cover,
    loaded with the rows appended since announced, and saved for the attached buffers' samplers
    whose state changed (``SamplerStates``).

    Args:
        log, guard, ring: the storage's commit log, guard and ring.
        commit: commits every staged row (the storage's flush, without the samplers).
    """

    def __init__(
        self, log: CommitLog, guard: StoreGuard, ring: Ring, commit: Callable[[], None]
    ) -> None:
        self.log, self.guard, self.ring, self.commit = log, guard, ring, commit
        self.states = SamplerStates()

    def save(self, sampler: Any) -> bool:
        """Commits the staged rows, then stores ``sampler.state_dict()`` at that commit; returns
        whether it was saved (a state holding values other than tensors, trees and scalars is
        not)."""
        self.guard.check_writable()
        with self.guard.lock, self.guard.naming():
            self.commit()
            commit = self.log.commit.to_json()
        with self.guard.naming():
            return self.states.save(self.log.group, sampler, commit)

    def load(self, sampler: Any) -> bool:
        """Restores ``sampler`` from the state stored by a sampler of the same class (rows
        appended after it announced to it); returns whether a state was loaded."""
        if self.log.header is None:
            return False
        return self.states.load(self.log.group, sampler, self.guard.where, self.ring)

    def save_attached(self, buffers: list) -> None:
        """``save`` for the first of ``buffers`` whose sampler's state changed since it was
        last saved or loaded (one sampler per store); nothing for a read-only, closed or empty
        store."""
        if self.guard.read_only or self.guard.closed or self.log.header is None:
            return
        self.states.save_changed(buffers, buffer_sampler, buffer_lock, self.save)
