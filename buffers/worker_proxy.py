"""Writing to a ``ZarrStorage`` from other processes (``MultiSyncCollector`` workers...).

A ``ZarrStorage`` holds open zarr stores, a chunk cache and threads, so it stays in the process
that built it (the *owner*). Pickled to a process that ``multiprocessing`` is starting (spawn or
forkserver, as collectors do), it unpickles there as a ``ZarrWriterProxy``: ``set`` ships the rows
to the owner over a pipe (TensorDict leaves as pickled numpy arrays) and blocks until the
owner's pump thread has applied them with the real ``ZarrStorage.set`` (schema checks, commits as
usual), so once a worker's ``extend`` returns its rows are in the storage. Errors raised by the
owner are re-raised in the worker. Sampling stays in the owner.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import threading
import weakref
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, is_tensor_collection
from torchrl.data.replay_buffers.storages import Storage

from ._compat_torchrl import attached_buffers, shared_counters
from .round_robin import rollback_writers

_POLL_SECONDS = 0.5


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _pack(data: Any) -> tuple:
    """TensorDicts of plain tensors travel as numpy leaves (pickled an order of magnitude
    faster than tensors); anything else is pickled as is."""
    if is_tensor_collection(data):
        leaves = {}
        for key, leaf in data.items(include_nested=True, leaves_only=True):
            if type(leaf) is not torch.Tensor or leaf.dtype == torch.bfloat16 or leaf.is_nested:
                return ("object", data)
            leaves[key] = leaf.detach().cpu().numpy()
        return ("leaves", tuple(data.batch_size), leaves)
    return ("object", data)


def _unpack(packed: tuple) -> Any:
    if packed[0] == "leaves":
        _, batch_size, leaves = packed
        return TensorDict({k: torch.from_numpy(v) for k, v in leaves.items()}, batch_size)
    return packed[1]


def _rows_in(cursor: Any) -> int | None:
    """Rows a round-robin ``set`` at ``cursor`` appends (``None``: not a round-robin write)."""
    if isinstance(cursor, (int, np.integer)):
        return 1
    if isinstance(cursor, torch.Tensor):
        return cursor.numel()
    return None


class WriteChannel:
    """Owner side: two pipes shared with the proxies (requests, replies; read and written
    directly, no feeder threads) and the pump thread that applies the requests to the storage
    (held by weak reference: the channel never keeps it alive)."""

    def __init__(self, storage: Any) -> None:
        ctx = multiprocessing.get_context("spawn")  # its locks may go to any child process
        self.owner_pid = os.getpid()
        self.where = storage.where
        self.requests_in, self.requests_out = ctx.Pipe(duplex=False)
        self.replies_in, self.replies_out = ctx.Pipe(duplex=False)
        self.lock = ctx.Lock()  # one round trip at a time: each reply reaches its sender
        self.seq = ctx.Value("q", 0, lock=False)
        self.closed = ctx.Event()
        self._thread = threading.Thread(
            target=_pump,
            args=(weakref.ref(storage), self.requests_in, self.replies_out, self.closed),
            name=f"zarrl-writes {self.where}",
            daemon=True,
        )
        self._thread.start()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_thread"]  # the pump stays in the owner
        return state

    @property
    def pumping(self) -> bool:
        """Whether the pump thread still applies requests."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stops the pump after the request being applied (waiting workers get an error)."""
        self.closed.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)


def _pump(ref: weakref.ref, requests, replies, closed) -> None:
    while not closed.is_set():
        if not requests.poll(_POLL_SECONDS):
            storage = ref()
            if storage is None or storage.closed:
                closed.set()
            storage = None
            continue
        try:
            msg = requests.recv_bytes()
        except EOFError:  # every process holding the requests' writing end is gone
            closed.set()
            break
        seq = int.from_bytes(msg[:8], "little")
        error = None
        try:
            cursor, packed, set_cursor = pickle.loads(msg[8:])
            data = _unpack(packed)
            storage = ref()
            if storage is None or storage.closed:
                raise RuntimeError("the storage was closed in its owning process")
            storage.apply_worker_write(cursor, data, set_cursor)
        except BaseException as err:  # reported to the worker, the pump keeps serving
            error = (type(err), str(err))
        finally:
            storage = data = packed = msg = None
        try:
            reply = pickle.dumps((seq, error))
        except Exception:  # an exception type pickle cannot name
            reply = pickle.dumps((seq, (RuntimeError, f"{error[0].__name__}: {error[1]}")))
        with contextlib.suppress(BrokenPipeError):  # its worker died waiting for it
            replies.send_bytes(reply)


def new_proxy() -> ZarrWriterProxy:
    """Unpickling entry point of ``ZarrStorage.__reduce__`` (the state follows)."""
    return ZarrWriterProxy.__new__(ZarrWriterProxy)


def proxy_state(storage: Any, channel: WriteChannel) -> dict[str, Any]:
    """The state of the ``ZarrWriterProxy`` that ``storage`` becomes in a process being
    started: its channel, shape, the buffers it is attached to, and TorchRL's shared length,
    revision and cursor values."""
    header = storage.log.header
    return {
        "_channel": channel,
        "max_size": storage.max_size,
        "ndim": storage.ndim,
        "device": storage.device,
        "_growing": storage.ring.growing,
        "_tail": tuple(header.tail) if header is not None else None,
        "_compilable": False,
        "_rng": None,
        **shared_counters(storage),
        "_attached_entities_list": attached_buffers(storage),
    }


class ZarrWriterProxy(Storage):
    """What a ``ZarrStorage`` becomes in a process it is sent to: a write-only storage whose
    ``set`` is applied by the owning process (blocking until it is). Shares the owner's length,
    last cursor and mutation revision, so ``len`` and the writers' bookkeeping stay exact."""

    initialized = True

    # ------------------------------------------------------------------ writes
    def set(self, cursor: Any, data: Any, *, set_cursor: bool = True) -> None:
        on_device = is_tensor_collection(data) or isinstance(data, torch.Tensor)
        if on_device and data.device is not None and data.device.type != "cpu":
            data = data.to("cpu")  # the owner stores CPU copies; no CUDA IPC handles
        payload = pickle.dumps((cursor, _pack(data), set_cursor), protocol=pickle.HIGHEST_PROTOCOL)
        error = self._round_trip(payload)
        if error is None:
            return
        err_type, message = error
        n = _rows_in(cursor)
        if set_cursor and n is not None and issubclass(err_type, ValueError):
            rollback_writers(self._attached_entities, n, self._cap0_for(data))
        text = f"{self._where} (written by process {self._channel.owner_pid}): {message}"
        try:
            exc = err_type(text)
        except Exception:
            exc = RuntimeError(f"{err_type.__name__}: {text}")
        raise exc

    def _round_trip(self, payload: bytes) -> tuple | None:
        ch = self._channel
        while not ch.lock.acquire(timeout=_POLL_SECONDS):
            self._check_owner()
        try:
            self._check_owner()
            ch.seq.value += 1
            seq = ch.seq.value
            ch.requests_out.send_bytes(seq.to_bytes(8, "little") + payload)
            while True:
                if not ch.replies_in.poll(_POLL_SECONDS):
                    self._check_owner()
                    continue
                reply_seq, error = pickle.loads(ch.replies_in.recv_bytes())
                if reply_seq == seq:  # older replies answer requests whose sender died
                    return error
        finally:
            ch.lock.release()

    def _check_owner(self) -> None:
        ch = self._channel
        if ch.closed.is_set() or not _alive(ch.owner_pid):
            raise RuntimeError(
                f"{self._where}: the owning process ({ch.owner_pid}) closed the storage or "
                "exited; this write was not applied"
            )

    # ------------------------------------------------------------ bookkeeping
    @property
    def _where(self) -> str:
        return self._channel.where

    def __len__(self) -> int:
        return self._len_value.value

    def _cap0_for(self, data: Any) -> int | None:
        if self._growing:
            return None
        return self._max_size_along_dim0(batched_data=data)

    def _max_size_along_dim0(self, *, single_data: Any = None, batched_data: Any = None) -> int:
        if self.ndim == 1:
            return self.max_size
        tail = self._tail
        if tail is None:
            data = single_data if single_data is not None else batched_data
            if not (is_tensor_collection(data) or isinstance(data, torch.Tensor)):
                data = data[0] if isinstance(data, list) else data
                batched_data = None
            shape = data.shape[: self.ndim]
            tail = tuple(shape[1:]) if batched_data is not None else tuple(shape[: self.ndim - 1])
            self._tail = tail
        return -(self.max_size // -max(1, int(np.prod(tail))))

    @property
    def shape(self) -> torch.Size:
        if self.ndim == 1:
            return torch.Size([len(self)])
        if self._tail is None:
            raise RuntimeError(f"{self._where}: the row shape is not known before a write")
        per_row = max(1, int(np.prod(self._tail)))
        return torch.Size([-(len(self) // -per_row), *self._tail])

    # ------------------------------------------------------ owner-only parts
    def _owner_only(self, what: str) -> NotImplementedError:
        return NotImplementedError(
            f"{what} is not available in a worker process: {self._where} is written here through "
            f"process {self._channel.owner_pid}, which owns it; sample, checkpoint or empty the "
            "buffer there (other processes may read it with ZarrStorage.open(path, mode='r'))"
        )

    def get(self, index: Any) -> Any:
        raise self._owner_only("reading rows")

    def contains(self, item: Any) -> bool:
        raise self._owner_only("contains")

    def state_dict(self) -> dict[str, Any]:
        raise self._owner_only("state_dict")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        raise self._owner_only("load_state_dict")

    def _empty(self) -> None:
        raise self._owner_only("empty")

    def dumps(self, path: Any) -> None:
        raise self._owner_only("dumps")

    def loads(self, path: Any) -> None:
        raise self._owner_only("loads")

    def flush(self) -> None:
        """Nothing to do: every ``set`` returned after the owner applied it."""

    def __repr__(self) -> str:
        return (
            f"ZarrWriterProxy(path={self._where}, len={len(self)}, "
            f"owner_pid={self._channel.owner_pid})"
        )
