"""On-disk layout of a generations buffer: one Zarr v3 group.

```
<buffer>/zarr.json        attributes["zarrl_generations"] = the buffer facts (FACTS_ATTR)
<buffer>/tokens/          a ZarrStorage: one row per completion token (leaves in LEAVES)
<buffer>/imports/<id>/    one group per import: its new prompts and its completions' table;
                          attributes["zarrl_generations_import"] = its record (the commit point)
```

An import is visible once its record is written (one atomic ``zarr.json`` write, after its
token rows are committed in ``tokens/`` and its arrays are written): a failed or killed import
leaves no record, so readers never see its prompts nor its rows. Imports are records of their
own, never a shared counter rewritten by each, so several writers can add records later.
The group lives in a local folder or behind any store URL ``ZarrStorage`` accepts (``s3://``,
``memory://``, ``file://``; ``stores.py``); on an object store the record's put is awaited last.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr

from .. import _compat_zarr as zarr_compat
from ..array_layout import build_arrays
from ..chunk_codec import ChunkCodec
from ..errors import StoreFormatError
from ..store_io import metadata_objects, note_written, put_objects, run_io
from .readers import DIGEST, LEGACY_DIGEST
from .stores import buffer_store, has_group, tokens_location

FORMAT = "zarrl.generations"
FORMAT_VERSION = 3
"""Version 3: the token storage holds per-token data only (``LEAVES``); the index leaves
(``INDEX_LEAVES``) are derived from the imports' lengths by readers (``token_index.py``).
Version 2 buffers also store ``INDEX_LEAVES``; version 1 buffers ``LEGACY_LEAVES`` too. Both are
read, and appended to with their own leaves."""
FACTS_ATTR = "zarrl_generations"
IMPORT_ATTR = "zarrl_generations_import"
TOKENS = "tokens"
IMPORTS = "imports"

LEAVES = ("action", "sample_log_prob", "ref_log_prob")
"""Leaves of the token storage (``ref_log_prob`` only in buffers with reference log-probs)."""

INDEX_LEAVES = ("completion", "position", ("next", "done"))
"""Per-token index leaves (completion number, position in it, last-token flag): stored by format
version 1 and 2 buffers, derived from the lengths for newer ones."""

LEGACY_LEAVES = (
    "prompt",
    "group_id",
    "policy_version",
    "log_reward",
    ("next", "terminated"),
    ("next", "truncated"),
    ("next", "reward"),
)
"""Per-completion values repeated on every token row by format version 1 buffers."""

IMPORT_ARRAYS = {
    "prompt_tokens": np.int64,  # the import's new prompts, concatenated
    "prompt_offsets": np.int64,  # [new prompts + 1]: prompt i is tokens[o[i]:o[i+1]]
    "completion_length": np.int64,  # [C] tokens per completion
    "completion_prompt": np.int64,  # [C] global prompt index
    "completion_group": np.int64,  # [C] group id (default: the prompt index)
    "completion_policy_version": np.int64,  # [C] (-1: not given)
    "completion_log_reward": np.float32,  # [C]
    "completion_terminated": np.bool_,  # [C] ended with eos_id
}


def legacy_tokens(root: zarr.Group) -> bool:
    """Whether the buffer's token storage is a format version 1 one (``LEGACY_LEAVES``)."""
    return TOKENS in root and "log_reward" in root[TOKENS]


IMPORT_DIMENSIONS = {"prompt_tokens": "prompt_token", "prompt_offsets": "prompt_offset"}
"""Dimension name of each import array (``completion`` for the others), so that xarray opens an
import's group as one dataset."""


def import_array_spec(name: str, values: np.ndarray) -> dict[str, Any]:
    """``create_array`` arguments of the import array ``name`` holding ``values`` (1-D, one
    chunk): Blosc LZ4 with byte shuffle and a crc32c checksum, ``.``-separated chunk keys, a
    dimension name (stock Zarr v3: any zarr-python, and xarray, read them)."""
    return {
        "shape": (len(values),),
        "chunks": (max(1, len(values)),),
        "dtype": values.dtype,
        "fill_value": False if values.dtype == np.bool_ else 0,
        "filters": (),
        "serializer": zarr.codecs.BytesCodec(endian="little"),
        "compressors": (
            zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
            zarr.codecs.Crc32cCodec(),
        ),
        "chunk_key_encoding": {"name": "default", "separator": "."},
        "dimension_names": (IMPORT_DIMENSIONS.get(name, "completion"),),
    }


def new_import_group(root: zarr.Group, import_id: str, create_parent: bool) -> zarr.Group:
    """A handle on the new group ``imports/<import_id>``: nothing is written here
    (``write_arrays`` writes its ``zarr.json`` with its arrays); ``create_parent`` (no import
    committed yet) writes ``imports/`` as an empty group."""
    parent = zarr_compat.async_group(root).store_path / IMPORTS
    if create_parent:  # an empty group's document, atomically (it may exist, empty)
        run_io(put_objects(metadata_objects(parent, zarr_compat.group_metadata())))
        note_written(parent.store, parent.path)  # its entry in the buffer's folder too
    return zarr_compat.group_at(zarr_compat.group_metadata(), parent / import_id)


def write_arrays(group: zarr.Group, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes the new ``group`` (``new_import_group``: its ``zarr.json``) and its 1-D
    ``arrays`` (one chunk each, ``import_array_spec``), and notes their files for the next
    durable write of the store (``store_io.note_written``). The arrays' documents are zarr's
    own (``array_layout.build_arrays``), their chunks encoded by their own codecs, and all are
    put at once; local files are written in place, since nothing refers to the group before
    its record is written."""
    where = group.store_path
    values = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    handles, documents = build_arrays(
        group, {n: import_array_spec(n, a) for n, a in values.items()}
    )
    objects = metadata_objects(where, zarr_compat.async_group(group).metadata) + documents
    for name, a in values.items():
        if len(a):
            codec = ChunkCodec(handles[name])
            objects.append((codec.key(0), codec.encode(a)))
    run_io(put_objects(objects, in_place=frozenset(key.path for key, _ in objects)))
    note_written(where.store, where.path)


@dataclasses.dataclass(frozen=True)
class Facts:
    """What every import into the buffer agrees on."""

    vocab_size: int
    eos_id: int
    max_new_tokens: int | None

    def to_attrs(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **dataclasses.asdict(self),
        }


@dataclasses.dataclass
class Tables:
    """The committed imports, concatenated in completion order (``load_tables``).

    ``prompt_tokens`` int64 flat with ``prompt_offsets`` ``[P + 1]``; per completion ``[C]``:
    ``start`` (first token row in ``tokens/``), ``length``, ``prompt``, ``group``,
    ``policy_version``, ``log_reward`` (float32), ``terminated`` (bool). ``records``: the
    import records, ``has_ref``: ``None`` before the first import."""

    prompt_tokens: np.ndarray
    prompt_offsets: np.ndarray
    start: np.ndarray
    length: np.ndarray
    prompt: np.ndarray
    group: np.ndarray
    policy_version: np.ndarray
    log_reward: np.ndarray
    terminated: np.ndarray
    records: list[dict]
    has_ref: bool | None

    @property
    def num_prompts(self) -> int:
        return len(self.prompt_offsets) - 1

    @property
    def num_completions(self) -> int:
        return len(self.length)

    @property
    def rows_end(self) -> int:
        """One past the last token row a committed import counts."""
        return max((r["rows"][1] for r in self.records), default=0)


def token_path(root: str | os.PathLike) -> str:
    """Where the token ``ZarrStorage`` of the buffer at ``root`` lives (a path or a URL)."""
    return tokens_location(os.fspath(root))


def open_root(
    path: str | os.PathLike, mode: str, storage_options: dict[str, Any] | None = None
) -> zarr.Group:
    """The buffer's group at a local path or a store URL (``stores.py``); ``mode="r"`` refuses
    a location that holds none (naming it)."""
    where = os.fspath(path)
    store = buffer_store(where, storage_options, read_only=mode == "r")
    if mode == "r" and not has_group(store):
        raise FileNotFoundError(f"no generations buffer at {where} (no zarr.json)")
    try:
        return zarr.open_group(store, mode="r" if mode == "r" else "a", zarr_format=3)
    except (ValueError, zarr.errors.ContainsArrayError) as err:
        raise StoreFormatError(f"{where} is not a generations buffer: {err}") from err


def read_facts(root: zarr.Group, where: str) -> Facts | None:
    """The facts in the group's attributes (``None`` for a new, empty group); an invalid
    attribute is a ``StoreFormatError`` naming the file and the attribute."""
    attrs = root.attrs.asdict()
    if FACTS_ATTR not in attrs:
        with warnings.catch_warnings():  # an object store's import.lock is no zarr node
            warnings.filterwarnings("ignore", "Object at", UserWarning)
            members = any(True for _ in root.members())
        if attrs or members:
            raise StoreFormatError(
                f"{where}/zarr.json: not a generations buffer (no attribute {FACTS_ATTR!r})"
            )
        return None
    raw = attrs[FACTS_ATTR]
    file = f"{where}/zarr.json"
    if not isinstance(raw, Mapping) or raw.get("format") != FORMAT:
        raise StoreFormatError(f"{file}: attribute {FACTS_ATTR!r}.format is not {FORMAT!r}")
    version = raw.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise StoreFormatError(
            f"{file}: {FACTS_ATTR}.format_version={version!r}; this zarrl reads 1..{FORMAT_VERSION}"
        )

    def integer(name: str, lo: int, optional: bool = False) -> int | None:
        v = raw.get(name)
        if v is None and optional:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise StoreFormatError(f"{file}: {FACTS_ATTR}.{name}={v!r} is not an integer >= {lo}")
        return v

    facts = Facts(
        vocab_size=integer("vocab_size", 1),
        eos_id=integer("eos_id", 0),
        max_new_tokens=integer("max_new_tokens", 1, optional=True),
    )
    if facts.eos_id >= facts.vocab_size:
        raise StoreFormatError(f"{file}: {FACTS_ATTR}.eos_id is not below vocab_size")
    return facts


def load_tables(root: zarr.Group, where: str) -> Tables:
    """Reads every committed import (groups under ``imports/`` with a record), checks that
    their ranges tile ``[0, C)`` completions and ``[0, P)`` prompts and that their arrays agree
    with their records, and concatenates them."""
    records: list[tuple[dict, zarr.Group]] = []
    if IMPORTS in root:
        for name, member in root[IMPORTS].members():
            rec = member.attrs.asdict().get(IMPORT_ATTR)
            if rec is not None:
                records.append((_check_record(rec, f"{where}/{IMPORTS}/{name}"), member))
    records.sort(key=lambda rg: rg[0]["completions"][0])
    parts: dict[str, list[np.ndarray]] = {name: [] for name in IMPORT_ARRAYS}
    starts: list[np.ndarray] = []
    c_end = p_end = r_end = 0
    prompt_tok_end = 0
    for rec, group in records:
        gwhere = f"{where}/{IMPORTS}/{rec['id']}"
        (c0, c1), (p0, p1), (r0, r1) = rec["completions"], rec["prompts"], rec["rows"]
        if c0 != c_end or p0 != p_end:
            raise StoreFormatError(
                f"{gwhere}/zarr.json: {IMPORT_ATTR} completions/prompts start at {c0}/{p0}, "
                f"the imports before it end at {c_end}/{p_end}"
            )
        arrays = {}
        for name, dtype in IMPORT_ARRAYS.items():
            if name not in group:
                raise StoreFormatError(f"{gwhere}: array {name!r} is missing")
            arrays[name] = np.asarray(group[name][...]).astype(dtype, copy=False)
        want = {"prompt_offsets": p1 - p0 + 1, "prompt_tokens": None}
        for name, arr in arrays.items():
            n = want.get(name, c1 - c0)
            if n is not None and len(arr) != n:
                raise StoreFormatError(f"{gwhere}/{name}: {len(arr)} entries, the record says {n}")
        lengths = arrays["completion_length"]
        if r0 < r_end:
            raise StoreFormatError(
                f"{gwhere}/zarr.json: {IMPORT_ATTR} rows start at {r0}, inside the rows "
                f"[..., {r_end}) of the imports before it"
            )
        r_end = r1
        if int(lengths.sum()) != r1 - r0 or (lengths < 1).any():
            raise StoreFormatError(
                f"{gwhere}/completion_length: lengths do not tile rows [{r0}, {r1})"
            )
        offsets = arrays["prompt_offsets"]
        if offsets[0] != 0 or offsets[-1] != len(arrays["prompt_tokens"]):
            raise StoreFormatError(f"{gwhere}/prompt_offsets: do not span prompt_tokens")
        if (arrays["completion_prompt"] < 0).any() or (arrays["completion_prompt"] >= p1).any():
            raise StoreFormatError(f"{gwhere}/completion_prompt: index outside [0, {p1})")
        starts.append(r0 + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
        arrays["prompt_offsets"] = offsets[1:] + prompt_tok_end
        prompt_tok_end += len(arrays["prompt_tokens"])
        for name, arr in arrays.items():
            parts[name].append(arr)
        c_end, p_end = c1, p1

    def cat(name: str) -> np.ndarray:
        dtype = IMPORT_ARRAYS[name]
        return np.concatenate(parts[name]) if parts[name] else np.zeros(0, dtype=dtype)

    has_ref = {bool(rec["has_ref"]) for rec, _ in records}
    if len(has_ref) > 1:
        raise StoreFormatError(f"{where}/{IMPORTS}: imports disagree on has_ref")
    return Tables(
        prompt_tokens=cat("prompt_tokens"),
        prompt_offsets=np.concatenate([[0], cat("prompt_offsets")]).astype(np.int64),
        start=np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64),
        length=cat("completion_length"),
        prompt=cat("completion_prompt"),
        group=cat("completion_group"),
        policy_version=cat("completion_policy_version"),
        log_reward=cat("completion_log_reward"),
        terminated=cat("completion_terminated"),
        records=[rec for rec, _ in records],
        has_ref=has_ref.pop() if has_ref else None,
    )


def recorded_digest(file: Mapping[str, Any]) -> tuple[str, str]:
    """``(hash name, hex digest)`` by which an import record names one of its ``files``:
    ``DIGEST``, or ``LEGACY_DIGEST`` in records written before it (``_check_record`` made sure
    one of them is a string)."""
    name = DIGEST if isinstance(file.get(DIGEST), str) else LEGACY_DIGEST
    return name, file[name]


def _check_record(rec: Any, where: str) -> dict:
    """An import record's fields, checked (``StoreFormatError`` naming the field)."""
    file = f"{where}/zarr.json"
    if not isinstance(rec, Mapping):
        raise StoreFormatError(f"{file}: attribute {IMPORT_ATTR!r} is not an object")
    for key in ("rows", "completions", "prompts"):
        v = rec.get(key)
        if (
            not isinstance(v, list)
            or len(v) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            or not 0 <= v[0] <= v[1]
        ):
            raise StoreFormatError(f"{file}: {IMPORT_ATTR}.{key}={v!r} is not a range [a, b]")
    if not isinstance(rec.get("id"), str) or not isinstance(rec.get("has_ref"), bool):
        raise StoreFormatError(f"{file}: {IMPORT_ATTR}.id / has_ref missing or mistyped")
    files = rec.get("files")
    if not isinstance(files, list) or not all(
        isinstance(f, Mapping)
        and any(isinstance(f.get(name), str) for name in (DIGEST, LEGACY_DIGEST))
        for f in files
    ):
        raise StoreFormatError(f"{file}: {IMPORT_ATTR}.files is not a list of files")
    return dict(rec)
