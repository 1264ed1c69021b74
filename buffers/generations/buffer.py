"""``GenerationsBuffer``: the reader of a generations buffer, returning padded batches of whole
completions (the batch of ``docs/generations.md``), built without a loop over rows: the token
rows of the B completions are gathered in one read (from the RAM mirror of ``token_mirror.py``
when the buffer fits its budget, else from the token storage), then scattered into ``[B, L]``."""

from __future__ import annotations

import os
from typing import Any

import torch
from tensordict import TensorDict

from ..storage import ZarrStorage
from .layout import Facts, Tables, load_tables, open_root, read_facts, token_path
from .token_index import lazy_index, stores_index
from .token_mirror import TokenMirror, mirror_bytes_per_token

MIRROR_BYTES = 1 << 30
"""Default RAM budget of the token mirror (``GenerationsBuffer(mirror_bytes=...)``)."""


class GenerationsBuffer:
    """Read-only view of the committed imports of the buffer at ``path`` (``refresh()`` picks
    up later imports). ``storage``: the token ``ZarrStorage`` (one row per completion token;
    TorchRL's ``SliceSampler(slice_len=d, traj_key="completion")`` draws d-token windows from
    it), ``None`` while the buffer holds no import. Batches read the token leaves from a RAM
    mirror of them (``token_mirror.py``, 8-16 bytes a token, filled at the first read) while the
    buffer's tokens fit ``mirror_bytes``, else through the storage's chunk cache."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: torch.device | str = "cpu",
        mirror_bytes: int = MIRROR_BYTES,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.path = os.fspath(path)  # a local folder or a store URL (``stores.py``)
        self.device = torch.device(device)
        self.mirror_bytes = int(mirror_bytes)
        self._mirror: TokenMirror | None = None
        self.storage_options = storage_options
        self._root = open_root(self.path, "r", storage_options)
        facts = read_facts(self._root, self.path)
        if facts is None:
            raise FileNotFoundError(f"{self.path}: an empty group, not a generations buffer")
        self.facts: Facts = facts
        self._tokens: ZarrStorage | None = None
        self._indexed_rows: int | None = None  # rows the attached index leaves cover
        self._load()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        device: torch.device | str = "cpu",
        mirror_bytes: int = MIRROR_BYTES,
        storage_options: dict[str, Any] | None = None,
    ):
        """The buffer at ``path`` (as the constructor)."""
        return cls(path, device=device, mirror_bytes=mirror_bytes, storage_options=storage_options)

    def _load(self) -> None:
        self._tables: Tables = load_tables(self._root, self.path)
        t = self._tables
        if self._tokens is None and t.num_completions:
            self._tokens = ZarrStorage.open(
                token_path(self.path), mode="r", storage_options=self.storage_options
            )
        elif self._tokens is not None:
            self._tokens.refresh()
        self._indexed_rows = None
        if self._tokens is not None and len(self._tokens) < t.rows_end:
            raise RuntimeError(
                f"{self.path}/tokens holds {len(self._tokens)} rows, its imports count {t.rows_end}"
            )
        self._start = torch.from_numpy(t.start)
        self._length = torch.from_numpy(t.length)
        self._prompt = torch.from_numpy(t.prompt)
        self._group = torch.from_numpy(t.group)
        self._version = torch.from_numpy(t.policy_version)
        self._log_reward = torch.from_numpy(t.log_reward)
        self._terminated = torch.from_numpy(t.terminated)
        self._ptok = torch.from_numpy(t.prompt_tokens)
        self._poff = torch.from_numpy(t.prompt_offsets)
        groups, inverse, counts = torch.unique(self._group, return_inverse=True, return_counts=True)
        order = torch.argsort(inverse, stable=True)
        self._groups = groups  # [G] group ids
        self._group_counts = counts  # [G]
        self._group_members = order  # completions sorted by group
        self._group_first = torch.cumsum(counts, 0) - counts  # [G] offset into members

    def refresh(self) -> None:
        """Re-reads the import records (and the token storage's commit)."""
        self._root = open_root(self.path, "r", self.storage_options)
        self._load()

    @property
    def storage(self) -> ZarrStorage | None:
        """The token ``ZarrStorage`` (read-only), ``None`` while the buffer holds no import.
        Its rows carry ``completion``, ``position`` and ``next/done`` for TorchRL's samplers:
        stored by format version 1 and 2 buffers, derived from the imports' lengths for newer
        ones (``token_index.py``: 13 bytes a token of RAM, computed when a read first needs
        them, e.g. TorchRL's ``SliceSampler``; batches of whole completions never do)."""
        tokens = self._tokens
        if tokens is None or self._indexed_rows == len(tokens):
            return tokens
        if not stores_index(tokens.log.header.schema):
            t = self._tables
            tokens.attach_columns(lazy_index(t.start, t.length, len(tokens)))
        self._indexed_rows = len(tokens)
        return tokens

    def close(self) -> None:
        if self._tokens is not None:
            self._tokens.close()

    def __enter__(self) -> GenerationsBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ facts
    @property
    def vocab_size(self) -> int:
        return self.facts.vocab_size

    @property
    def eos_id(self) -> int:
        return self.facts.eos_id

    @property
    def max_new_tokens(self) -> int:
        """The length limit given at import, else the longest stored completion."""
        if self.facts.max_new_tokens is not None:
            return self.facts.max_new_tokens
        return int(self._length.max()) if len(self._length) else 0

    @property
    def mirrored_rows(self) -> int:
        """Token rows held in the RAM mirror (0 until a batch is read, and while the buffer's
        tokens exceed ``mirror_bytes``: batches are then read through the storage)."""
        return 0 if self._mirror is None else self._mirror.rows

    @property
    def num_prompts(self) -> int:
        return self._tables.num_prompts

    @property
    def num_completions(self) -> int:
        return self._tables.num_completions

    @property
    def num_tokens(self) -> int:
        return int(self._length.sum())

    @property
    def has_ref(self) -> bool:
        return bool(self._tables.has_ref)

    @property
    def imports(self) -> list[dict]:
        """The import records (files with their hash, ``xxh3_128`` or, before it, ``sha256``; ranges, time), oldest first."""
        return list(self._tables.records)

    @property
    def completion_prompt(self) -> torch.Tensor:
        """int64 ``[C]``: the prompt index of each completion."""
        return self._prompt

    @property
    def completion_length(self) -> torch.Tensor:
        """int64 ``[C]``: tokens per completion."""
        return self._length

    # --------------------------------------------------------------- reading
    def prompt_tokens(self, prompt_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens int64 [P, Lp], mask bool [P, Lp])`` left-padded with 0; ``Lp`` = the
        longest of these prompts."""
        idx = torch.as_tensor(prompt_index, dtype=torch.int64).reshape(-1)
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.num_prompts):
            raise IndexError(f"prompt index outside [0, {self.num_prompts})")
        begin, end = self._poff[idx].unsqueeze(-1), self._poff[idx + 1].unsqueeze(-1)
        P = len(idx)
        width = int((end - begin).max()) if P else 0
        src = end - width + torch.arange(width)  # [P, Lp] right-aligned: prompt i ends at end[i]
        mask = src >= begin
        tokens = torch.index_select(self._ptok, 0, src.clamp_(min=0).view(-1)).view(P, width)
        tokens = tokens.masked_fill_(~mask, 0)
        return tokens.to(self.device), mask.to(self.device)

    def completions(self, indices: torch.Tensor) -> TensorDict:
        """The batch of completions ``indices`` (int ``[B]``), in that order (see the module
        docstring of ``zarrl.buffers.generations`` for its keys and shapes)."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        C = self.num_completions
        if idx.numel() and (idx.min() < 0 or idx.max() >= C):
            raise IndexError(f"completion index outside [0, {C})")
        if not idx.numel():
            raise ValueError("completions() needs at least one index")
        lengths = self._length[idx]
        width = int(lengths.max())
        B = len(idx)
        first = torch.cumsum(lengths, 0) - lengths  # of each completion in the gathered rows
        T = int(first[-1] + lengths[-1])
        offset = torch.arange(T)
        # the token rows, completion after completion, and where each lands in the flattened
        # [B, L] batch (completion * L + position): one repeat, two offsets
        rows = torch.repeat_interleave(self._start[idx] - first, lengths, output_size=T) + offset
        slot = torch.repeat_interleave(torch.arange(B) * width - first, lengths, output_size=T)
        slot += offset
        leaves = self._read_tokens(rows)
        mask = torch.arange(width) < lengths.unsqueeze(-1)

        def padded(flat: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            out = torch.zeros(B * width, dtype=dtype)
            return out.index_copy_(0, slot, flat.to(dtype)).view(B, width)

        prompt = self._prompt[idx]
        ptokens, pmask = self.prompt_tokens(prompt)
        batch = {
            ("tokens", "prompt"): ptokens,
            ("masks", "prompt"): pmask,
            ("tokens", "response"): padded(leaves["action"], torch.int64),
            ("masks", "response"): mask,
            ("log_probs", "behaviour"): padded(leaves["sample_log_prob"], torch.float32),
            "log_reward": self._log_reward[idx],
            "prompt": prompt,
            "group_id": self._group[idx],
            "policy_version": self._version[idx],
            "terminated": self._terminated[idx],
            "completion": idx,
        }
        if self.has_ref:
            batch[("log_probs", "ref")] = padded(leaves["ref_log_prob"], torch.float32)
        td = TensorDict(batch, batch_size=[B])
        return td.to(self.device) if self.device.type != "cpu" else td

    def _read_tokens(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{leaf: [N]}`` of the leaves a batch reads, at token rows ``rows`` (int64 ``[N]``):
        from the mirror when the buffer fits ``mirror_bytes`` (filled, or extended to rows of
        later imports, here), else from the storage."""
        keys = ["action", "sample_log_prob"] + (["ref_log_prob"] if self.has_ref else [])
        end = self._tables.rows_end
        action_bytes = self._tokens.log.header.schema["action"].nbytes
        if end * mirror_bytes_per_token(self.has_ref, action_bytes) > self.mirror_bytes:
            return self._tokens.read(rows, keys)
        if self._mirror is None or self._mirror.keys != keys:
            self._mirror = TokenMirror(keys)
        self._mirror.extend_to(self._tokens, end)
        return self._mirror.read(rows)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TensorDict:
        """``batch_size`` whole completions drawn uniformly with replacement."""
        if not self.num_completions:
            raise RuntimeError(f"{self.path} holds no completions to sample")
        idx = torch.randint(self.num_completions, (int(batch_size),), generator=generator)
        return self.completions(idx)

    def sample_groups(
        self, num_groups: int, group_size: int, generator: torch.Generator | None = None
    ) -> TensorDict:
        """``num_groups * group_size`` completions, group-major: ``num_groups`` distinct groups
        (``group_id``, by default the prompt) drawn uniformly among those holding at least
        ``group_size`` completions, and ``group_size`` distinct completions of each (as
        TorchRL's ``PromptGroupSampler``), for per-prompt baselines."""
        eligible = torch.nonzero(self._group_counts >= group_size).flatten()
        if len(eligible) < num_groups:
            raise ValueError(
                f"{len(eligible)} groups hold at least {group_size} completions; "
                f"{num_groups} were asked for"
            )
        pick = eligible[torch.randperm(len(eligible), generator=generator)[:num_groups]]
        counts = self._group_counts[pick]
        width = int(counts.max())
        keys = torch.rand(num_groups, width, generator=generator)
        keys[torch.arange(width) >= counts.unsqueeze(-1)] = 2.0  # beyond the group: last
        within = torch.argsort(keys, dim=1)[:, :group_size]  # a random subset per group
        members = self._group_members[self._group_first[pick].unsqueeze(-1) + within]
        return self.completions(members.reshape(-1))

    def __len__(self) -> int:
        return self.num_completions

    def __repr__(self) -> str:
        return (
            f"GenerationsBuffer({self.path!r}, completions={self.num_completions}, "
            f"prompts={self.num_prompts}, tokens={self.num_tokens}, vocab_size={self.vocab_size}, "
            f"eos_id={self.eos_id}, has_ref={self.has_ref})"
        )
