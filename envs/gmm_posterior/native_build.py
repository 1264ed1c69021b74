"""Compile zarrl's small C kernels (``envs/gmm_posterior/csrc``) at first use and load them with ctypes.

Each library is built once per process with the system C compiler (``$CC``, else ``cc`` or
``gcc``; ``-O3 -march=native``) into a temporary directory, then loaded; ctypes releases the GIL
during calls, so two Python threads can run a kernel on two cores. Without a compiler, when the
build fails (e.g. a CPU without the instructions a kernel needs), or when the kernel's environment
switch is ``0``, :func:`load_library` returns ``None`` and callers use their ATen path.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["SOURCE_DIR", "LazyLibrary", "load_library"]

#: Folder of the C sources shipped with the package.
SOURCE_DIR = Path(__file__).with_name("csrc")
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]
_lock = threading.Lock()


def load_library(
    name: str,
    sources: Sequence[str],
    switch: str,
    declare: Callable[[ctypes.CDLL], None],
    flags: Sequence[str] = (),
) -> ctypes.CDLL | None:
    """Build the C files ``sources`` (names in :data:`SOURCE_DIR`, concatenated into one
    translation unit) into a shared library and load it -> the library, or ``None`` when
    ``os.environ[switch] == "0"``, no compiler is found or the build fails. ``declare(lib)`` sets
    the ``argtypes``/``restype`` of its functions; ``flags``: extra compiler flags."""
    if os.environ.get(switch, "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    with _lock:
        folder = Path(tempfile.mkdtemp(prefix=f"zarrl-{name}-"))
        source, library = folder / f"{name}.c", folder / f"{name}.so"
        try:
            source.write_text("\n".join((SOURCE_DIR / s).read_text() for s in sources))
            subprocess.run(
                [compiler, *_FLAGS, *flags, str(source), "-o", str(library)],
                check=True,
                capture_output=True,
                timeout=120,
            )
            lib = ctypes.CDLL(str(library))
            declare(lib)
        except (OSError, AttributeError, subprocess.SubprocessError):
            return None
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # the loaded library stays mapped
    return lib


_UNTRIED = object()


class LazyLibrary:
    """A library made by ``build()`` at its first :meth:`get` (once per process, thread-safe).

    ``loaded`` holds the library, ``None`` when it is unavailable, or a sentinel before the first
    attempt (tests set it to ``None`` to run the ATen paths)."""

    def __init__(self, build: Callable[[], ctypes.CDLL | None]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self.loaded: object = _UNTRIED

    def get(self) -> ctypes.CDLL | None:
        if self.loaded is _UNTRIED:
            with self._lock:
                if self.loaded is _UNTRIED:
                    self.loaded = self._build()
        return self.loaded
