"""docs/algorithms.md: its runnable example runs and meets its own assertions."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "algorithms.md"


def _runnable_example() -> str:
    text = DOC.read_text()
    section = text.split("## Runnable example", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Runnable example section holds one python block"
    return blocks[0]


def test_runnable_example_in_docs_runs(capsys):
    exec(compile(_runnable_example(), str(DOC), "exec"), {"__name__": "__docs__"})
    assert "total variation to the exact optimum" in capsys.readouterr().out
