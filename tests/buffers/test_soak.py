"""The CI version of the soak (``benchmarks/soak.py --minutes 1``): two segment writers and a
learner SIGKILLed and restarted at random for a minute; every committed row present and
bit-exact at the end, the learner's memory bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def test_a_one_minute_soak_keeps_every_committed_row():
    run = subprocess.run(
        [sys.executable, str(SOAK), "--minutes", "1", "--writers", "2"],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout[run.stdout.index("{") :])
    assert result["kills"] >= 1 and result["rows"] >= result["committed rows reported"] > 0
    assert result["rss growth"] < 1.5  # a leak would grow with every refresh and sample
