"""The storage guard (``buffers/guard.py``): who may write, the lock, errors naming the store."""

import errno

import pytest
from parts_support import call_while_locked
from zarrl.buffers.format import ReadOnlyStorageError
from zarrl.buffers.guard import StoreGuard, naming_store, serialized


def test_only_the_owner_of_an_open_writable_storage_may_write():
    StoreGuard("w.zarr", read_only=False).check_writable()
    with pytest.raises(ReadOnlyStorageError, match=r"r\.zarr was opened read-only"):
        StoreGuard("r.zarr", read_only=True).check_writable()
    closed = StoreGuard("c.zarr", read_only=False)
    closed.closed = True
    with pytest.raises(RuntimeError, match="c.zarr: the storage is closed"):
        closed.check_writable()
    forked = StoreGuard("f.zarr", read_only=False)
    forked.owner_pid = -1  # as seen from a forked child
    assert not forked.in_owner
    with pytest.raises(RuntimeError, match="f.zarr belongs to process -1.*'fork'"):
        forked.check_writable()


def test_os_errors_name_the_store_and_keep_their_type_and_errno():
    with pytest.raises(PermissionError) as err, naming_store("s3://b/run.zarr"):
        raise PermissionError(errno.EACCES, "Permission denied", "/x/c.0.0")
    assert str(err.value).startswith("[Errno 13] zarrl store s3://b/run.zarr: Permission denied")
    assert err.value.errno == errno.EACCES and err.value.filename == "/x/c.0.0"
    with pytest.raises(OSError, match="^already names run.zarr$"), naming_store("run.zarr"):
        raise OSError("already names run.zarr")


def test_serialized_methods_wait_for_the_lock():
    class Owner:
        guard = StoreGuard("l.zarr", read_only=False)

        @serialized
        def call(self, released) -> bool:
            return released.is_set()  # ran only once the holder let go

    owner = Owner()
    assert call_while_locked(owner.guard.lock, owner.call) == [True]
