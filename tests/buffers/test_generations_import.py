"""Importing logged generations: every bad input of issue 16 is reported with its file, line or
row and field; ``fail`` commits nothing, ``skip`` imports the rest; round trips through each
format and field map."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from zarrl.buffers.generations import (
    GenerationsBuffer,
    GenerationsImportError,
    import_generations,
    token_sink,
)
from zarrl.buffers.generations import importer as importer_module

sys.path.insert(0, str(Path(__file__).parent))
from generations_support import (  # noqa: E402
    EOS,
    MAX_NEW,
    VOCAB,
    expected,
    make_records,
    write_datasets,
    write_jsonl,
    write_parquet,
)

FACTS = {"vocab_size": VOCAB, "eos_id": EOS, "max_new_tokens": MAX_NEW}


def _check_holds(buf: GenerationsBuffer, records: list[dict]) -> None:
    """Every completion of ``buf`` equals its record (tokens exact, floats as float32)."""
    want = expected(records)
    assert buf.num_completions == len(records)
    assert buf.num_prompts == len(want["prompts"])
    batch = buf.completions(torch.arange(len(records)))
    for i, r in enumerate(records):
        n = len(r["completion_ids"])
        assert batch["tokens", "response"][i, :n].tolist() == r["completion_ids"]
        got = batch["log_probs", "behaviour"][i, :n]
        assert torch.equal(got, torch.tensor(r["logprobs"], dtype=torch.float32))
        if "ref_logprobs" in r:
            ref = torch.tensor(r["ref_logprobs"], dtype=torch.float32)
            assert torch.equal(batch["log_probs", "ref"][i, :n], ref)
        prompt = batch["tokens", "prompt"][i][batch["masks", "prompt"][i]]
        assert prompt.tolist() == r["prompt_ids"]
    assert batch["prompt"].tolist() == want["prompt_index"]
    assert torch.equal(batch["log_reward"], torch.tensor(want["log_reward"], dtype=torch.float32))
    assert batch["group_id"].tolist() == want["group_id"]
    assert batch["policy_version"].tolist() == want["policy_version"]
    assert batch["terminated"].tolist() == want["terminated"]


# ----------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "datasets"])
def test_each_format_round_trips_exactly(tmp_path, fmt):
    records = make_records(40, seed=1)
    writer = {"jsonl": write_jsonl, "parquet": write_parquet, "datasets": write_datasets}[fmt]
    src = writer(tmp_path / f"logs.{fmt}" if fmt != "datasets" else tmp_path / "ds", records)
    report = import_generations([src], tmp_path / "buf", **FACTS)
    assert (report.completions, report.skipped) == (40, 0)
    assert report.tokens == sum(len(r["completion_ids"]) for r in records)
    with GenerationsBuffer.open(tmp_path / "buf") as buf:
        assert (buf.vocab_size, buf.eos_id, buf.max_new_tokens) == (VOCAB, EOS, MAX_NEW)
        assert buf.has_ref
        _check_holds(buf, records)


def test_token_rows_follow_the_flat_layout(tmp_path):
    records = make_records(12, seed=2)
    import_generations([write_jsonl(tmp_path / "a.jsonl", records)], tmp_path / "buf", **FACTS)
    group = zarr.open_group(str(tmp_path / "buf" / "tokens"), mode="r")  # plain zarr
    lengths = [len(r["completion_ids"]) for r in records]
    (imp,) = zarr.open_group(str(tmp_path / "buf" / "imports"), mode="r").groups()
    r0, r1 = imp[1].attrs["zarrl_generations_import"]["rows"]
    assert (r0, r1) == (0, sum(lengths))
    assert group["action"][r0:r1].tolist() == sum((r["completion_ids"] for r in records), [])
    # per-token data only: per-completion values live in the import's arrays, never repeated
    # per token, and the index leaves are derived from the lengths by readers
    assert sorted(k for k, _ in group.arrays()) == ["action", "ref_log_prob", "sample_log_prob"]
    assert [k for k, _ in group.groups()] == [".zarrl"]  # its seal table; no "next" group
    assert group["action"].dtype == np.int32
    owner = np.repeat(np.arange(12), lengths)
    first = np.cumsum(lengths) - lengths
    last = np.zeros(len(owner), dtype=bool)
    last[first + np.array(lengths) - 1] = True
    with GenerationsBuffer.open(tmp_path / "buf") as buf:
        rows = buf.storage[:]
        assert rows["completion"].tolist() == owner.tolist()
        assert rows["position"].tolist() == (np.arange(len(owner)) - first[owner]).tolist()
        assert rows["next", "done"].tolist() == last.tolist()
        assert rows["action"].tolist() == group["action"][r0:r1].tolist()
    for name in ("sample_log_prob", "ref_log_prob"):  # noise, not series: no row delta
        chain = [type(c).__name__ for c in group[name].compressors]
        assert chain == ["BloscCodec", "Crc32cCodec"] and group[name].filters == (), name
    import xarray as xr  # the import's arrays open as one dataset

    ds = xr.open_zarr(str(tmp_path / "buf" / "imports" / imp[0]), consolidated=False)
    assert ds["completion_length"].dims == ("completion",)
    assert ds["completion_length"].values.tolist() == lengths
    distinct_prompts = {tuple(r["prompt_ids"]) for r in records}
    assert ds.sizes["prompt_offset"] == len(distinct_prompts) + 1 and len(ds.data_vars) == 8
    ends_eos = np.array([r["completion_ids"][-1] == EOS for r in records])
    assert imp[1]["completion_terminated"][:].tolist() == ends_eos.tolist()
    want = expected(records)["log_reward"]
    assert np.array_equal(imp[1]["completion_log_reward"][:], np.float32(want))
    facts = zarr.open_group(str(tmp_path / "buf"), mode="r").attrs["zarrl_generations"]
    assert (facts["vocab_size"], facts["eos_id"], facts["max_new_tokens"]) == (VOCAB, EOS, MAX_NEW)


def test_a_buffer_with_int64_tokens_takes_more_imports_in_its_own_dtype(tmp_path, monkeypatch):
    """Buffers made before int32 token ids keep their int64 ``action``: a later import writes
    into it, and batches (widened to int64) and TorchRL's slice sampler read both imports."""
    from zarrl.buffers.generations import token_rows

    first, second = make_records(6, seed=60, min_len=2), make_records(5, seed=61, min_len=2)
    with monkeypatch.context() as m:
        m.setattr(token_rows, "ACTION_DTYPE", np.int64)
        import_generations([write_jsonl(tmp_path / "a.jsonl", first)], tmp_path / "buf", **FACTS)
    import_generations([write_parquet(tmp_path / "b.parquet", second)], tmp_path / "buf")
    assert zarr.open_array(str(tmp_path / "buf" / "tokens" / "action")).dtype == np.int64
    with GenerationsBuffer.open(tmp_path / "buf") as buf:
        _check_holds(buf, first + second)
        assert buf.completions(torch.tensor([0]))["tokens", "response"].dtype == torch.int64
        rows = buf.storage[torch.arange(len(buf.storage))]
        owner = rows["completion"]
        tokens = sum((r["completion_ids"] for r in first + second), [])
        assert rows["action"].tolist() == tokens and owner.tolist() == sorted(owner.tolist())


def test_a_version_2_buffer_keeps_storing_its_index_leaves(tmp_path, monkeypatch):
    """A buffer whose token storage stores ``completion``, ``position`` and ``next/done``
    (format version 2) takes a later import with them computed per row, and its readers use
    the stored leaves (nothing attached)."""
    from zarrl.buffers.generations import token_rows, token_sink

    first, second = make_records(5, seed=62, min_len=2), make_records(4, seed=63, min_len=2)
    real_schema = token_rows.token_schema
    with monkeypatch.context() as m:
        m.setattr(token_rows, "token_schema", lambda *a, **k: real_schema(a[0], with_index=True))
        m.setattr(token_sink, "INDEX_KEYS", ["completion", "position", ("next", "done")])
        import_generations([write_jsonl(tmp_path / "a.jsonl", first)], tmp_path / "buf", **FACTS)
    import_generations([write_parquet(tmp_path / "b.parquet", second)], tmp_path / "buf")
    group = zarr.open_group(str(tmp_path / "buf" / "tokens"), mode="r")
    lengths = [len(r["completion_ids"]) for r in first + second]
    owner = np.repeat(np.arange(9), lengths)
    T = len(owner)
    assert group["completion"][:T].tolist() == owner.tolist()  # the second import's rows too
    first_row = np.cumsum(lengths) - lengths
    assert group["position"][:T].tolist() == (np.arange(T) - first_row[owner]).tolist()
    with GenerationsBuffer.open(tmp_path / "buf") as buf:
        _check_holds(buf, first + second)
        assert buf.storage.index.attached == {}  # read from the store, not derived
        assert (
            buf.storage[:]["next", "done"].nonzero().flatten().tolist()
            == (np.cumsum(lengths) - 1).tolist()
        )


def test_a_parquet_footer_settles_whether_records_carry_reference_log_probs(tmp_path):
    """``known_has_ref``: what the first record will say, from the file's metadata alone, so
    the token layout is made while the first block is read; ``None`` when it cannot tell."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from zarrl.buffers.generations.readers import known_has_ref

    with_ref = write_parquet(tmp_path / "a.parquet", make_records(6, seed=64))
    without = write_parquet(tmp_path / "b.parquet", make_records(6, seed=65, ref=False))
    records = make_records(6, seed=66)
    del records[4]["ref_logprobs"]  # null in one row: the statistics count it
    holed = write_parquet(tmp_path / "c.parquet", records)
    table = pa.Table.from_pylist(make_records(6, seed=67))
    pq.write_table(table, tmp_path / "d.parquet", write_statistics=False)
    assert known_has_ref(with_ref, {}) is True
    assert known_has_ref(without, {}) is False
    assert known_has_ref(holed, {}) is None
    assert known_has_ref(tmp_path / "d.parquet", {}) is None
    assert known_has_ref(write_jsonl(tmp_path / "e.jsonl", make_records(2, seed=68)), {}) is None
    table = pa.Table.from_pylist(make_records(4, seed=69))
    trl = table.rename_columns(
        ["ref_per_token_logps" if n == "ref_logprobs" else n for n in table.column_names]
    )
    pq.write_table(trl, tmp_path / "f.parquet")
    assert known_has_ref(tmp_path / "f.parquet", {}) is True  # TRL's name, mapped


def test_records_that_contradict_their_parquet_statistics_are_refused(tmp_path, monkeypatch):
    """A damaged footer that claims reference log-probs the first record lacks: a clear error
    naming the file, and nothing of the new buffer is left."""
    src = write_parquet(tmp_path / "a.parquet", make_records(5, seed=70, ref=False))
    monkeypatch.setattr(importer_module, "known_has_ref", lambda path, fmap: True)
    with pytest.raises(GenerationsImportError, match=r"a\.parquet: its Parquet statistics say"):
        import_generations([src], tmp_path / "buf", **FACTS)
    assert not GenerationsBuffer_exists(tmp_path / "buf")
    monkeypatch.undo()
    import_generations([src], tmp_path / "buf", **FACTS)
    with GenerationsBuffer.open(tmp_path / "buf") as buf:
        assert buf.num_completions == 5 and not buf.has_ref


def test_second_import_appends_and_shares_known_prompts(tmp_path):
    first, second = make_records(10, seed=3, ref=False), make_records(7, seed=3, ref=False)
    import_generations([write_jsonl(tmp_path / "a.jsonl", first)], tmp_path / "buf", **FACTS)
    second = [{**r, "logprobs": [x - 0.5 for x in r["logprobs"]]} for r in second]  # new file
    report = import_generations([write_jsonl(tmp_path / "b.jsonl", second)], tmp_path / "buf")
    assert report.new_prompts == 0  # the same prompt table: no new prompts
    with GenerationsBuffer.open(tmp_path / "buf") as buf:
        assert not buf.has_ref
        _check_holds(buf, first + second)
        assert [len(rec["files"]) for rec in buf.imports] == [1, 1]


def test_trl_names_are_recognised_and_a_user_map_renames(tmp_path):
    records = make_records(9, seed=4)
    trl = [
        {
            "prompt_ids": r["prompt_ids"],
            "completion_ids": r["completion_ids"],
            "sampling_per_token_logps": r["logprobs"],
            "ref_per_token_logps": r["ref_logprobs"],
            "score": r.get("reward", r.get("log_reward")),
        }
        for r in records
    ]
    for fmt, writer in (("jsonl", write_jsonl), ("parquet", write_parquet)):
        src = writer(tmp_path / f"trl.{fmt}", trl)
        buf_path = tmp_path / f"buf-{fmt}"
        import_generations([src], buf_path, **FACTS, field_map="score=reward")
        want = [
            {k: v for k, v in r.items() if k not in ("group_id", "policy_version", "log_reward")}
            | {"reward": r.get("reward", r.get("log_reward"))}
            for r in records
        ]
        with GenerationsBuffer.open(buf_path) as buf:
            _check_holds(buf, want)


def _chat_response(record: dict, as_token_strings: bool) -> dict:
    content = [
        {
            "token": f"token_id:{t}" if as_token_strings else chr(97 + t),
            "logprob": lp,
            "bytes": [97 + t],
            "top_logprobs": [],
        }
        for t, lp in zip(record["completion_ids"], record["logprobs"])
    ]
    choice = {"index": 0, "message": {"role": "assistant", "content": "..."}}
    choice["logprobs"] = {"content": content}
    choice["finish_reason"] = "stop"
    if not as_token_strings:
        choice["token_ids"] = record["completion_ids"]  # vLLM return_token_ids=True
    return {"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice]}


def test_openai_and_vllm_responses_import_one_record_per_choice(tmp_path):
    records = make_records(6, seed=5, ref=False)
    lines = []
    for i in range(0, 6, 2):  # two choices per response, the prompt ids on the response
        a = _chat_response(records[i], as_token_strings=True)
        b = _chat_response(records[i + 1], as_token_strings=False)
        a["choices"].append(b["choices"][0])
        a["prompt_token_ids"] = records[i]["prompt_ids"]
        a["rewards"] = [records[i].get("reward", records[i].get("log_reward")),
                        records[i + 1].get("reward", records[i + 1].get("log_reward"))]  # fmt: skip
        lines.append(a)
        records[i + 1] = {**records[i + 1], "prompt_ids": records[i]["prompt_ids"]}
    legacy = {  # the completions API: logprobs.tokens / token_logprobs, prompt ids per choice
        "object": "text_completion",
        "choices": [
            {
                "text": "...",
                "prompt_token_ids": [3, 4],
                "logprobs": {"tokens": ["token_id:5", "token_id:0"], "token_logprobs": [-1, -0.5]},
            }
        ],
        "log_reward": 0.25,
    }
    lines.append(legacy)
    src = write_jsonl(tmp_path / "responses.jsonl", lines)
    import_generations([src], tmp_path / "buf", **FACTS)
    want = [
        {k: v for k, v in r.items() if k not in ("group_id", "policy_version", "log_reward")}
        | {"reward": r.get("reward", r.get("log_reward"))}
        for r in records
    ]
    want.append({"prompt_ids": [3, 4], "completion_ids": [5, 0], "logprobs": [-1.0, -0.5],
                 "log_reward": 0.25})  # fmt: skip
    with GenerationsBuffer.open(tmp_path / "buf") as buf:
        _check_holds(buf, want)


def test_a_response_without_token_ids_is_reported(tmp_path):
    resp = _chat_response(make_records(1, seed=6)[0], as_token_strings=False)
    del resp["choices"][0]["token_ids"]
    resp["prompt_token_ids"], resp["reward"] = [1], 0.0
    src = write_jsonl(tmp_path / "r.jsonl", [resp])
    with pytest.raises(GenerationsImportError) as err:
        import_generations([src], tmp_path / "buf", **FACTS)
    (problem,) = err.value.problems
    assert (problem.where, problem.field) == ("line 1", "completion_ids")
    assert "return_token_ids" in problem.message


# ----------------------------------------------------------------- bad rows
BAD_ROWS = {
    "lengths disagree": (lambda r: r.update(logprobs=r["logprobs"][:-1]), "logprobs", "length"),
    "ref lengths disagree": (
        lambda r: r.update(ref_logprobs=r["ref_logprobs"] + [-1.0]),
        "ref_logprobs",
        "length",
    ),
    "id out of vocab": (
        lambda r: r.update(completion_ids=[VOCAB] + r["completion_ids"][1:]),
        "completion_ids",
        "vocabulary",
    ),
    "negative prompt id": (lambda r: r.update(prompt_ids=[-1]), "prompt_ids", "vocabulary"),
    "log-prob > 0": (
        lambda r: r.update(logprobs=[0.5] + r["logprobs"][1:]),
        "logprobs",
        "> 0",
    ),
    "log-prob NaN": (
        lambda r: r.update(logprobs=[math.nan] + r["logprobs"][1:]),
        "logprobs",
        "NaN",
    ),
    "ref log-prob inf": (
        lambda r: r.update(ref_logprobs=[-math.inf] + r["ref_logprobs"][1:]),
        "ref_logprobs",
        "infinite",
    ),
    "reward inf": (
        lambda r: (r.pop("log_reward", None), r.update(reward=math.inf)),
        "reward",
        "finite",
    ),
    "log_reward NaN": (
        lambda r: (r.pop("reward", None), r.update(log_reward=math.nan)),
        "log_reward",
        "finite",
    ),
    "both rewards": (lambda r: r.update(reward=1.0, log_reward=0.0), "reward", "exactly one"),
    "no reward": (
        lambda r: (r.pop("reward", None), r.pop("log_reward", None)),
        "reward",
        "missing",
    ),
    "too long": (
        lambda r: r.update(
            completion_ids=[1] * (MAX_NEW + 1),
            logprobs=[-1.0] * (MAX_NEW + 1),
            ref_logprobs=[-1.0] * (MAX_NEW + 1),
        ),
        "completion_ids",
        "length limit",
    ),
    "eos inside": (
        lambda r: r.update(
            completion_ids=[EOS, 1], logprobs=[-1.0, -1.0], ref_logprobs=[-1.0, -1.0]
        ),
        "completion_ids",
        "end token",
    ),
    "empty completion": (
        lambda r: r.update(completion_ids=[], logprobs=[], ref_logprobs=[]),
        "completion_ids",
        "empty",
    ),
    "ids not integers": (
        lambda r: r.update(completion_ids=[1.5] * len(r["completion_ids"])),
        "completion_ids",
        "integers",
    ),
    "missing field": (lambda r: r.pop("logprobs"), "logprobs", "missing"),
    "missing ref": (lambda r: r.pop("ref_logprobs"), "ref_logprobs", "missing"),
}


WHOLE_FILE = ("ids not integers", "missing field")
"""In Parquet these are a column's type / a missing column: the whole file is refused (below)."""


@pytest.mark.parametrize(
    ("fmt", "case"),
    [("jsonl", c) for c in sorted(BAD_ROWS)]
    + [("parquet", c) for c in sorted(BAD_ROWS) if c not in WHOLE_FILE],
)
def test_a_bad_row_is_named_and_fail_commits_nothing(tmp_path, case, fmt):
    records = make_records(8, seed=7)
    spoil, field, words = BAD_ROWS[case]
    spoil(records[5])
    writer = write_jsonl if fmt == "jsonl" else write_parquet
    src = writer(tmp_path / f"bad.{fmt}", records)
    buf = tmp_path / "buf"
    import_generations(
        [write_jsonl(tmp_path / "good.jsonl", make_records(3, seed=8))], buf, **FACTS
    )
    with pytest.raises(GenerationsImportError) as err:
        import_generations([src], buf)
    (problem,) = err.value.problems
    assert problem.file == str(src)
    assert problem.where == ("line 6" if fmt == "jsonl" else "row 5")
    assert problem.field == field
    assert words in problem.message
    with GenerationsBuffer.open(buf) as reader:
        assert reader.num_completions == 3  # nothing of the failed import
        assert len(reader.imports) == 1
        assert len(reader.storage) == reader.num_tokens  # not even uncounted rows

    report = import_generations([src], buf, on_error="skip")
    assert (report.completions, report.skipped) == (7, 1)
    assert report.problems[0].where == problem.where
    assert report.files[0].records == 7
    with GenerationsBuffer.open(buf) as reader:
        del records[5]
        _check_holds(reader, make_records(3, seed=8) + records)


def test_truncated_and_malformed_jsonl_lines_are_named(tmp_path):
    records = make_records(5, seed=9)
    text = "".join(json.dumps(r) + "\n" for r in records)
    lines = text.splitlines(keepends=True)
    lines[1] = '{"prompt_ids": [1], oops\n'
    lines[2] = "[1, 2]\n"
    src = tmp_path / "bad.jsonl"
    src.write_text("".join(lines) + json.dumps(make_records(1, seed=10)[0])[:-7])  # cut short
    with pytest.raises(GenerationsImportError) as err:
        import_generations([src], tmp_path / "buf", **FACTS)
    got = [(p.where, p.field, p.message.split(" (")[0]) for p in err.value.problems]
    assert got == [
        ("line 2", None, "is not valid JSON"),
        ("line 3", None, "is not a JSON object"),
        ("line 6", None, "is cut short"),
    ]
    assert not GenerationsBuffer_exists(tmp_path / "buf")
    report = import_generations([src], tmp_path / "buf", **FACTS, on_error="skip")
    assert (report.completions, report.skipped) == (3, 3)


def GenerationsBuffer_exists(path: Path) -> bool:
    try:
        GenerationsBuffer.open(path).close()
    except FileNotFoundError:
        return False
    return True


def test_parquet_missing_column_and_wrong_type_are_named(tmp_path):
    records = make_records(4, seed=11)
    no_logprobs = write_parquet(
        tmp_path / "a.parquet", [{k: v for k, v in r.items() if k != "logprobs"} for r in records]
    )
    with pytest.raises(
        GenerationsImportError, match=r"a\.parquet: missing column\(s\) \['logprobs'\]"
    ):
        import_generations([no_logprobs], tmp_path / "buf", **FACTS)
    as_text = write_parquet(
        tmp_path / "b.parquet",
        [{**r, "logprobs": [str(x) for x in r["logprobs"]]} for r in records],
    )
    with pytest.raises(
        GenerationsImportError,
        match=r"column 'logprobs' .*list<element: string>, expected a list of numbers",
    ):
        import_generations([as_text], tmp_path / "buf", **FACTS)
    no_reward = write_parquet(
        tmp_path / "c.parquet",
        [{k: v for k, v in r.items() if k not in ("reward", "log_reward")} for r in records],
    )
    with pytest.raises(GenerationsImportError, match=r"reward \(or log_reward\)"):
        import_generations([no_reward], tmp_path / "buf", **FACTS)
    (tmp_path / "d.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(GenerationsImportError, match="not a readable Parquet file"):
        import_generations([tmp_path / "d.parquet"], tmp_path / "buf", **FACTS)


def test_parquet_null_entries_are_bad_rows(tmp_path):
    records = make_records(6, seed=12)
    records[2]["logprobs"] = [None] + records[2]["logprobs"][1:]
    src = write_parquet(tmp_path / "n.parquet", records)
    report = import_generations([src], tmp_path / "buf", **FACTS, on_error="skip")
    assert [(p.where, p.field) for p in report.problems] == [("row 2", "logprobs")]
    assert report.completions == 5


def test_datasets_folder_with_wrong_types_or_splits_is_refused(tmp_path):
    import datasets

    records = make_records(4, seed=13)
    bad = [{**r, "completion_ids": [str(t) for t in r["completion_ids"]]} for r in records]
    src = write_datasets(tmp_path / "ds", bad)
    with pytest.raises(GenerationsImportError) as err:
        import_generations([src], tmp_path / "buf", **FACTS)
    assert "column 'completion_ids'" in str(err.value) and "expected a list of integers" in str(
        err.value
    )
    assert "datasets features" in str(err.value)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(records)})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(GenerationsImportError, match=r"DatasetDict with splits \['train'\]"):
        import_generations([tmp_path / "dd"], tmp_path / "buf", **FACTS)


# ----------------------------------------------------------------- buffer rules
def test_importing_the_same_file_twice_is_refused_unless_allowed(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", make_records(5, seed=14))
    import_generations([src], tmp_path / "buf", **FACTS)
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(src.read_bytes())
    with pytest.raises(
        GenerationsImportError,
        match=r"copy\.jsonl was already imported into this buffer by import .*a\.jsonl.*same xxh3_128",
    ):
        import_generations([copy], tmp_path / "buf")
    with pytest.raises(GenerationsImportError, match="by this import"):
        import_generations([src, copy], tmp_path / "buf2", **FACTS)
    report = import_generations([copy], tmp_path / "buf", allow_duplicate=True)
    assert report.completions == 5
    with GenerationsBuffer.open(tmp_path / "buf") as buf:
        assert buf.num_completions == 10
        assert buf.imports[0]["files"][0]["xxh3_128"] == buf.imports[1]["files"][0]["xxh3_128"]


def test_a_buffer_whose_records_name_files_by_sha256_still_refuses_them(tmp_path):
    """Buffers written before the xxh3_128 hash record each file's sha256: the import then
    hashes the new files both ways, refuses one whose sha256 is recorded, and records only
    xxh3_128 for what it imports."""
    import hashlib

    from zarrl.buffers.generations.layout import IMPORT_ATTR

    src = write_jsonl(tmp_path / "a.jsonl", make_records(5, seed=14))
    import_generations([src], tmp_path / "buf", **FACTS)
    with GenerationsBuffer.open(tmp_path / "buf") as buf:
        import_id = buf.imports[0]["id"]
    group = zarr.open_group(str(tmp_path / "buf" / "imports" / import_id), mode="r+")
    record = group.attrs[IMPORT_ATTR]
    for f in record["files"]:
        del f["xxh3_128"]
        f["sha256"] = hashlib.sha256(src.read_bytes()).hexdigest()
    group.attrs[IMPORT_ATTR] = record
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(src.read_bytes())
    with pytest.raises(GenerationsImportError, match=r"a\.jsonl\) \(same sha256 hash\)"):
        import_generations([copy], tmp_path / "buf")
    other = write_jsonl(tmp_path / "b.jsonl", make_records(3, seed=15))
    import_generations([other], tmp_path / "buf")
    with GenerationsBuffer.open(tmp_path / "buf") as buf:
        assert list(buf.imports[1]["files"][0]) == [
            "path",
            "xxh3_128",
            "records",
            "skipped",
            "tokens",
        ]
        assert buf.num_completions == 8


def test_buffer_facts_are_required_then_enforced(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", make_records(3, seed=15))
    with pytest.raises(GenerationsImportError, match="--vocab-size V --eos-id E"):
        import_generations([src], tmp_path / "buf")
    import_generations([src], tmp_path / "buf", **FACTS)
    other = write_jsonl(tmp_path / "b.jsonl", make_records(3, seed=16))
    with pytest.raises(
        GenerationsImportError, match=f"stores vocab_size={VOCAB}, the import says 50"
    ):
        import_generations([other], tmp_path / "buf", vocab_size=50)
    no_ref = write_jsonl(tmp_path / "c.jsonl", make_records(3, seed=17, ref=False))
    with pytest.raises(GenerationsImportError) as err:
        import_generations([no_ref], tmp_path / "buf")
    assert {p.field for p in err.value.problems} == {"ref_logprobs"}


def test_a_killed_import_is_invisible_and_the_next_one_is_exact(tmp_path, monkeypatch):
    """Killed after its token rows were committed, before its record: readers see nothing of
    it, and the next import counts only its own rows."""
    first = make_records(4, seed=18)
    import_generations([write_jsonl(tmp_path / "a.jsonl", first)], tmp_path / "buf", **FACTS)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    real = importer_module.put_group_attributes
    monkeypatch.setattr(importer_module, "put_group_attributes", killed)
    with pytest.raises(KeyboardInterrupt):
        import_generations(
            [write_jsonl(tmp_path / "b.jsonl", make_records(5, seed=19))], tmp_path / "buf"
        )
    monkeypatch.setattr(importer_module, "put_group_attributes", real)
    with GenerationsBuffer.open(tmp_path / "buf") as buf:
        assert buf.num_completions == 4
        assert buf.num_prompts == len(expected(first)["prompts"])
        assert len(buf.storage) > buf.num_tokens  # the killed import's rows, uncounted
        uncounted = buf.storage[:]["completion"][buf.num_tokens :]
        assert uncounted.numel() and (uncounted == -1).all()  # in no completion's windows
        _check_holds(buf, first)
    third = make_records(6, seed=20)
    import_generations([write_jsonl(tmp_path / "b.jsonl", third)], tmp_path / "buf")
    with GenerationsBuffer.open(tmp_path / "buf") as buf:
        _check_holds(buf, first + third)
        completion = buf.storage[:]["completion"]
        r0 = buf.imports[1]["rows"][0]  # the third import's rows begin past the killed ones
        assert r0 > 4 and completion[r0:].unique().tolist() == list(range(4, 10))


def test_field_map_errors_name_the_entry():
    from zarrl.buffers.generations import parse_field_map

    assert parse_field_map("a=reward, trl") == {
        "a": "reward",
        "sampling_per_token_logps": "logprobs",
        "ref_per_token_logps": "ref_logprobs",
        "rewards": "reward",
    }
    with pytest.raises(ValueError, match="'oops' is not old=new"):
        parse_field_map("oops")
    with pytest.raises(ValueError, match=r"\['score'\] are not schema fields"):
        parse_field_map("reward=score")


def test_a_damaged_import_record_is_named(tmp_path):
    from zarrl.buffers import StoreFormatError
    from zarrl.buffers.store_io import put_group_attributes

    import_generations(
        [write_jsonl(tmp_path / "a.jsonl", make_records(4, seed=25))], tmp_path / "b", **FACTS
    )
    ((name, group),) = zarr.open_group(str(tmp_path / "b" / "imports"), mode="a").groups()
    record = dict(group.attrs["zarrl_generations_import"])
    put_group_attributes(group, {"zarrl_generations_import": {**record, "rows": [0, "x"]}})
    with pytest.raises(StoreFormatError, match=rf"imports/{name}/zarr.json: .*rows=\[0, 'x'\]"):
        GenerationsBuffer.open(tmp_path / "b")
    put_group_attributes(group, {"zarrl_generations_import": {**record, "completions": [0, 9]}})
    with pytest.raises(
        StoreFormatError, match=rf"imports/{name}/completion_length: 4 entries, the record says 9"
    ):
        GenerationsBuffer.open(tmp_path / "b")
    root = zarr.open_group(str(tmp_path / "b"), mode="a")
    put_group_attributes(group, {"zarrl_generations_import": record})
    import_generations(
        [write_jsonl(tmp_path / "c.jsonl", make_records(2, seed=26))], tmp_path / "b"
    )
    (later,) = [g for n, g in root["imports"].groups() if n != name]
    second = dict(later.attrs["zarrl_generations_import"])
    r0, r1 = second["rows"]
    overlapping = {**second, "rows": [r0 - 1, r1 - 1]}  # shares a row with the first import
    put_group_attributes(later, {"zarrl_generations_import": overlapping})
    with pytest.raises(StoreFormatError, match=rf"rows start at {r0 - 1}, inside the rows"):
        GenerationsBuffer.open(tmp_path / "b")
    put_group_attributes(later, {"zarrl_generations_import": second})
    facts = dict(root.attrs["zarrl_generations"])
    put_group_attributes(root, {"zarrl_generations": {**facts, "eos_id": VOCAB}})
    with pytest.raises(StoreFormatError, match="eos_id is not below vocab_size"):
        GenerationsBuffer.open(tmp_path / "b")


def test_unique_chunks_matches_torch_unique():
    from zarrl.buffers.chunk_pool import unique_chunks

    for chunks in (
        torch.tensor([0, 0, 1, 1, 1, 4, 9]),  # sorted: an append's chunks
        torch.tensor([3, 1, 3, 0, 1]),
        torch.tensor([5]),
        torch.zeros(0, dtype=torch.int64),
    ):
        assert torch.equal(unique_chunks(chunks), torch.unique(chunks))


def test_a_second_import_while_one_runs_is_refused(tmp_path):
    import fcntl

    src = write_jsonl(tmp_path / "a.jsonl", make_records(3, seed=26))
    (tmp_path / "b").mkdir()
    held = os.open(tmp_path / "b", os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running import holds it
    with pytest.raises(GenerationsImportError, match="another import into this buffer"):
        import_generations([src], tmp_path / "b", **FACTS)
    os.close(held)
    assert import_generations([src], tmp_path / "b", **FACTS).completions == 3
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["imports", "tokens", "zarr.json"]


def test_a_version_1_buffer_is_read_and_appended_with_its_own_leaves(tmp_path, monkeypatch):
    """Format version 1 buffers repeat per-completion values on every token row; an import
    into one writes those leaves too (its storage refuses rows without them), and the reader
    returns the same batches."""
    first, second = make_records(6, seed=30), make_records(5, seed=31)
    monkeypatch.setattr(token_sink, "legacy_tokens", lambda root: True)  # as v1 wrote
    import_generations([write_jsonl(tmp_path / "a.jsonl", first)], tmp_path / "buf", **FACTS)
    monkeypatch.undo()
    tokens = zarr.open_group(str(tmp_path / "buf" / "tokens"), mode="r")
    assert "log_reward" in tokens and "terminated" in tokens["next"]
    import_generations([write_jsonl(tmp_path / "b.jsonl", second)], tmp_path / "buf")
    with GenerationsBuffer.open(tmp_path / "buf") as buf:
        _check_holds(buf, first + second)
    tokens = zarr.open_group(str(tmp_path / "buf" / "tokens"), mode="r")
    lengths = [len(r["completion_ids"]) for r in first + second]
    rows = sum(lengths)
    want = np.repeat(np.float32(expected(first + second)["log_reward"]), lengths)
    assert np.array_equal(tokens["log_reward"][:rows], want)


def test_the_import_arrays_are_fsynced_before_the_record(tmp_path, fsync_events):
    """A power cut after the record's write must not lose the arrays it refers to: every file
    of the import group is fsynced before the record's ``zarr.json`` is renamed into place."""
    buffer = (tmp_path / "buf").resolve()
    import_generations(
        [write_jsonl(tmp_path / "a.jsonl", make_records(5, seed=32))], buffer, **FACTS
    )
    ((name, _),) = zarr.open_group(str(buffer / "imports"), mode="r").groups()
    group = buffer / "imports" / name
    record_at = max(
        i
        for i, (kind, p) in enumerate(fsync_events)
        if kind == "commit" and p == group / "zarr.json"
    )
    fsynced = {p for kind, p in fsync_events[:record_at] if kind == "fsync"}
    arrays = {p for p in group.rglob("*") if p.is_file() and p.parent != group}
    assert arrays and arrays <= fsynced
    # the group's own document and entry, imports/ and the facts of the new buffer too
    assert {group.parent, group.parent / "zarr.json", buffer, buffer / "zarr.json"} <= fsynced


def test_a_parquet_file_read_in_batches_gives_the_columns_of_the_whole_table(tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    from zarrl.buffers.generations import readers
    from zarrl.buffers.generations.records import concat_columns

    records = make_records(23, seed=40)
    records[4]["completion_ids"] = None  # a null: reported with its row in its own batch
    src = write_parquet(tmp_path / "a.parquet", records)
    monkeypatch.setattr(readers, "PARQUET_BATCH_RECORDS", 5)
    blocks = list(readers.read_parquet(src, {}))
    assert len(blocks) == 5
    (table,) = pq.read_table(src).combine_chunks().to_batches()  # the whole file, one batch
    sources = readers.arrow_sources(table.schema.names, {})
    whole = readers.columns_from_arrow(table, sources, 0, str(src))
    batched = concat_columns(blocks)
    for name in ("prompt_tok", "comp_tok", "comp_len", "logp", "ref", "reward", "location"):
        assert np.array_equal(getattr(batched, name), getattr(whole, name), equal_nan=True), name
    assert batched.pre_problems == whole.pre_problems
    assert [p.where for p in batched.pre_problems] == ["row 4"]


@pytest.fixture
def small_chunks(monkeypatch):
    """Blocks of 4 Parquet records and token chunks of 8 rows: an import of a few dozen
    records appends whole chunks in bulk (written ahead) before its last blocks are read."""
    from zarrl.buffers.generations import readers

    monkeypatch.setattr(readers, "PARQUET_BATCH_RECORDS", 4)
    monkeypatch.setattr(token_sink, "TOKEN_CHUNK_ROWS", 8)


def test_a_bad_row_in_a_late_block_commits_nothing(tmp_path, small_chunks, monkeypatch):
    first = make_records(5, seed=41)
    buf = tmp_path / "buf"
    import_generations([write_parquet(tmp_path / "a.parquet", first)], buf, **FACTS)
    bulk = []
    real_append, real_add = token_sink.BulkAppender.append, token_sink.TokenSink.add

    def add_then_wait(self, cols, has_ref):  # the storage opens before the next block is read
        real_add(self, cols, has_ref)
        self.opened()

    monkeypatch.setattr(token_sink.TokenSink, "add", add_then_wait)
    monkeypatch.setattr(
        token_sink.BulkAppender,
        "append",
        lambda self, rows: (bulk.append(len(rows)), real_append(self, rows)),
    )
    records = make_records(40, seed=42, min_len=3)
    records[37]["logprobs"][1] = 0.5
    src = write_parquet(tmp_path / "b.parquet", records)
    with pytest.raises(GenerationsImportError) as err:
        import_generations([src], buf)
    assert [(p.where, p.field) for p in err.value.problems] == [("row 37", "logprobs")]
    assert sum(bulk) >= 3 * 8  # earlier blocks' rows were appended before the bad one was read
    with GenerationsBuffer.open(buf) as reader:
        assert reader.num_completions == 5 and len(reader.imports) == 1
        assert len(reader.storage) == reader.num_tokens  # not even uncounted rows
        _check_holds(reader, first)
    report = import_generations([src], buf, on_error="skip")
    assert report.skipped == 1
    with GenerationsBuffer.open(buf) as reader:
        _check_holds(reader, first + records[:37] + records[38:])


def test_a_failed_first_import_leaves_no_buffer(tmp_path, small_chunks):
    records = make_records(40, seed=46, min_len=3)
    records[38]["completion_ids"][0] = VOCAB  # outside the vocabulary, in the last block
    src = write_parquet(tmp_path / "a.parquet", records)
    with pytest.raises(GenerationsImportError, match="row 38"):
        import_generations([src], tmp_path / "buf", **FACTS)
    assert not GenerationsBuffer_exists(tmp_path / "buf")
    assert not list((tmp_path / "buf").rglob("c.*"))  # no chunk of the token storage either
    good = make_records(6, seed=47)
    import_generations([write_parquet(tmp_path / "b.parquet", good)], tmp_path / "buf", **FACTS)
    with GenerationsBuffer.open(tmp_path / "buf") as reader:
        _check_holds(reader, good)


def test_an_import_killed_mid_bulk_append_leaves_the_buffer_as_before(
    tmp_path, small_chunks, monkeypatch
):
    """Interrupted after whole chunks were written past the token storage's commit (the
    storage is abandoned: closed with nothing more written, as a killed process leaves it):
    readers see the buffer as before, and the next import overwrites the leftovers exactly."""
    first = make_records(6, seed=43)
    buf = tmp_path / "buf"
    import_generations([write_parquet(tmp_path / "a.parquet", first)], buf, **FACTS)
    with GenerationsBuffer.open(buf) as reader:
        rows_before = len(reader.storage)
    calls = []
    real = token_sink.TokenSink.add

    def killed_at_the_fifth_block(self, cols, has_ref):
        calls.append(cols.n)
        if len(calls) == 5:
            self.storage.chunk_writer.land(wait=True)  # the chunks are on disk
            raise KeyboardInterrupt
        real(self, cols, has_ref)
        self.opened()  # the storage opens before the next block is read

    monkeypatch.setattr(token_sink.TokenSink, "add", killed_at_the_fifth_block)
    second = make_records(40, seed=44, min_len=3)
    with pytest.raises(KeyboardInterrupt):
        import_generations([write_parquet(tmp_path / "b.parquet", second)], buf)
    monkeypatch.undo()
    chunk_files = sorted(p.name for p in (buf / "tokens" / "action").glob("c.*"))
    assert len(chunk_files) > -(rows_before // -8)  # chunks written past the commit
    with GenerationsBuffer.open(buf) as reader:
        assert len(reader.storage) == rows_before
        _check_holds(reader, first)
    third = make_records(30, seed=45, min_len=3)
    import_generations([write_parquet(tmp_path / "c.parquet", third)], buf)
    with GenerationsBuffer.open(buf) as reader:
        _check_holds(reader, first + third)
