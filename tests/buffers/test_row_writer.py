"""The write path (``buffers/row_writer.py``) and the parts it is built with
(``buffers/assembly.py``), tested through their own methods, without a ``ZarrStorage``."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from zarrl.buffers.assembly import assemble, check_arguments, stored_shape
from zarrl.buffers.errors import StoreFormatError
from zarrl.buffers.ring import Ring
from zarrl.buffers.row_writer import Layout, Written


class Host:
    """The commit options and length a storage offers its parts (``assembly.Host``)."""

    durability = commit_durability = "process"
    flush_every_rows = flush_every_seconds = None
    min_commit_interval = 0.0
    gc_grace_seconds = 10.0

    def __init__(self) -> None:
        self.length = 0
        self.setups: list[bool] = []

    def __len__(self) -> int:
        return self.length


def parts_of(path, max_size: int = 16, chunk_rows: int = 4, mode: str = "w"):
    """``(host, ring, parts)`` of a store at ``path`` built as ``ZarrStorage`` builds them."""
    host, ring = Host(), Ring(max_size)

    def setup(header, create: bool = False) -> None:
        parts.reader.setup(header, create)
        host.setups.append(create)

    parts, _ = assemble(
        host,
        ring,
        path,
        mode,
        storage_options=None,
        layout=Layout(1, chunk_rows, None, False),
        compressors=None,
        cache="ram",
        cache_device=torch.device("cpu"),
        device=torch.device("cpu"),
        existsok=False,
        setup=setup,
    )
    return host, ring, parts


def rows(start: int, n: int) -> TensorDict:
    obs = torch.arange(start, start + n, dtype=torch.float32)[:, None].expand(n, 3).contiguous()
    return TensorDict({"obs": obs, "step": torch.arange(start, start + n)}, batch_size=[n])


def test_the_first_write_infers_the_layout_and_stages_the_rows(tmp_path):
    host, ring, parts = parts_of(tmp_path / "w.zarr")
    assert parts.log.header is None
    written = parts.rows.write(torch.arange(6), rows(0, 6), append=True, length=0)
    assert isinstance(written, Written) and written.elements == 6
    assert torch.equal(written.cursor, torch.arange(6))
    assert host.setups == [True]  # the layout was set up once, creating the arrays
    assert parts.log.header.chunk_rows == 4 and set(parts.log.header.schema) == {"obs", "step"}
    got = parts.gatherer.gather(torch.tensor([5, 0, 3]))
    assert torch.equal(got["step"], torch.tensor([5, 0, 3]))
    assert torch.equal(got["obs"][:, 2], torch.tensor([5.0, 0.0, 3.0]))


def test_an_int_cursor_writes_one_row_and_a_slice_its_positions(tmp_path):
    _, _, parts = parts_of(tmp_path / "i.zarr")
    one = parts.rows.write(2, rows(7, 1)[0], append=True, length=0)
    assert torch.equal(one.cursor, torch.tensor([2])) and one.elements == 1
    span = parts.rows.write(slice(4, 7), rows(20, 3), append=True, length=1)
    assert torch.equal(span.cursor, torch.arange(4, 7)) and span.elements == 3
    got = parts.gatherer.gather(torch.tensor([2, 4, 6]))["step"]
    assert torch.equal(got, torch.tensor([7, 20, 22]))


def test_an_empty_extend_writes_and_initializes_nothing(tmp_path):
    host, _, parts = parts_of(tmp_path / "e.zarr")
    assert parts.rows.write(torch.arange(0), rows(0, 0), append=True, length=0) is None
    assert parts.log.header is None and host.setups == []


def test_refused_data_moves_the_writers_back_and_writes_nothing(tmp_path):
    _, ring, parts = parts_of(tmp_path / "r.zarr")
    parts.rows.write(torch.arange(4), rows(0, 4), append=True, length=0)
    refused: list[int] = []
    bad = rows(4, 3)
    bad["obs"] = torch.zeros(3, 5)  # the stored rows have 3 features
    with pytest.raises(ValueError, match="obs"):
        parts.rows.write(torch.arange(4, 7), bad, append=True, length=4, on_refusal=refused.append)
    assert refused == [3]
    assert ring.write_count == 4  # nothing was staged
    with pytest.raises(ValueError, match="2 positions for 3 rows"):
        parts.rows.write(torch.arange(2), rows(0, 3), append=False, length=4)


def test_a_sub_row_write_rewrites_the_selected_elements_of_whole_rows(tmp_path):
    _, _, parts = parts_of(tmp_path / "p.zarr")
    parts.rows.write(torch.arange(4), rows(0, 4).select("obs"), append=True, length=0)
    patch = TensorDict({"obs": torch.tensor([-1.0, -2.0])}, [2])
    written = parts.rows.write((torch.tensor([1, 3]), 2), patch, append=False, length=4)
    assert written == Written(None, 0)  # the writers' cursor does not move
    obs = parts.gatherer.gather(torch.arange(4))["obs"]
    assert torch.equal(obs[:, 2], torch.tensor([0.0, -1.0, 2.0, -2.0]))
    assert torch.equal(obs[:, :2], torch.arange(4.0)[:, None].expand(4, 2))


def test_clear_forgets_the_rows_and_restarts_the_ring_at_the_next_chunk(tmp_path):
    _, ring, parts = parts_of(tmp_path / "c.zarr")
    parts.rows.write(torch.arange(6), rows(0, 6), append=True, length=0)
    parts.rows.clear()
    assert ring.live_len() == 0 and ring.base == 8  # chunk 1 was partly written: chunk 2 next
    assert parts.index.gather("step", torch.arange(0)).numel() == 0


def test_the_arguments_a_storage_does_not_support_are_named():
    for args, message in (
        ((0, None, None, False), "max_size must be a positive int"),
        ((4, 0, None, False), "chunk_rows must be a positive int"),
        ((4, None, "disk", False), "cache must be None, 'ram'"),
        ((4, None, None, True), "shared_init=True"),
    ):
        with pytest.raises(ValueError, match=message):
            check_arguments(*args)


def test_assembly_refuses_a_group_that_is_not_a_zarrl_store_naming_it(tmp_path):
    import zarr

    zarr.open_group(tmp_path / "other.zarr", mode="w").attrs["x"] = 1
    with pytest.raises(StoreFormatError, match="other.zarr"):
        parts_of(tmp_path / "other.zarr", mode="r+")


def test_stored_shape_reads_the_capacity_and_batch_dims_a_store_was_made_with(tmp_path):
    _, _, parts = parts_of(tmp_path / "s.zarr", max_size=12)
    parts.rows.write(torch.arange(3), rows(0, 3), append=True, length=0)
    parts.committer.flush("process", 3)
    assert stored_shape(tmp_path / "s.zarr", None) == (12, 1)
