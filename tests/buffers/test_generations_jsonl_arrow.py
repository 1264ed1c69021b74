"""The JSON Lines fast path (``pyarrow.json``): what it reads equals what the line parser
reads, line numbers hold across blocks, and the blocks it cannot read exactly go to the line
parser (whose problems are named per line)."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from zarrl.buffers.generations import GenerationsImportError, import_generations, jsonl_arrow
from zarrl.buffers.generations.readers import parse_lines

sys.path.insert(0, str(Path(__file__).parent))
from generations_support import EOS, MAX_NEW, VOCAB, make_records, write_jsonl  # noqa: E402

FACTS = {"vocab_size": VOCAB, "eos_id": EOS, "max_new_tokens": MAX_NEW}


def _blocks(path: Path, block_bytes: int | None = None):
    with open(path, "rb") as fh:
        return list(jsonl_arrow.line_blocks(fh, block_bytes))


def test_the_fast_path_reads_what_the_line_parser_reads(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", make_records(200, seed=3))
    ((first, lines, data),) = _blocks(src)
    assert (first, lines) == (1, 200)
    fast = jsonl_arrow.arrow_columns(data, first, lines, {}, str(src))
    assert fast is not None  # optional fields absent on some lines: still the fast path
    (slow,) = parse_lines(enumerate(io.BytesIO(data), start=1), str(src), {})
    for f in dataclasses.fields(slow):
        if f.name in ("prompt_text", "pre_problems"):
            continue
        a, b = getattr(fast, f.name), getattr(slow, f.name)
        assert a.dtype == b.dtype, f.name
        np.testing.assert_array_equal(a, b, err_msg=f.name)
    assert fast.location.tolist() == list(range(1, 201))


def test_lines_are_numbered_across_blocks(tmp_path, monkeypatch):
    records = make_records(120, seed=4)
    records[96]["logprobs"][0] = 0.5
    src = write_jsonl(tmp_path / "a.jsonl", records)
    blocks = _blocks(src, 2000)
    assert len(blocks) > 5
    assert [b[0] for b in blocks[1:]] == [b[0] + b[1] for b in blocks[:-1]]
    assert sum(b[1] for b in blocks) == 120
    taken = []
    original = jsonl_arrow.arrow_columns

    def spy(*args):
        out = original(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(jsonl_arrow, "BLOCK_BYTES", 2000)
    monkeypatch.setattr(jsonl_arrow, "arrow_columns", spy)
    with pytest.raises(GenerationsImportError) as err:
        import_generations([src], tmp_path / "buf", **FACTS)
    assert all(taken) and len(taken) == len(blocks)
    ((where, field, message),) = [(p.where, p.field, p.message) for p in err.value.problems]
    assert (where, field, message) == ("line 97", "logprobs", "holds a log-prob > 0")


@pytest.mark.parametrize(
    ("spoil", "field", "message"),
    [
        (lambda r: r.update(reward=None, log_reward=1.0), "reward", "is not a number"),
        (lambda r: r.pop("logprobs"), "logprobs", "is missing"),
        (lambda r: r.update(group_id=1.5), "group_id", "is not an integer"),
        (lambda r: r["completion_ids"].__setitem__(0, None), "completion_ids", "is not a list"),
    ],
)
def test_blocks_the_fast_path_cannot_read_exactly_go_to_the_line_parser(
    tmp_path, spoil, field, message
):
    records = make_records(12, seed=5)
    spoil(records[7])
    text = "".join(json.dumps(r) + "\n" for r in records)
    src = tmp_path / "a.jsonl"
    src.write_text(text)
    ((first, lines, data),) = _blocks(src)
    assert jsonl_arrow.arrow_columns(data, first, lines, {}, str(src)) is None
    with pytest.raises(GenerationsImportError) as err:
        import_generations([src], tmp_path / "buf", **FACTS)
    ((p),) = err.value.problems
    assert (p.where, p.field) == ("line 8", field)
    assert p.message.startswith(message)


def test_blank_lines_keep_the_line_numbers(tmp_path):
    records = make_records(6, seed=6)
    records[4]["completion_ids"][0] = VOCAB
    lines = [json.dumps(r) + "\n" for r in records]
    src = tmp_path / "a.jsonl"
    src.write_text("".join(lines[:2]) + "\n   \n" + "".join(lines[2:]))
    with pytest.raises(GenerationsImportError) as err:
        import_generations([src], tmp_path / "buf", **FACTS)
    ((p),) = err.value.problems
    assert (p.where, p.field) == ("line 7", "completion_ids")
