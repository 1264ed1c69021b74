"""Readers of logged generations: JSON Lines (streamed), Parquet (pyarrow, column-wise) and a
saved Hugging Face ``datasets`` folder, each yielding blocks of ``Columns`` (``records.py``).

Field maps rename an exporter's fields onto the schema's: ``TRL`` (``GRPOTrainer``-style logs),
``OPENAI`` (OpenAI / vLLM chat or completion responses with ``logprobs``: one record per
choice) and any user map (``parse_field_map("old=new,...")``), applied first.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import itertools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from .records import FIELDS, Columns, GenerationsImportError, Problem

loads = json.loads
"""The JSON parser of every line (the benchmark's parse-alone baseline uses the same)."""
JSONDecodeError = (json.JSONDecodeError, UnicodeDecodeError)

BLOCK_RECORDS = 16384
"""Records per block: the unit of validation (and of reading, for JSON Lines)."""
PARQUET_BATCH_RECORDS = 4096
"""Records per block read from a Parquet file: small enough that the import writes the first
blocks' chunks while the later ones are read and decoded (``importer.py``), large enough that
the per-block costs (pyarrow's batch slicing, the block's validation) stay small: 1,024 made
a 7.8 M-token import 15-20% slower."""

TRL: dict[str, str] = {
    "sampling_per_token_logps": "logprobs",
    "ref_per_token_logps": "ref_logprobs",
    "rewards": "reward",
}
"""TRL (``GRPOTrainer``) names -> schema names (``prompt_ids`` / ``completion_ids`` match)."""

PRESETS: dict[str, dict[str, str]] = {"trl": TRL}

TOKEN_ID_PREFIX = "token_id:"
"""vLLM's ``return_tokens_as_token_ids=True`` writes each logprobs token as ``"token_id:123"``."""


def parse_field_map(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"old=new,old2=new2"`` (or a preset name, ``"trl"``, or a mapping) -> ``{old: new}``;
    every ``new`` must be a schema field."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        pairs = dict(spec)
    else:
        pairs = {}
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            if part in PRESETS:
                pairs.update(PRESETS[part])
                continue
            old, sep, new = part.partition("=")
            if not sep or not old.strip() or not new.strip():
                raise ValueError(
                    f"--field-map entry {part!r} is not old=new (or a preset: {sorted(PRESETS)})"
                )
            pairs[old.strip()] = new.strip()
    unknown = sorted(set(pairs.values()) - set(FIELDS))
    if unknown:
        raise ValueError(f"--field-map targets {unknown} are not schema fields {list(FIELDS)}")
    return pairs


DIGEST = "xxh3_128"
"""The hash an import records of each file (``files[i]["xxh3_128"]``) to refuse importing the
same file twice: xxHash's XXH3 128-bit, about 20x faster than sha256 here (a 150 MB Parquet file
in 7 ms instead of 94 ms, on the import's critical path on 2 cores). Not cryptographic: it
tells equal files from different ones, not a forged collision (which could only make an import
be refused; ``allow_duplicate`` imports it anyway). Buffers written before it record
``sha256``, which is then computed too (``LEGACY_DIGEST``)."""
LEGACY_DIGEST = "sha256"


def digest(path: str | os.PathLike, names: Sequence[str] = (DIGEST,)) -> dict[str, str]:
    """``{name: hex digest}`` of a file's bytes (``names``: ``DIGEST`` and/or
    ``LEGACY_DIGEST``, one read for all); of a folder: of its files' relative names and bytes,
    sorted."""
    makers = {DIGEST: xxhash.xxh3_128, LEGACY_DIGEST: hashlib.sha256}
    hashes = {name: makers[name]() for name in names}
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    block = bytearray(1 << 22)  # read into one buffer, not a new bytes object per read
    view = memoryview(block)
    for f in files:
        for h in hashes.values():
            if path.is_dir():
                h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb", buffering=0) as fh:
            while got := fh.readinto(block):
                for h in hashes.values():
                    h.update(view[:got])
    return {name: h.hexdigest() for name, h in hashes.items()}


def format_of(path: str | os.PathLike) -> str:
    """``"jsonl"``, ``"parquet"`` or ``"datasets"`` (a folder), from the name."""
    p = Path(path)
    if p.is_dir():
        return "datasets"
    suffixes = "".join(p.suffixes[-1:]).lower()
    if suffixes in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffixes in (".parquet", ".pq"):
        return "parquet"
    raise GenerationsImportError(
        f"{path}: unknown format (use .jsonl, .parquet or a saved datasets folder)"
    )


def read_blocks(path: str | os.PathLike, field_map: Mapping[str, str]) -> Iterator[Columns]:
    """Blocks of records of one file, in order (format from the name, ``format_of``)."""
    kind = format_of(path)
    if kind == "jsonl":
        return read_jsonl(path, field_map)
    if kind == "parquet":
        return read_parquet(path, field_map)
    return read_datasets(path, field_map)


# ================================================================ JSON Lines
def read_jsonl(path: str | os.PathLike, field_map: Mapping[str, str]) -> Iterator[Columns]:
    """Streams the file in blocks of whole lines (``jsonl_arrow.BLOCK_BYTES``), each parsed
    by ``pyarrow.json`` when it reads the block exactly (``jsonl_arrow.arrow_columns``), else
    line by line with ``loads`` in blocks of ``BLOCK_RECORDS`` lines. A line that is not valid
    JSON (or the last line cut short) becomes a ``Problem`` of its block
    (``Columns.pre_problems``)."""
    from .jsonl_arrow import arrow_columns, line_blocks

    file = str(path)
    with open(path, "rb") as fh:
        for first_line, lines, data in line_blocks(fh):
            cols = arrow_columns(data, first_line, lines, field_map, file)
            if cols is not None:
                yield cols
            else:
                yield from parse_lines(
                    enumerate(io.BytesIO(data), start=first_line), file, field_map
                )


def parse_lines(lines: Iterator[tuple[int, bytes]], file: str, field_map) -> Iterator[Columns]:
    """``Columns`` of ``(line number, bytes)`` pairs parsed one by one with ``loads``, in
    blocks of ``BLOCK_RECORDS`` lines."""
    while True:
        block = list(itertools.islice(lines, BLOCK_RECORDS))
        if not block:
            return
        records: list[tuple[int, dict]] = []
        problems: list[Problem] = []
        with _no_gc():  # a block's millions of parsed objects would trigger full collections
            _parse_block(block, records, problems, file, field_map)
        cols = columns_from_records(records, file, "line")
        cols.pre_problems = problems + cols.pre_problems
        yield cols


def _parse_block(block, records: list, problems: list, file: str, field_map) -> None:
    """Parses ``(line number, bytes)`` pairs into ``records`` / ``problems``."""
    for number, raw in block:
        if not raw.strip():
            continue
        try:
            obj = loads(raw)
        except JSONDecodeError as err:
            what = (
                "is cut short (the file ends inside a record)"
                if not raw.endswith(b"\n")
                else f"is not valid JSON ({err})"
            )
            problems.append(Problem(file, f"line {number}", None, what))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(file, f"line {number}", None, "is not a JSON object"))
            continue
        records.extend((number, r) for r in _expand(obj, field_map))


@contextlib.contextmanager
def _no_gc():
    """The cyclic garbage collector paused (parsed JSON holds no cycles)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _expand(obj: dict, field_map: Mapping[str, str]) -> list[dict]:
    """One schema record per completion: the object renamed by ``field_map`` (then TRL's names
    when the object has them and not the schema's); an OpenAI / vLLM response (``choices``)
    gives one per choice."""
    if field_map:
        obj = {field_map.get(k, k): v for k, v in obj.items()}
    if "choices" in obj and "completion_ids" not in obj:
        return _openai_records(obj)
    if "logprobs" not in obj and "sampling_per_token_logps" in obj:
        obj = {TRL.get(k, k): v for k, v in obj.items()}
    return [obj]


def _openai_records(obj: dict) -> list[dict]:
    """Records of an OpenAI / vLLM response. Token ids: the choice's ``token_ids`` (vLLM
    ``return_token_ids=True``), else its logprobs tokens written as ``"token_id:123"`` (vLLM
    ``return_tokens_as_token_ids=True``). Log-probs: chat ``logprobs.content[j].logprob`` or
    completions ``logprobs.token_logprobs[j]``. Prompt ids: the choice's or the response's
    ``prompt_token_ids``. ``reward`` / ``log_reward``: on the choice, or on the response
    (the same for every choice), or ``rewards[i]`` on the response."""
    out = []
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return [{"_error": ("choices", "is not a list of choices")}]
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            out.append({"_error": ("choices", f"choice {i} is not an object")})
            continue
        rec: dict[str, Any] = {
            k: obj[k] for k in ("group_id", "policy_version", "prompt") if k in obj
        }
        prompt_ids = choice.get("prompt_token_ids", obj.get("prompt_token_ids"))
        if prompt_ids is not None:
            rec["prompt_ids"] = prompt_ids
        for key in ("reward", "log_reward"):
            if key in choice:
                rec[key] = choice[key]
            elif key in obj:
                rec[key] = obj[key]
        rewards = obj.get("rewards")
        if isinstance(rewards, list) and i < len(rewards) and "reward" not in rec:
            rec["reward"] = rewards[i]
        lp = choice.get("logprobs")
        tokens = None
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            content = lp["content"]
            if all(isinstance(c, dict) for c in content):
                rec["logprobs"] = [c.get("logprob") for c in content]
                tokens = [c.get("token") for c in content]
        elif isinstance(lp, dict) and isinstance(lp.get("token_logprobs"), list):
            rec["logprobs"] = lp["token_logprobs"]
            tokens = lp.get("tokens")
        if "token_ids" in choice:
            rec["completion_ids"] = choice["token_ids"]
        elif isinstance(tokens, list) and all(
            isinstance(t, str) and t.startswith(TOKEN_ID_PREFIX) for t in tokens
        ):
            with contextlib.suppress(ValueError):
                rec["completion_ids"] = [int(t[len(TOKEN_ID_PREFIX) :]) for t in tokens]
        if "completion_ids" not in rec:
            rec["_error"] = (
                "completion_ids",
                f"choice {i} has no token ids (ask vLLM for return_token_ids=True or "
                "return_tokens_as_token_ids=True)",
            )
        out.append(rec)
    return out


def columns_from_records(records: list[tuple[int, dict]], file: str, where_word: str) -> Columns:
    """``Columns`` of ``(location, record)`` pairs. A record whose fields have the wrong JSON
    type (or miss a required one) is left out with a ``Problem`` in ``pre_problems``. Token
    lists are checked for their element types in one numpy conversion per field and block;
    only a block that fails it is searched record by record."""
    problems: list[Problem] = []
    kept: list[tuple[int, dict]] = []
    for loc, r in records:
        bad = r.get("_error") or _type_problem(r)
        if bad:
            problems.append(Problem(file, f"{where_word} {loc}", bad[0], bad[1]))
        else:
            kept.append((loc, r))
    flats = {}
    for field, kinds, what in _LIST_FIELDS:
        values = [r.get(field) for _, r in kept]
        flat = np.array(list(itertools.chain.from_iterable(v for v in values if v)))
        if flat.size and flat.dtype.kind not in kinds:
            clean = []
            for loc, r in kept:
                v = r.get(field)
                if v and np.array(v).dtype.kind not in kinds:
                    problems.append(
                        Problem(file, f"{where_word} {loc}", field, f"is not a list of {what}")
                    )
                else:
                    clean.append((loc, r))
            out = columns_from_records(clean, file, where_word)
            out.pre_problems = problems + out.pre_problems
            return out
        flats[field] = (values, flat)
    n = len(kept)
    recs = [r for _, r in kept]

    def lists(field: str, dtype) -> tuple[np.ndarray, np.ndarray]:
        values, flat = flats[field]
        lens = np.fromiter((-1 if v is None else len(v) for v in values), dtype=np.int64, count=n)
        return lens, flat.astype(dtype, copy=False)

    prompt_len, prompt_tok = lists("prompt_ids", np.int64)
    comp_len, comp_tok = lists("completion_ids", np.int64)
    logp_len, logp = lists("logprobs", np.float64)
    ref_len, ref = lists("ref_logprobs", np.float64)

    def scalars(field: str, dtype, fill) -> tuple[np.ndarray, np.ndarray]:
        has = np.fromiter((field in r for r in recs), dtype=bool, count=n)
        vals = np.fromiter((r.get(field, fill) for r in recs), dtype=dtype, count=n)
        return vals, has

    reward, has_reward = scalars("reward", np.float64, np.nan)
    log_reward, has_log_reward = scalars("log_reward", np.float64, np.nan)
    group_id, has_group = scalars("group_id", np.int64, -1)
    policy_version, _ = scalars("policy_version", np.int64, -1)
    text = [r.get("prompt") for r in recs]
    return Columns(
        prompt_len=prompt_len,
        prompt_tok=prompt_tok,
        comp_len=comp_len,
        comp_tok=comp_tok,
        logp_len=logp_len,
        logp=logp,
        ref_len=ref_len,
        ref=ref,
        reward=reward,
        has_reward=has_reward,
        log_reward=log_reward,
        has_log_reward=has_log_reward,
        group_id=group_id,
        has_group=has_group,
        policy_version=policy_version,
        location=np.fromiter((loc for loc, _ in kept), dtype=np.int64, count=n),
        prompt_text=text if any(t is not None for t in text) else None,
        pre_problems=problems,
    )


_LIST_FIELDS = (
    ("prompt_ids", "iu", "integers"),
    ("completion_ids", "iu", "integers"),
    ("logprobs", "iuf", "numbers"),
    ("ref_logprobs", "iuf", "numbers"),
)
_SCALARS = (
    ("reward", (int, float), "a number"),
    ("log_reward", (int, float), "a number"),
    ("group_id", (int,), "an integer"),
    ("policy_version", (int,), "an integer"),
)


def _type_problem(r: dict) -> tuple[str, str] | None:
    """The first field of ``r`` that is missing or has a wrong JSON type (list elements are
    checked per block by ``columns_from_records``), as ``(field, message)``."""
    for field in ("prompt_ids", "completion_ids", "logprobs"):
        if field not in r:
            return field, "is missing"
    for field, _, what in _LIST_FIELDS:
        v = r.get(field)
        if type(v) is not list and not (v is None and field == "ref_logprobs"):
            return field, f"is not a list of {what}"
    for field, kinds, what in _SCALARS:
        if field in r and type(r[field]) not in kinds:
            return field, f"is not {what}"
    if "prompt" in r and not isinstance(r["prompt"], str):
        return "prompt", "is not a string"
    return None


# ================================================================ Arrow (Parquet, datasets)
_REQUIRED = ("prompt_ids", "completion_ids", "logprobs")


def arrow_sources(names: list[str], field_map: Mapping[str, str]) -> dict[str, str]:
    """``{schema field: column name}`` after the user map, then TRL's names."""
    renamed = {field_map.get(c, c): c for c in names}
    for old, new in TRL.items():
        if new not in renamed and old in renamed:
            renamed[new] = renamed[old]
    return {f: renamed[f] for f in FIELDS if f in renamed}


def check_arrow_schema(schema, sources: dict[str, str], file: str) -> None:
    """Missing columns and wrong column types, named (with what was found)."""
    import pyarrow.types as pt

    missing = [f for f in _REQUIRED if f not in sources]
    if not ("reward" in sources or "log_reward" in sources):
        missing.append("reward (or log_reward)")
    if missing:
        raise GenerationsImportError(
            f"{file}: missing column(s) {missing}; the file has {schema.names} "
            "(rename with --field-map old=new)"
        )

    def is_list_of(t, pred) -> bool:
        return (pt.is_list(t) or pt.is_large_list(t)) and pred(t.value_type)

    def numeric(t) -> bool:
        return pt.is_floating(t) or pt.is_integer(t)

    want = {
        "prompt_ids": (lambda t: is_list_of(t, pt.is_integer), "a list of integers"),
        "completion_ids": (lambda t: is_list_of(t, pt.is_integer), "a list of integers"),
        "logprobs": (lambda t: is_list_of(t, numeric), "a list of numbers"),
        "ref_logprobs": (lambda t: is_list_of(t, numeric), "a list of numbers"),
        "reward": (numeric, "a number"),
        "log_reward": (numeric, "a number"),
        "group_id": (pt.is_integer, "an integer"),
        "policy_version": (pt.is_integer, "an integer"),
        "prompt": (lambda t: pt.is_string(t) or pt.is_large_string(t), "a string"),
    }
    for field, column in sources.items():
        ok, what = want[field]
        t = schema.field(column).type
        if not ok(t) and not pt.is_null(t):
            raise GenerationsImportError(
                f"{file}: column {column!r} ({field}) has type {t}, expected {what}"
            )


def _list_column(arr, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lengths int64 [n] (-1 where null), flat values, bad bool [n]: a null element)``."""
    import pyarrow.compute as pc

    lens = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    null_rows = np.isnan(lens) if lens.dtype.kind == "f" else np.zeros(len(arr), dtype=bool)
    lens = np.where(null_rows, -1, np.nan_to_num(lens)).astype(np.int64)
    values = arr.flatten()
    bad = np.zeros(len(arr), dtype=bool)
    if values.null_count:
        holes = values.is_null().to_numpy(zero_copy_only=False)
        owner = np.repeat(np.arange(len(arr)), np.maximum(lens, 0))
        bad[owner[holes]] = True
        values = pc.fill_null(values, 0)
    return lens, values.to_numpy(zero_copy_only=False).astype(dtype, copy=False), bad


def _scalar_column(arr, dtype, fill) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.compute as pc

    has = arr.is_valid().to_numpy(zero_copy_only=False)
    if arr.null_count:
        arr = pc.fill_null(arr.cast("float64" if dtype == np.float64 else "int64"), fill)
    return arr.to_numpy(zero_copy_only=False).astype(dtype, copy=False), has


def columns_from_arrow(batch, sources: dict[str, str], first_row: int, file: str) -> Columns:
    """``Columns`` of an Arrow record batch (or table), vectorized; a null list or a null
    element is reported per row (``pre_problems``) and the row left out."""
    n = batch.num_rows
    none = np.zeros(0)
    got: dict[str, Any] = {}
    null_problem: dict[int, str] = {}
    for field, key, dtype in (
        ("prompt_ids", "prompt", np.int64),
        ("completion_ids", "comp", np.int64),
        ("logprobs", "logp", np.float64),
        ("ref_logprobs", "ref", np.float64),
    ):
        if field not in sources:
            got[f"{key}_len"], got[key] = np.full(n, -1, dtype=np.int64), none.astype(dtype)
            continue
        lens, flat, bad = _list_column(batch.column(sources[field]), dtype)
        required = field != "ref_logprobs"
        for i in np.flatnonzero(bad | ((lens < 0) & required)).tolist():
            null_problem.setdefault(i, field)
        got[f"{key}_len"], got[key] = lens, flat
    scalars = {}
    for field, dtype, fill in (
        ("reward", np.float64, np.nan),
        ("log_reward", np.float64, np.nan),
        ("group_id", np.int64, -1),
        ("policy_version", np.int64, -1),
    ):
        if field in sources:
            scalars[field] = _scalar_column(batch.column(sources[field]), dtype, fill)
        else:
            scalars[field] = (np.full(n, fill, dtype=dtype), np.zeros(n, dtype=bool))
    text = None
    if "prompt" in sources:
        text = batch.column(sources["prompt"]).to_pylist()
    cols = Columns(
        prompt_len=np.maximum(got["prompt_len"], 0),
        prompt_tok=got["prompt"],
        comp_len=np.maximum(got["comp_len"], 0),
        comp_tok=got["comp"],
        logp_len=np.maximum(got["logp_len"], 0),
        logp=got["logp"],
        ref_len=got["ref_len"],
        ref=got["ref"],
        reward=scalars["reward"][0],
        has_reward=scalars["reward"][1],
        log_reward=scalars["log_reward"][0],
        has_log_reward=scalars["log_reward"][1],
        group_id=scalars["group_id"][0],
        has_group=scalars["group_id"][1],
        policy_version=scalars["policy_version"][0],
        location=np.arange(first_row, first_row + n, dtype=np.int64),
        prompt_text=text,
    )
    if not null_problem:
        return cols
    keep = np.ones(n, dtype=bool)
    keep[list(null_problem)] = False
    out = cols.take(keep)
    out.pre_problems = [
        Problem(file, f"row {first_row + i}", field, "is null or holds a null")
        for i, field in sorted(null_problem.items())
    ]
    return out


def _arrow_blocks(batches, sources: dict[str, str], file: str) -> Iterator[Columns]:
    row = 0
    for batch in batches:
        yield columns_from_arrow(batch, sources, row, file)
        row += batch.num_rows


def read_parquet(path: str | os.PathLike, field_map: Mapping[str, str]) -> Iterator[Columns]:
    """Column-wise, ``PARQUET_BATCH_RECORDS`` rows at a time (streamed: each block is decoded
    when asked for); a missing or mistyped column is named before anything is read."""
    import pyarrow.parquet as pq

    file = str(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for a damaged file
        raise GenerationsImportError(f"{file}: not a readable Parquet file ({err})") from err
    schema = pf.schema_arrow
    sources = arrow_sources(schema.names, field_map)
    check_arrow_schema(schema, sources, file)
    columns = list(dict.fromkeys(sources.values()))
    return _arrow_blocks(
        pf.iter_batches(batch_size=PARQUET_BATCH_RECORDS, columns=columns), sources, file
    )


def known_has_ref(path: str | os.PathLike, field_map: Mapping[str, str]) -> bool | None:
    """Whether the file's first record carries ``ref_logprobs``, when its metadata settles it
    before any row is decoded (``None`` otherwise): a Parquet file whose columns have no
    reference log-probs does not; one whose reference column's statistics count no null and no
    empty list in its first non-empty row group does (every record of it carries some). JSON
    Lines and ``datasets`` folders: ``None``. The import makes the token storage's layout from
    it while the first block is read (and refuses a file whose first record disagrees)."""
    if format_of(path) != "parquet":
        return None
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
        names = meta.schema.to_arrow_schema().names
    except Exception:  # the reading names what is wrong with the file
        return None
    sources = arrow_sources(names, field_map)
    column = sources.get("ref_logprobs")
    if column is None:
        return False
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        if group.num_rows == 0:
            continue
        leaves = [
            group.column(j)
            for j in range(group.num_columns)
            if group.column(j).path_in_schema.split(".")[0] == column
        ]
        if len(leaves) != 1 or leaves[0].statistics is None:
            return None
        stats = leaves[0].statistics
        return True if stats.has_null_count and stats.null_count == 0 else None
    return None


def read_datasets(path: str | os.PathLike, field_map: Mapping[str, str]) -> Iterator[Columns]:
    """A folder written by ``Dataset.save_to_disk`` (one split: a ``DatasetDict`` folder is
    refused with its split names); read as one Arrow table, in blocks."""
    import datasets

    file = str(path)
    try:
        ds = datasets.load_from_disk(os.fspath(path))
    except Exception as err:  # datasets raises FileNotFoundError / its own errors
        raise GenerationsImportError(f"{file}: not a saved datasets folder ({err})") from err
    if isinstance(ds, datasets.DatasetDict):
        raise GenerationsImportError(
            f"{file}: a DatasetDict with splits {list(ds)}; import one split's folder "
            f"(e.g. {os.path.join(file, next(iter(ds), 'train'))})"
        )
    table = ds.with_format("arrow")[:]
    sources = arrow_sources(table.schema.names, field_map)
    try:
        check_arrow_schema(table.schema, sources, file)
    except GenerationsImportError as err:
        raise GenerationsImportError(f"{err} (datasets features: {ds.features})") from None
    return _arrow_blocks(table.to_batches(max_chunksize=BLOCK_RECORDS), sources, file)
