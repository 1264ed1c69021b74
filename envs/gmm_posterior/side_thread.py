"""A second CPU thread for tensor work that can overlap a sequential loop (the diffusion sampler).

The sampler's 100 steps are small ``[N, 64]`` operations that keep one core busy; work that only
needs finished steps (scoring them under a reference network, the GELU derivatives the backward
pass will need) runs meanwhile on this thread, with its torch operations single-threaded so the
two threads share the cores instead of oversubscribing them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def side_executor() -> ThreadPoolExecutor:
    """The process-wide one-thread executor whose torch operations run with one intra-op thread.

    Created on first use; the caller's own ``torch.get_num_threads()`` is left as it was."""
    global _executor
    with _lock:
        if _executor is None:
            threads = torch.get_num_threads()
            executor = ThreadPoolExecutor(1, thread_name_prefix="zarrl-side")
            executor.submit(torch.set_num_threads, 1).result()
            torch.set_num_threads(threads)  # the worker's call also lowered the process default
            _executor = executor
    return _executor


def side_thread_helps(device: torch.device) -> bool:
    """Whether overlapping work on the side thread can pay off: a CPU device and a second core
    this process may run on."""
    if device.type != "cpu":
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) > 1


@contextmanager
def caller_single_threaded() -> Iterator[None]:
    """Run the caller's torch operations with one intra-op thread for the duration (restored after):
    while the side thread works, a second OpenMP team would only contend for the same cores."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _forget_after_fork() -> None:
    global _executor, _lock
    _executor, _lock = None, threading.Lock()  # the thread did not survive the fork


os.register_at_fork(after_in_child=_forget_after_fork)
