"""The fast path of JSON Lines import: a block of lines parsed by ``pyarrow.json`` (C++,
multithreaded) into an Arrow table, then read column-wise as Parquet is (``readers.py``).

It only takes blocks it reads exactly as the line-by-line parser would: one object per line (no
blank line), the schema's columns with the schema's types after the field map, every line with
the required fields, and, when the block holds the word ``null`` at all, no null in them (Arrow
cannot tell a JSON ``null`` from an absent optional field, which the line parser reports
differently). Any other block (a malformed or cut line, an OpenAI-style response, mixed types)
returns ``None`` and goes to the line parser, whose errors name the file, the line and the
field.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from typing import BinaryIO

from .records import FIELDS, Columns, concat_columns

REQUIRED = ("prompt_ids", "completion_ids", "logprobs")
"""Fields every record has (``readers._type_problem``)."""

BLOCK_BYTES = 1 << 25
"""Bytes of lines per block (32 MiB, cut at a line end): bounds the RAM of one parse."""

ARROW_BLOCK_BYTES = 1 << 22
"""``pyarrow.json``'s own block (its unit of parallel parsing); a longer line fails the fast
path, and its block is parsed line by line."""


def line_blocks(fh: BinaryIO, block_bytes: int | None = None) -> Iterator[tuple[int, int, bytes]]:
    """``(number of the block's first line (1-based), lines in the block, bytes of whole
    lines)`` of a file opened in binary mode; the last block may end without a newline (a cut
    last line, counted); ``block_bytes``: ``BLOCK_BYTES`` unless given."""
    block_bytes = block_bytes or BLOCK_BYTES
    line = 1
    while True:
        data = fh.read(block_bytes)
        if not data:
            return
        if not data.endswith(b"\n"):
            data += fh.readline()
        newlines = data.count(b"\n")
        yield line, newlines + (0 if data.endswith(b"\n") else 1), data
        line += newlines


def arrow_columns(
    data: bytes, first_line: int, lines: int, field_map: Mapping[str, str], file: str
) -> Columns | None:
    """``Columns`` of the ``lines`` lines ``data`` (located by line number from
    ``first_line``), or ``None`` when the block is not one the fast path reads exactly (module
    docstring)."""
    import pyarrow as pa
    import pyarrow.json as pj

    from .readers import check_arrow_schema, columns_from_arrow
    from .records import GenerationsImportError

    try:
        table = pj.read_json(
            io.BytesIO(data), read_options=pj.ReadOptions(block_size=ARROW_BLOCK_BYTES)
        )
    except pa.ArrowException:
        return None
    if table.num_rows != lines:  # blank lines: the row numbers are not the line numbers
        return None
    sources = _sources(table.schema.names, field_map)
    if sources is None:
        return None
    try:
        check_arrow_schema(table.schema, sources, file)
    except GenerationsImportError:
        return None  # named per line by the line parser
    table = table.select(list(dict.fromkeys(sources.values())))
    if b"null" in data:  # a JSON null somewhere: Arrow's nulls may not be absent fields
        if any(_has_null(c) for c in table.columns):
            return None
    elif any(table.column(sources[f]).null_count for f in REQUIRED):
        return None  # a required field absent from a line: "is missing", by the line parser
    parts, row = [], 0
    for batch in table.to_batches():
        parts.append(columns_from_arrow(batch, sources, first_line + row, file))
        row += batch.num_rows
    return concat_columns(parts)


def _sources(names: list[str], field_map: Mapping[str, str]) -> dict[str, str] | None:
    """``{schema field: column}`` renamed as the line parser renames each record
    (``readers._expand``: the user map, then TRL's names when ``logprobs`` is absent and
    ``sampling_per_token_logps`` present); ``None`` for columns it would read otherwise (an
    OpenAI-style ``choices`` column, two columns renamed onto one field)."""
    from .readers import TRL

    renamed = {field_map.get(c, c): c for c in names}
    if len(renamed) != len(names):
        return None
    if "choices" in renamed and "completion_ids" not in renamed:
        return None
    if "logprobs" not in renamed and "sampling_per_token_logps" in renamed:
        renamed = {TRL.get(k, k): c for k, c in renamed.items()}
        if len(renamed) != len(names):
            return None
    return {f: renamed[f] for f in FIELDS if f in renamed}


def _has_null(column) -> bool:
    """Whether a column (a chunked array) holds a null, or a list column a null element."""
    import pyarrow.types as pt

    if column.null_count:
        return True
    if pt.is_list(column.type) or pt.is_large_list(column.type):
        return any(chunk.flatten().null_count for chunk in column.chunks)
    return False
