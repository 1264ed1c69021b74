"""The README's stand-alone buffer example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)


@pytest.mark.timeout(900)  # a dozen real runs, each a fresh process: minutes on 2 busy cores
def test_every_readme_command_block_runs_as_written(tmp_path):
    """Every ```bash block of the README, pasted line by line into a fresh folder (the shipped
    configs resolve by name there), with the ``zarrl`` of this interpreter on the PATH. Lines that
    call ``make`` are checked with ``make --dry-run`` from the repository (running the suite from
    inside itself would recurse)."""
    import os
    import shutil
    import subprocess
    import sys

    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "2",
    }
    root = README.parents[0]
    blocks = _bash_blocks()
    assert len(blocks) >= 2
    for block in blocks:
        for line in block.splitlines():
            command = line.split("#", 1)[0].strip()
            if not command:
                continue
            if command.startswith("make "):
                if shutil.which("make") is None:
                    continue
                done = subprocess.run(
                    ["make", "--dry-run", *command.split()[1:]], cwd=root, capture_output=True
                )
            else:
                done = subprocess.run(
                    ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, timeout=300
                )
            assert done.returncode == 0, f"{command}\n{done.stderr.decode()[-2000:]}"
    assert (tmp_path / "runs" / "cartpole_trust_pcl" / "checkpoints" / "final.pt").is_file()


def test_readme_python_quick_start_names_its_own_run():
    section = README.read_text().split("## Quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "run.name=cp_python" in code  # never the folder the command-line lines wrote
