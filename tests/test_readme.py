"""The README's stand-alone buffer example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_buffer_example_runs_and_samples_whole_slices(tmp_path, monkeypatch):
    section = README.read_text().split("## The Zarr replay buffer on its own", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    episodes = namespace["batch"]["episode"].reshape(8, 8)
    assert (episodes == episodes[:, :1]).all()
    assert (tmp_path / "runs" / "example.zarr" / "zarr.json").exists()
