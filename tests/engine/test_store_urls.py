"""The engine's buffer paths take store URLs (``engine/registry.py``): ``zarrl collect --buffer
memory://...`` writes into that store, never into a local folder named after the scheme."""

from __future__ import annotations

import pytest
from zarrl.buffers import ZarrStorage

pytest.importorskip("obstore", reason="obstore is not installed: pip install 'zarrl[scale]'")


def test_zarrl_collect_writes_a_store_url_not_a_local_folder(tmp_path, monkeypatch):
    from zarrl.engine.cli import main

    monkeypatch.chdir(tmp_path)
    url = f"memory://{tmp_path.name}/cp.zarr"
    argv = ["collect", "--env", "CartPole-v1", "--frames", "300", "--buffer", url, "--quiet"]
    assert main(argv) == 0
    assert list(tmp_path.iterdir()) == []  # before: a folder 'memory:' here
    with ZarrStorage.open(url, "r") as storage:
        assert len(storage) == 300
