"""Exact GELU and its derivative in one pass over float32 CPU memory.

``GELU(h) = h·Φ(h)`` and ``GELU'(h) = Φ(h) + h·φ(h)`` share one ``exp(−h²/2)``: ``Φ`` comes from the
Abramowitz–Stegun 7.1.26 form of erf (absolute error ≤ 1.5e-7, float32 rounding level) and ``φ``
is that same exponential. ATen evaluates the two with separate erf and exp passes (about 1.2 and
3.4 ns per element on an AVX2 core); this loop does both in about a third of that, which is what
the diffusion sampler and its hand-written backward need (three ``[B·T, 64]`` GELU layers).

No subnormal float is computed: beyond ``|h| = 13`` the results are the limits (``h`` and ``1``;
``0`` and ``0`` below ``−13``, where ``|GELU| < 8e-38``), the tail is evaluated only where
``exp(−h²/2) ≥ 2e-37``, and the kernel runs with flush-to-zero / denormals-are-zero set on the
calling thread for its own duration (restored on return; the process's mode is never changed).

The C source (``envs/gmm_posterior/csrc/gelu.c``, vectorized by the compiler) is compiled once per process by
:mod:`~zarrl.envs.gmm_posterior.native_build` and called through ctypes, which releases the GIL. Without a
compiler, or with ``ZARRL_NATIVE_GELU=0``, the same functions run on ATen's ``gelu`` /
``gelu_backward``; :func:`native_gelu_available` tells which.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from .native_build import LazyLibrary, load_library

__all__ = ["gelu_", "gelu_and_grad", "native_gelu_available"]


def _declare(lib: ctypes.CDLL) -> None:
    p, n = ctypes.c_void_p, ctypes.c_int64
    lib.zarrl_gelu_and_grad.argtypes, lib.zarrl_gelu_and_grad.restype = [p, p, p, p, n, n], None
    lib.zarrl_gelu.argtypes, lib.zarrl_gelu.restype = [p, p, p, n, n], None


def compile_library() -> ctypes.CDLL | None:
    """Builds and loads the GELU kernel; ``None`` when switched off or no C compiler is found."""
    return load_library("gelu", ["gelu.c"], "ZARRL_NATIVE_GELU", _declare)


library = LazyLibrary(compile_library)
"""The GELU kernel, built at first use; ``library.loaded = None`` switches them off (ATen then)."""


def native_gelu_available() -> bool:
    """Whether the compiled kernel is in use (else ATen's GELU ops are)."""
    return library.get() is not None


def _native_ok(*tensors: Tensor | None) -> bool:
    return all(
        t is None or (t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous())
        for t in tensors
    )


_ZEROS: dict[int, Tensor] = {}


def _layout(h: Tensor, bias: Tensor | None) -> tuple[int, int, int]:
    """``(bias pointer, rows, cols)`` with ``bias`` ``[cols]`` broadcast over rows (no bias: zeros
    of the last dim, so the kernel's loop stays branch-free)."""
    if bias is None:
        cols = h.shape[-1] if h.dim() else 1
        bias = _ZEROS.get(cols)
        if bias is None:
            bias = _ZEROS[cols] = torch.zeros(cols)
        return bias.data_ptr(), h.numel() // cols, cols
    cols = bias.numel()
    if bias.dim() != 1 or h.dim() < 1 or h.shape[-1] != cols:
        raise ValueError(f"bias of shape {tuple(bias.shape)} does not match h {tuple(h.shape)}")
    return bias.data_ptr(), h.numel() // cols, cols


def gelu_and_grad(h: Tensor, g: Tensor, grad: Tensor, bias: Tensor | None = None) -> Tensor:
    """Writes ``GELU(h + bias)`` into ``g`` and ``GELU'(h + bias)`` into ``grad`` -> ``grad``.

    ``g`` and ``grad`` have ``h``'s shape (``grad`` may be ``h`` itself), ``bias`` is ``[H]`` for
    ``h`` ``[..., H]`` (``None``: no bias). ``h`` itself may be overwritten (with ``h + bias``).
    """
    lib = library.get()
    if h.numel() == 0:
        return grad
    b, rows, cols = _layout(h, bias)
    if lib is not None and _native_ok(h, g, grad, bias):
        lib.zarrl_gelu_and_grad(h.data_ptr(), b, g.data_ptr(), grad.data_ptr(), rows, cols)
        return grad
    if bias is not None:
        h = h.add_(bias)
    torch.ops.aten.gelu.out(h, out=g)
    one = h.new_ones(()).expand_as(h)
    return torch.ops.aten.gelu_backward.grad_input(one, h, grad_input=grad)


def gelu_(h: Tensor, out: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """``GELU(h + bias)`` written into ``out`` (default: ``h`` itself, in place) -> ``out``; ``h``
    itself may be overwritten (with ``h + bias``)."""
    out = h if out is None else out
    lib = library.get()
    if h.numel() == 0:
        return out
    b, rows, cols = _layout(h, bias)
    if lib is not None and _native_ok(h, out, bias):
        lib.zarrl_gelu(h.data_ptr(), b, out.data_ptr(), rows, cols)
        return out
    if bias is not None:
        h = h.add_(bias)
    return torch.ops.aten.gelu.out(h, out=out) if out is not h else torch.ops.aten.gelu_(h)
