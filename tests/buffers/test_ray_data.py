"""``zarrl.buffers.read_ray_dataset``: a Ray Data datasource of chunk-aligned read tasks over
the committed rows of a store (local and S3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.data import ReplayBuffer
from zarrl.buffers import CorruptChunkError, ZarrStorage, read_ray_dataset
from zarrl.buffers.ray_data import datasource

R = 8


def batch(n: int, start: int = 0) -> TensorDict:
    i = torch.arange(start, start + n)
    obs = torch.stack([i.float(), i.float().sin()], -1)
    return TensorDict(
        {
            "obs": obs,
            "action": torch.stack([i, 2 * i], -1),
            ("next", "obs"): torch.where((i % 5 == 4)[:, None], -obs, obs + 1),
            ("next", "done"): (i % 5 == 4)[:, None],
        },
        batch_size=[n],
    )


def by_id(ds) -> dict[str, np.ndarray]:
    rows = ds.take_all()
    ids = np.array([r["action"][0] for r in rows])
    order = np.argsort(ids, kind="stable")
    return {k: np.stack([rows[j][k] for j in order]) for k in rows[0]}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_dataset_holds_the_committed_rows_of_the_store(ray_local, tmp_path, where, request):
    options = None
    url = str(tmp_path / "run.zarr")
    if where == "s3":
        bucket, options = request.getfixturevalue("s3")
        url = f"{bucket}/run.zarr"
    st = ZarrStorage(64, path=url, chunk_rows=R, storage_options=options, dedupe_next=True)
    rb = ReplayBuffer(storage=st)
    rb.extend(batch(90))  # the ring wrapped: rows 26..89 are live
    st.flush()
    rb.extend(batch(3, 90))  # not committed: not in the dataset
    ds = read_ray_dataset(url, storage_options=options, chunks_per_task=2)
    got = by_id(ds)
    want = batch(90)[26:]
    assert got["action"].shape == (64, 2)
    for key in want.keys(True, True):
        path = key if isinstance(key, str) else "/".join(key)
        assert np.array_equal(got[path], want[key].numpy()), path
    st.close()


def test_read_tasks_are_chunk_aligned_and_cover_the_live_rows(tmp_path):
    pytest.importorskip("ray.data", reason="ray is not installed: pip install 'zarrl[scale]'")
    path = tmp_path / "run.zarr"
    with ZarrStorage(None, path=path, chunk_rows=R) as st:
        ReplayBuffer(storage=st).extend(batch(43))
    tasks = datasource(path, chunks_per_task=2).get_read_tasks(parallelism=100)
    rows = [t.metadata.num_rows for t in tasks]
    assert rows == [16, 16, 11] and sum(rows) == 43


def test_a_corrupt_chunk_fails_its_read_task_naming_the_array(ray_local, tmp_path):
    path = tmp_path / "run.zarr"
    with ZarrStorage(None, path=path, chunk_rows=R) as st:
        ReplayBuffer(storage=st).extend(batch(32))
    chunk = path / "obs" / "c.1.0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    (task,) = [t for t in datasource(path, chunks_per_task=1).get_read_tasks(4)][1:2]
    with pytest.raises(CorruptChunkError, match=r"array 'obs', chunks 1\.\.1"):
        list(task())


def test_the_dataset_of_a_segmented_buffer_is_the_union_of_its_segments(ray_local, tmp_path):
    from zarrl.buffers.segments import SegmentedReader, open_segment_writer

    root = tmp_path / "buf"
    for name, start, n in (("a", 0, 20), ("b", 100, 13)):
        with open_segment_writer(root, name, chunk_rows=R) as st:
            ReplayBuffer(storage=st).extend(batch(n, start))
    got = by_id(read_ray_dataset(str(root)))
    with SegmentedReader(root) as reader:
        want = reader.get(torch.arange(len(reader)))
    assert np.array_equal(got["action"], want["action"].numpy())
    assert np.array_equal(got["next/obs"], want["next", "obs"].numpy())
