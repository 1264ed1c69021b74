"""The private TorchRL internals zarrl relies on exist in the versions it was checked on.

``buffers/_compat_torchrl.py`` is the one place that reads them; this test names each one, so a
TorchRL release that moves one fails here, with its name, instead of deep inside a storage call.
"""

from __future__ import annotations

import torch
import torchrl
from torchrl.data import LazyTensorStorage, ReplayBuffer, TensorDictPrioritizedReplayBuffer
from zarrl.buffers import _compat_torchrl as compat

#: TorchRL releases whose internals ``_compat_torchrl`` was checked against
CHECKED_TORCHRL = ("0.14.1",)


def test_the_installed_torchrl_is_a_checked_release():
    assert torchrl.__version__.split("+")[0] in CHECKED_TORCHRL, (
        f"torchrl {torchrl.__version__} is not among the releases buffers/_compat_torchrl.py was "
        f"checked on ({', '.join(CHECKED_TORCHRL)}): check each function there, then add it"
    )


def test_every_private_name_the_compat_module_reads_exists():
    storage = LazyTensorStorage(8)
    assert hasattr(storage.checkpointer, "_save_hooks")
    assert hasattr(storage.checkpointer, "_load_hooks")
    assert callable(getattr(ReplayBuffer, "_initialize_prioritized_sampler", None))
    rb = TensorDictPrioritizedReplayBuffer(alpha=0.7, beta=0.5, storage=storage)
    for name in ("_prioritized_sampler", "_prioritized_sampler_write_count", "_replay_lock"):
        assert name in rb.__dict__, name
    learner_side = rb.__dict__["_prioritized_sampler"] or rb.__dict__["_sampler"]
    assert compat.buffer_sampler(rb) is learner_side
    assert compat.buffer_lock(rb) is rb.__dict__["_replay_lock"]
    plain = ReplayBuffer(storage=LazyTensorStorage(8))
    assert compat.buffer_sampler(plain) is not None
    assert compat.attached_buffers(plain.storage) == [plain]  # ``_attached_entities``
    compat.set_attached_buffers(storage, [plain])
    assert compat.attached_buffers(storage) == [plain]  # ``_attached_entities_list`` read back
    counters = compat.shared_counters(storage)
    assert set(counters) == {"_len_value", "_mutation_revision_value", "_last_cursor_index_value"}
    assert all(hasattr(value, "get_lock") for value in counters.values())  # shared values


def test_the_tensordict_internals_exist_in_a_checked_release():
    import tensordict
    from tensordict import TensorDict
    from zarrl.buffers import _compat_tensordict as tdc

    assert tensordict.__version__.split("+")[0] in tdc.CHECKED_TENSORDICT, tensordict.__version__
    x = torch.arange(6.0).reshape(3, 2)
    td = tdc.td_from_leaves({"a": x}, torch.Size([3]), None)
    assert isinstance(td, TensorDict) and td.batch_size == (3,) and td["a"] is x
    loaded = []

    class Lazy(dict):
        def __getitem__(self, key):
            loaded.append(key)
            return super().__getitem__(key)

    lazy = tdc.td_with_leaf_mapping(Lazy(b=x), torch.Size([3]), None)
    assert loaded == [] and torch.equal(lazy["b"], x) and loaded == ["b"]


def test_the_zarr_internals_exist_in_a_checked_release(tmp_path):
    import zarr
    import zarr.codecs.numcodecs as numcodecs_wrappers
    from zarrl.buffers import _compat_zarr as zc

    assert zarr.__version__.split("+")[0] in zc.CHECKED_ZARR, zarr.__version__
    group = zarr.open_group(tmp_path / "g.zarr", mode="w", zarr_format=3)
    array = group.create_array("a", shape=(8,), chunks=(4,), dtype="float32")
    handle = zc.async_array(array)
    assert handle.metadata.shape == (8,) and zc.array_config(handle) is not None
    assert zc.async_group(group).metadata.attributes == {}
    sub = zc.group_at(zc.group_metadata({"k": 1}), zc.async_group(group).store_path / "s")
    assert sub.attrs.asdict() == {"k": 1} and sub.store_path.path == "s"
    zc.replace_metadata(handle, handle.metadata.update_shape((16,)))
    assert handle.metadata.shape == (16,)
    array[:4] = 1.0  # an array handle built from metadata, without reading it back
    again = zarr.Array(zc.array_at(handle.metadata, handle.store_path, zc.array_config(handle)))
    assert again.shape == (16,) and again[:4].tolist() == [1.0] * 4
    wrapped = (  # one wrapper of each kind: array->array, bytes->bytes, array->bytes
        numcodecs_wrappers.Delta(dtype="<f4"),
        numcodecs_wrappers.Zstd(level=1),
        numcodecs_wrappers.PCodec(),
    )
    for codec, kind in zip(wrapped, zc.NUMCODECS_KINDS, strict=True):
        assert isinstance(codec, kind), (codec, kind)
    for codec in zc.async_array(array).metadata.codecs:  # zarr's own codecs run synchronously
        assert zc.supports_sync(codec)
        assert hasattr(codec, "_encode_sync") and hasattr(codec, "_decode_sync")
