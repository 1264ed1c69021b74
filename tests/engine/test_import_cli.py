"""``zarrl import generations``: prints what was imported and skipped, exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from zarrl.buffers.generations import GenerationsBuffer
from zarrl.engine.cli import main

sys.path.insert(0, str(Path(__file__).parents[1] / "buffers"))
from generations_support import EOS, MAX_NEW, VOCAB, make_records, write_jsonl  # noqa: E402

NEW = ["--vocab-size", str(VOCAB), "--eos-id", str(EOS), "--max-new-tokens", str(MAX_NEW)]


def test_import_generations_fails_then_skips_with_reasons(tmp_path, capsys):
    records = make_records(6, seed=30)
    records[3]["logprobs"][0] = 0.5
    src = write_jsonl(tmp_path / "logs.jsonl", records)
    buf = str(tmp_path / "buf")
    assert main(["import", "generations", str(src), "--buffer", buf, *NEW]) == 1
    err = capsys.readouterr().err
    assert "1 bad record(s); nothing imported" in err
    assert f"{src}, line 4: field 'logprobs': holds a log-prob > 0" in err

    argv = ["import", "generations", str(src), "--buffer", buf, *NEW, "--on-error", "skip"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{src}: 5 records imported" in out and "1 skipped" in out
    assert f"  {src}, line 4: field 'logprobs': holds a log-prob > 0" in out
    assert "imported 5 completions" in out
    with GenerationsBuffer.open(buf) as reader:
        assert reader.num_completions == 5

    assert main(["import", "generations", str(src), "--buffer", buf]) == 1
    assert "--allow-duplicate" in capsys.readouterr().err
    assert main(["import", "generations", str(src), "--buffer", buf, "--allow-duplicate",
                 "--on-error", "skip"]) == 0  # fmt: skip
    capsys.readouterr()


def test_import_generations_field_map_and_usage_errors(tmp_path, capsys):
    records = [
        {("score" if k in ("reward", "log_reward") else k): v for k, v in r.items()}
        for r in make_records(4, seed=31)
    ]
    src = tmp_path / "logs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    buf = str(tmp_path / "buf")
    argv = ["import", "generations", str(src), "--buffer", buf, *NEW, "--field-map", "score=reward"]
    assert main(argv) == 0
    assert "imported 4 completions" in capsys.readouterr().out
    assert main(["import", "generations", str(src), "--buffer", buf, "--field-map", "bad"]) == 2
    assert "'bad' is not old=new" in capsys.readouterr().err
    assert main(["import", "generations", str(tmp_path / "none.jsonl"), "--buffer", buf]) == 1
    assert "no such file" in capsys.readouterr().err
