"""Checkpoints (``buffers/checkpointer.py``) through its public functions."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from zarrl.buffers import ZarrStorage, checkpointer
from zarrl.buffers.errors import StoreFormatError


def rows(start: int, n: int) -> TensorDict:
    return TensorDict({"obs": torch.arange(start, start + n, dtype=torch.float32)}, [n])


def test_replace_content_copies_the_store_and_hands_its_commit_to_adopt(tmp_path):
    with ZarrStorage(16, path=tmp_path / "src.zarr", chunk_rows=4) as src:
        src.set(torch.arange(6), rows(100, 6))
    target = ZarrStorage(16, path=tmp_path / "dst.zarr", chunk_rows=4)
    target.set(torch.arange(3), rows(0, 3))
    adopted = []
    source = ZarrStorage.open(tmp_path / "src.zarr", mode="r")
    checkpointer.replace_content(target, source.log.group, lambda h, c: adopted.append((h, c)))
    ((header, commit),) = adopted
    assert header.chunk_rows == 4 and (commit.write_count, commit.length) == (6, 6)
    assert target.log.header is header
    target.guard.closed = True  # abandoned: its parts did not adopt the copied commit
    reread = ZarrStorage.open(tmp_path / "dst.zarr", mode="r")
    assert reread.get(torch.arange(6))["obs"].tolist() == list(range(100, 106))
    source.close()
    reread.close()


def test_load_state_dict_returns_the_length_and_refuses_a_store_that_moved_on(tmp_path):
    storage = ZarrStorage(16, path=tmp_path / "s.zarr", chunk_rows=4)
    storage.set(torch.arange(5), rows(0, 5))
    state = checkpointer.state_dict(storage)
    assert state["_len"] == 5 and state["commit"]["write_count"] == 5
    assert checkpointer.load_state_dict(storage, state, adopt=None) == 5  # same store: no copy
    storage.set(torch.arange(5, 7), rows(5, 2))
    storage.flush()
    with pytest.raises(ValueError, match="write_count=7 but the state dict expects .*=5"):
        checkpointer.load_state_dict(storage, state, adopt=None)
    storage.close()


def test_loads_with_hooks_returns_the_hooked_rows_and_changes_nothing(tmp_path):
    with ZarrStorage(16, path=tmp_path / "ckpt.zarr", chunk_rows=4) as saved:
        saved.set(torch.arange(4), rows(10, 4))
    storage = ZarrStorage(16, path=tmp_path / "live.zarr", chunk_rows=4)
    storage.set(torch.arange(2), rows(0, 2))
    storage.register_load_hook(lambda data, out=None: data * 2)
    data = checkpointer.loads(storage, tmp_path / "ckpt.zarr", adopt=None)
    assert data["obs"].tolist() == [20.0, 22.0, 24.0, 26.0]
    assert storage.get(torch.arange(2))["obs"].tolist() == [0.0, 1.0] and len(storage) == 2
    storage.close()


def test_write_new_store_refuses_a_directory_that_is_not_a_zarrl_store(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(StoreFormatError):
        checkpointer.write_new_store(ZarrStorage, tmp_path / "notes", rows(0, 2), ndim=1)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    checkpointer.write_new_store(ZarrStorage, tmp_path / "new.zarr", rows(7, 3), ndim=1)
    with ZarrStorage.open(tmp_path / "new.zarr", mode="r") as written:
        assert written.get(torch.arange(3))["obs"].tolist() == [7.0, 8.0, 9.0]
