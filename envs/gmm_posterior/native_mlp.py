"""Compiled kernels for the GMM drift network (:class:`~zarrl.envs.DriftNetwork` with hidden width
64 and 2-d states): the whole sampler loop, the output layer, and the hand-written backward.

The network's products are ``[rows, 64] × [64, 64]``: MKL reaches about 40 GFLOP/s on them on one
AVX2 core, with a Python round trip per step and per layer on top; ``envs/gmm_posterior/csrc/diffusion_mlp.c``
keeps the weights in L1, computes 6 × 16 register tiles (about twice MKL's rate here) and runs all
steps of a block of 48 trajectories in one call, fusing the GELUs, the output layer, the Euler step
and the reference's log-density. Trajectories (and the backward's rows) are independent, so
``torch.get_num_threads()`` OpenMP threads split the rows — torch's own OpenMP runtime, so the
kernels share its thread pool the way ATen's parallel operations do instead of contending with
its spinning workers.

Built at first use by :mod:`~zarrl.envs.gmm_posterior.native_build` (needs a C compiler and a CPU with AVX2 and
FMA); ``ZARRL_NATIVE_MLP=0`` turns it off. :func:`native_mlp_supports` tells whether a network and
its tensors can use it; otherwise callers keep their ATen path (same results to float rounding).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .native_build import LazyLibrary, load_library

__all__ = [
    "native_mlp_available",
    "native_mlp_supports",
    "native_mlp_supports_weights",
    "mlp_backward",
    "mlp_output",
    "mlp_sample",
]

HIDDEN = 64
DIM = 2
#: Rows per thread at least (one block of the kernels).
MIN_ROWS_PER_THREAD = 48

_NAMES = ("wi_t", "cond", "w1_t", "b1", "w2_t", "b2", "wo", "bo")
_GRAD_NAMES = ("wo", "bo", "w2", "b2", "w1", "b1", "wi_t", "cond")


class _Mlp(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in _NAMES]


class _Grads(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in _GRAD_NAMES]


def _declare(lib: ctypes.CDLL) -> None:
    p, n, f, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    mlp = ctypes.POINTER(_Mlp)
    lib.zarrl_mlp_sample.argtypes = [mlp, mlp, n, n, p, p, p, p, f, f, p, i]
    lib.zarrl_mlp_sample.restype = None
    lib.zarrl_mlp_out.argtypes, lib.zarrl_mlp_out.restype = [p, p, p, n, p, i], None
    lib.zarrl_mlp_backward.argtypes = [p, p, p, p, p, p, p, p, n, n, n, p, i]
    lib.zarrl_mlp_backward.restype = None


def _openmp_runtimes() -> set[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux; empty elsewhere)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    return {line.split()[-1] for line in maps.splitlines() if "libgomp" in line or "libomp" in line}


def compile_library() -> ctypes.CDLL | None:
    """Builds and loads the diffusion MLP kernels; ``None`` when switched off or no C compiler is found."""
    before = _openmp_runtimes()
    lib = load_library(
        "diffusion_mlp", ["diffusion_mlp.c"], "ZARRL_NATIVE_MLP", _declare, ["-fopenmp"]
    )
    if lib is not None and len(_openmp_runtimes() - before) > 0 and before:
        return None  # a second OpenMP runtime beside torch's would fight it for the cores
    return lib


library = LazyLibrary(compile_library)
"""The diffusion MLP kernels, built at first use; ``library.loaded = None`` switches them off (ATen then)."""


def native_mlp_available() -> bool:
    """Whether the compiled kernels are in use on this machine."""
    return library.get() is not None


def _layers(net) -> tuple:
    return net.state_embed, net.trunk[1], net.trunk[3], net.trunk[5]


def native_mlp_supports(net, *tensors: Tensor | None) -> bool:
    """Whether ``net`` (a :class:`~zarrl.envs.DriftNetwork`) and ``tensors`` can use the kernels:
    hidden width 64, 2-d states, float32 CPU parameters and tensors, compiled library available."""
    embed, l1, l2, out = _layers(net)
    return native_mlp_supports_weights(
        embed.weight, l1.weight, l2.weight, out.weight, *net.parameters(), *tensors
    )


def native_mlp_supports_weights(
    w_in: Tensor, w1: Tensor, w2: Tensor, w_out: Tensor, *tensors: Tensor | None
) -> bool:
    """:func:`native_mlp_supports` from the weights of the state embedding ``[64, 2]``, the two
    hidden layers ``[64, 64]`` and the output layer ``[2, 64]`` (plus other tensors to check)."""
    if (
        w_in.shape != (HIDDEN, DIM)
        or w1.shape != (HIDDEN, HIDDEN)
        or w2.shape != (HIDDEN, HIDDEN)
        or w_out.shape != (DIM, HIDDEN)
    ):
        return False
    for t in (w_in, w1, w2, w_out, *tensors):
        if t is not None and (t.device.type != "cpu" or t.dtype != torch.float32):
            return False
    return native_mlp_available()


def _pack(net, cond: Tensor, dt: float) -> tuple[_Mlp, list[Tensor]]:
    """The kernel's view of ``net`` with time embedding ``cond`` ``[T, H]`` (the state embedding's
    bias is added here) and ``dt`` folded into the output layer; keep the tensors alive."""
    embed, l1, l2, out = _layers(net)
    with torch.no_grad():
        tensors = [
            embed.weight.t().contiguous(),
            (cond + embed.bias).contiguous(),
            l1.weight.t().contiguous(),
            l1.bias.detach().contiguous(),
            l2.weight.t().contiguous(),
            l2.bias.detach().contiguous(),
            (out.weight * dt).contiguous(),
            (out.bias * dt).contiguous(),
        ]
    return _Mlp(*(t.data_ptr() for t in tensors)), tensors


def _threads(rows: int) -> int:
    """OpenMP threads for a kernel over ``rows`` independent rows: torch's intra-op thread count,
    fewer for small inputs (a block of 48 rows per thread at least)."""
    return max(1, min(torch.get_num_threads(), rows // MIN_ROWS_PER_THREAD))


def mlp_sample(
    net,
    cond: Tensor,
    noise: Tensor,
    dt: float,
    tables: Sequence[Tensor] | None = None,
    reference: tuple | None = None,
    drift: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Euler-Maruyama sampling from ``x_0 = 0``: ``x_{i+1} = x_i + dt·net(x_i, t_i) + noise[:, i]``.

    ``cond``: ``net``'s time embedding of the ``T`` steps ``[T, H]``; ``noise``: ``[N, T, D]``.
    ``tables``: ``None`` or six contiguous ``[T, N, H]`` tensors receiving GELU'(h) and GELU(h)
    of the three hidden layers at every step (``None`` entries are not written). ``reference``: ``None`` or ``(net_ref, cond_ref,
    std)``, whose ``log N(x_{i+1}; x_i + dt·net_ref(x_i, t_i), std²·I)`` is returned ``[N, T]``
    (nats). ``drift``: ``None`` or a contiguous ``[T, N, D]`` tensor receiving ``dt·net(x_i, t_i)``.
    Returns ``(xs [T + 1, N, D], ref_log_prob or None)``.
    """
    lib = library.get()
    num, steps, dim = noise.shape
    post, keep = _pack(net, cond, dt)
    shift = noise.transpose(0, 1).contiguous()  # [T, N, D]
    xs = noise.new_zeros(steps + 1, num, dim)
    ref_lp, prior_ptr, inv_std, log_norm = None, None, 0.0, 0.0
    if reference is not None:
        ref_net, ref_cond, std = reference
        prior, prior_keep = _pack(ref_net, ref_cond, dt)
        keep += prior_keep
        prior_ptr = ctypes.byref(prior)
        inv_std, log_norm = 1.0 / std, dim * (math.log(std) + 0.5 * math.log(2 * math.pi))
        ref_lp = noise.new_empty(steps, num)
    table_ptrs = None
    if tables is not None:
        if len(tables) != 6:
            raise ValueError(f"six activation tables are needed, got {len(tables)}")
        for t in tables:
            if t is not None and (t.shape != (steps, num, HIDDEN) or not t.is_contiguous()):
                raise ValueError(f"activation tables must be contiguous {(steps, num, HIDDEN)}")
        table_ptrs = (ctypes.c_void_p * 6)(*(None if t is None else t.data_ptr() for t in tables))
    if drift is not None:
        if drift.shape != (steps, num, dim) or not drift.is_contiguous():
            raise ValueError(f"the drift table must be contiguous {(steps, num, dim)}")
        torch.autograd.graph.increment_version(drift)
    if tables is not None:
        for t in tables:  # written in place below: a graph saved with them must fail loudly
            if t is not None:
                torch.autograd.graph.increment_version(t)
    lib.zarrl_mlp_sample(
        ctypes.byref(post),
        prior_ptr,
        num,
        steps,
        shift.data_ptr(),
        xs.data_ptr(),
        table_ptrs,
        None if drift is None else drift.data_ptr(),
        inv_std,
        log_norm,
        None if ref_lp is None else ref_lp.data_ptr(),
        _threads(num),
    )
    del keep
    return xs, (None if ref_lp is None else ref_lp.t())


def mlp_output(g2: Tensor, out_weight: Tensor, out_bias: Tensor, dt: float) -> Tensor:
    """``dt·(g2·Woᵀ + bo)`` for the last hidden activations ``g2`` ``[N, 64]`` -> ``[N, 2]``."""
    lib = library.get()
    g2 = g2.contiguous()
    with torch.no_grad():
        wo, bo = (out_weight * dt).contiguous(), (out_bias * dt).contiguous()
    result = g2.new_empty(g2.shape[0], DIM)
    lib.zarrl_mlp_out(
        g2.data_ptr(),
        wo.data_ptr(),
        bo.data_ptr(),
        g2.shape[0],
        result.data_ptr(),
        _threads(g2.shape[0]),
    )
    return result


def mlp_backward(
    weights: tuple[Tensor, Tensor, Tensor],
    tables: Sequence[Tensor],
    x: Tensor,
    grad_f: Tensor,
    num_cond: int,
    cond_div: int,
    first_layer: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Parameter gradients of ``Σ_r <grad_f[r], f(x_r)>`` (``f`` the drift, without ``dt``).

    ``tables``: six contiguous ``[N, 64]`` tensors, GELU'(h) and GELU(h) of the three hidden
    layers at the rows ``x`` ``[N, 2]``; ``grad_f`` ``[N, 2]``; row ``r`` used the time embedding
    ``cond[(r // cond_div) % num_cond]``. The first two tables may be ``None``: the first layer is
    then recomputed from ``first_layer = (wi_t [2, 64], cond [num_cond, 64])`` (the state
    embedding's weight transposed; the time embedding plus the state embedding's bias). ``weights``: the output layer's ``[2, 64]`` and the two
    hidden layers' ``[64, 64]`` weights ``(w_out, w2, w1)``. Returns the gradients of ``wo`` ``[2, 64]``, ``bo``,
    ``w2``, ``b2``, ``w1``, ``b1`` (layer shapes), ``wi_t`` ``[2, 64]`` (the state embedding's weight,
    transposed) and ``cond`` ``[num_cond, 64]``."""
    lib = library.get()
    rows = x.shape[0]
    shapes = {
        "wo": (DIM, HIDDEN),
        "bo": (DIM,),
        "w2": (HIDDEN, HIDDEN),
        "b2": (HIDDEN,),
        "w1": (HIDDEN, HIDDEN),
        "b1": (HIDDEN,),
        "wi_t": (DIM, HIDDEN),
        "cond": (num_cond, HIDDEN),
    }
    sizes = [math.prod(shapes[name]) for name in _GRAD_NAMES]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    parts = _threads(rows)
    buffers = x.new_zeros(parts, sum(sizes))
    grads = [[buffers[p, o:].data_ptr() for o in offsets] for p in range(parts)]
    grad_structs = (_Grads * parts)(*(_Grads(*p) for p in grads))
    x, grad_f = x.contiguous(), grad_f.contiguous()
    tables = [None if t is None else t.contiguous() for t in tables]
    if any(t is None for t in tables[2:]):
        raise ValueError("only the first layer's two tables may be missing")
    wi_t = cond = None
    if tables[0] is None or tables[1] is None:
        if first_layer is None:
            raise ValueError("without the first layer's tables, first_layer=(wi_t, cond) is needed")
        with torch.no_grad():
            wi_t, cond = (t.contiguous() for t in first_layer)
        if wi_t.shape != (DIM, HIDDEN) or cond.shape != (num_cond, HIDDEN):
            raise ValueError(
                f"first_layer must be ([{DIM}, {HIDDEN}], [{num_cond}, {HIDDEN}]), got "
                f"({list(wi_t.shape)}, {list(cond.shape)})"
            )
    table_ptrs = (ctypes.c_void_p * 6)(*(None if t is None else t.data_ptr() for t in tables))
    with torch.no_grad():
        weights = [w.contiguous() for w in weights]

    lib.zarrl_mlp_backward(
        table_ptrs,
        x.data_ptr(),
        grad_f.data_ptr(),
        *(w.data_ptr() for w in weights),
        None if wi_t is None else wi_t.data_ptr(),
        None if cond is None else cond.data_ptr(),
        rows,
        cond_div,
        num_cond,
        grad_structs,
        parts,
    )
    flat = buffers.sum(0) if parts > 1 else buffers[0]
    result = {
        name: flat[o : o + n].view(shapes[name])
        for name, o, n in zip(_GRAD_NAMES, offsets, sizes, strict=True)
    }
    return result
