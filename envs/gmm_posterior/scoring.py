"""Fused scoring of many Gaussian diffusion transitions: the drift MLP and the Gaussian log-density in
one custom autograd function with a hand-written backward.

``log N(a; x + dt·f(x, t), std²·I)`` for ``N`` transitions costs two ``[N, 64] × [64, 64]`` matrix
products (and two thin ones) and three exact GELUs forward — each GELU pass also writes GELU' in place
of its input (:mod:`~zarrl.envs.gmm_posterior.native_gelu`), so the backward multiplies instead of re-evaluating
erf and exp — and their transposes backward; the time embedding enters as a
``[K, H]`` table broadcast over ``N / K`` rows (``K = T`` for ``[B, T]`` trajectories on a shared
grid), so its gradient is one reduction. No ``Normal`` objects, no bias-broadcast copies of the
autograd graph, no gradient for the (data) states and actions unless they require it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._compat_torch import tensor_version
from .native_gelu import gelu_and_grad
from .native_mlp import (
    mlp_backward,
    mlp_output,
    native_mlp_available,
    native_mlp_supports_weights,
)

_LOG_2PI = math.log(2 * math.pi)
#: Rows per block of the backward pass (8192 × 64 float32 = 2 MB per intermediate).
BLOCK_ROWS = 8192


class _FusedGaussianStepLogProb(torch.autograd.Function):
    """``(x [N, D], a [N, D], cond [K, H], w_in [H, D], b_in [H], w1, b1, w2, b2 [H, H]/[H],
    w_out [D, H], b_out [D], dt, std) -> log_prob [N]`` (nats), ``N`` a multiple of ``K`` with the
    ``K`` rows of ``cond`` repeating fastest."""

    @staticmethod
    def forward(ctx, x, a, cond, w_in, b_in, w1, b1, w2, b2, w_out, b_out, dt, std, cached):
        n, d = x.shape
        k, hidden = cond.shape
        drift = None
        if cached is not None:  # the sampler's activations of these rows, cond repeating slowest
            d0, g0, d1, g1, d2, g2, drift = cached
        else:  # d = GELU'(h) replaces each pre-activation h as soon as GELU(h) is taken
            h0 = torch.mm(x, w_in.t()).view(n // k, k, hidden).add_(cond + b_in).view(n, hidden)
            g0 = torch.empty_like(h0)
            d0 = gelu_and_grad(h0, g0, h0)
            h1 = torch.mm(g0, w1.t())
            g1 = torch.empty_like(h1)
            d1 = gelu_and_grad(h1, g1, h1, b1.detach())
            h2 = torch.mm(g1, w2.t())
            g2 = torch.empty_like(h2)
            d2 = gelu_and_grad(h2, g2, h2, b2.detach())
        # z = (a − x − dt·f) / std with f = g2·w_outᵀ + b_out
        native = native_mlp_supports_weights(w_in, w1, w2, w_out, x, a, g2)
        if drift is not None:  # the sampler's dt·f of these rows
            z = (a - x).sub_(drift).div_(std)
        elif native:
            z = mlp_output(g2, w_out, b_out, dt).sub_(a - x).div_(-std)
        else:
            z = torch.addmm(b_out, g2, w_out.t(), alpha=dt, beta=dt).sub_(a - x).div_(-std)
        log_prob = z.pow(2).sum(-1).mul_(-0.5).sub_(d * (math.log(std) + 0.5 * _LOG_2PI))
        ctx.save_for_backward(x, w_in, w1, w2, w_out, d0, g0, d1, g1, d2, g2, z)
        ctx.shape = (n, k, hidden)
        ctx.cond_slowest = cached is not None
        ctx.dt, ctx.std, ctx.native = dt, std, native
        ctx.cond_in = (cond + b_in).detach() if g0 is None else None  # [K, H]
        return log_prob

    @staticmethod
    def backward(ctx, grad_out):
        x, w_in, w1, w2, w_out, d0, g0, d1, g1, d2, g2, z = ctx.saved_tensors
        n, k, hidden = ctx.shape
        need = ctx.needs_input_grad
        # d log_prob / d loc = z / std; loc = x + dt·f
        grad_loc = z * (grad_out / ctx.std).unsqueeze(-1)  # [N, D]
        if ctx.native and native_mlp_available() and not (need[0] or need[1]):
            g = mlp_backward(
                (w_out, w2, w1),
                (d0, g0, d1, g1, d2, g2),
                x,
                grad_loc * ctx.dt,
                k,
                n // k if ctx.cond_slowest else 1,
                first_layer=None if g0 is not None else (w_in.t(), ctx.cond_in),
            )
            return (
                None,
                None,
                g["cond"] if need[2] else None,
                g["wi_t"].t() if need[3] else None,
                g["cond"].sum(0) if need[4] else None,
                g["w1"],
                g["b1"],
                g["w2"],
                g["b2"],
                g["wo"],
                g["bo"],
                None,
                None,
                None,
            )
        d = x.shape[1]
        grad_w_out, grad_b_out = z.new_zeros(d, hidden), z.new_zeros(d)
        grad_w2, grad_b2 = z.new_zeros(hidden, hidden), z.new_zeros(hidden)
        grad_w1, grad_b1 = z.new_zeros(hidden, hidden), z.new_zeros(hidden)
        grad_w_in_t = z.new_zeros(d, hidden)
        if g0 is None:  # the sampler did not keep the first layer: recompute it
            h0 = torch.mm(x, w_in.t())
            if ctx.cond_slowest:
                h0.view(k, n // k, hidden).add_(ctx.cond_in.unsqueeze(1))
            else:
                h0.view(n // k, k, hidden).add_(ctx.cond_in)
            g0 = torch.empty_like(h0)
            d0 = gelu_and_grad(h0, g0, h0)
        keep_dh0 = need[0] or need[2] or need[4]
        dh0_all = z.new_empty(n, hidden) if keep_dh0 else None
        # row blocks keep the [rows, H] intermediates cache-resident (~1.3x over whole-batch passes)
        for s in range(0, n, BLOCK_ROWS):
            e = min(n, s + BLOCK_ROWS)
            grad_f = grad_loc[s:e] * ctx.dt
            grad_w_out.addmm_(grad_f.t(), g2[s:e])
            grad_b_out.add_(grad_f.sum(0))
            dh2 = torch.mm(grad_f, w_out).mul_(d2[s:e])  # dL/dh = dL/dg · GELU'(h)
            grad_w2.addmm_(dh2.t(), g1[s:e])
            grad_b2.add_(dh2.sum(0))
            dh1 = torch.mm(dh2, w2).mul_(d1[s:e])
            grad_w1.addmm_(dh1.t(), g0[s:e])
            grad_b1.add_(dh1.sum(0))
            dh0 = torch.mm(dh1, w1).mul_(d0[s:e])
            if need[3]:
                grad_w_in_t.addmm_(x[s:e].t(), dh0)  # [D, rows] first: 4x faster
            if keep_dh0:
                dh0_all[s:e] = dh0
        grad_w_in = grad_w_in_t.t() if need[3] else None
        if not (need[2] or need[4]):
            grad_cond = None
        elif ctx.cond_slowest:
            grad_cond = dh0_all.view(k, n // k, hidden).sum(1)
        else:
            grad_cond = dh0_all.view(n // k, k, hidden).sum(0)
        grad_b_in = grad_cond.sum(0) if need[4] else None
        grad_x = torch.addmm(grad_loc, dh0_all, w_in) if need[0] else None
        grad_a = -grad_loc if need[1] else None
        return (
            grad_x,
            grad_a,
            grad_cond if need[2] else None,
            grad_w_in,
            grad_b_in,
            grad_w1,
            grad_b1,
            grad_w2,
            grad_b2,
            grad_w_out,
            grad_b_out,
            None,
            None,
            None,
        )


def fused_step_log_prob(
    net,
    x: Tensor,
    action: Tensor,
    cond: Tensor,
    dt: float,
    std: float,
    cached: tuple[Tensor, ...] | None = None,
) -> Tensor:
    """log N(action; x + dt·net(x, t), std²·I) summed over the last dim -> ``[N]`` nats.

    ``net`` is a :class:`~zarrl.envs.DriftNetwork`; ``x``, ``action``: ``[N, D]``; ``cond``: the
    time embedding ``[K, H]`` of the ``N`` rows, row ``i`` using ``cond[i % K]`` (``K = T`` for
    flattened ``[B, T]`` trajectories on a shared time grid, ``K = N`` in general).
    ``cached``: the six ``[N, H]`` tables ``(GELU'(h0), GELU(h0), GELU'(h1), GELU(h1), GELU'(h2),
    GELU(h2))`` of these rows' pre-activations ``h*`` under the current parameters (from the
    sampler) and their drifts ``dt·f`` ``[N, D]`` (or ``None``: computed from ``GELU(h2)``), rows then ordered time-major (row ``i`` uses ``cond[i // (N / K)]``); the forward
    pass is skipped.
    """
    embed, l1, l2, out = net.state_embed, net.trunk[1], net.trunk[3], net.trunk[5]
    if x.shape[0] % cond.shape[0]:
        raise ValueError(
            f"{x.shape[0]} transitions are not a multiple of the {cond.shape[0]} time embeddings"
        )
    return _FusedGaussianStepLogProb.apply(
        x.contiguous(),
        action.contiguous(),
        cond,
        embed.weight,
        embed.bias,
        l1.weight,
        l1.bias,
        l2.weight,
        l2.bias,
        out.weight,
        out.bias,
        float(dt),
        float(std),
        cached,
    )


#: Largest activation tables (bytes) the sampler keeps for reuse: batch 500 × T 100 takes 77 MB;
#: bigger samples (e.g. evaluation) are not kept.
MAX_KEPT_ACTIVATION_BYTES = 256 << 20


def parameter_signature(net: nn.Module) -> tuple:
    """Identity and version of every parameter of ``net``: changes when any is updated."""
    return tuple((p.data_ptr(), tensor_version(p), p.dtype) for p in net.parameters())


class SampledActivations:
    """What the sampler hands to the loss: the states and hidden activations of its last sample.

    A :class:`~zarrl.envs.gmm_posterior.DriftNetwork` owns one (``net.sampled``). The fused
    sampler writes its activations into tables this object reuses across calls (fresh
    10–100 MB allocations cost a page fault per 4 kB each time) and :meth:`keep` s them with the
    parameters they were computed under; the loss's scoring of exactly those trajectories
    (:meth:`reuse`) then skips the forward pass. Reusing the tables is safe: the sampler writes
    them in place, so a graph still holding the previous tables for its backward pass fails
    autograd's version check instead of reading new values.
    """

    def __init__(self) -> None:
        self._kept: tuple[tuple, Tensor, list[Tensor | None], Tensor | None] | None = None
        self._tables: list[Tensor | None] | None = None

    def keep(
        self, net: nn.Module, xs: Tensor, tables: list[Tensor | None], drift: Tensor | None = None
    ) -> None:
        """Remember the states ``xs`` ``[T + 1, N, D]`` and hidden activations of ``net`` under
        its current parameters (six ``[T, N, H]`` tables: ``GELU'(h*)`` and ``GELU(h*)`` of the
        three pre-activations ``h*``; optionally the drifts ``dt·f`` ``[T, N, D]``), replacing
        earlier ones."""
        self._kept = (parameter_signature(net), xs, tables, drift)

    def forget(self) -> None:
        """Drop the remembered sample (the reusable tables stay)."""
        self._kept = None

    def tables(
        self, shape: tuple[int, int, int], like: Tensor, first_layer: bool = True
    ) -> list[Tensor | None]:
        """Six ``[T, N, H]`` tables for the sampler's activations, the previous call's when its
        shape, dtype and device match. ``first_layer=False``: the first two (GELU' and GELU of
        the first layer, which the compiled backward recomputes from the states) are ``None``."""
        tables = self._tables
        last = None if tables is None else tables[-1]
        if (
            tables is None
            or last is None
            or last.shape != shape
            or last.dtype != like.dtype
            or last.device != like.device
        ):
            tables = [like.new_empty(shape) for _ in range(6)]
            self._tables = tables
        if first_layer and tables[0] is None:
            tables[0], tables[1] = like.new_empty(shape), like.new_empty(shape)
        if not first_layer:
            tables[0] = tables[1] = None  # 26 MB less to write and to keep
        return list(tables)

    @property
    def reusable_tables(self) -> list[Tensor | None]:
        """The tables the next sample of the same shape writes into (``[]`` before any)."""
        return list(self._tables or [])

    def states(self) -> Tensor | None:
        """The states ``[T + 1, N, D]`` of the remembered sample (time-major), or ``None``."""
        return None if self._kept is None else self._kept[1]

    def reuse(
        self, net: nn.Module, obs: Tensor, time: Tensor, num_steps: int
    ) -> tuple[Tensor | None, ...] | None:
        """The six remembered activation tables, flattened time-major ``[T·N, H]``, and the drift
        table ``[T·N, D]`` (or ``None``), when ``obs`` ``[N, T, D]`` and ``time`` ``[N, T]`` are
        exactly the last sampled trajectories on the grid ``t_i = i / num_steps`` and ``net``'s
        parameters have not changed since (else ``None``)."""
        if self._kept is None or obs.ndim != 3 or torch.is_grad_enabled() is False:
            return None
        signature, xs, tables, drift = self._kept
        last = tables[-1]
        if last is None or last.shape[0] != num_steps:
            return None
        num = last.shape[1]
        if obs.shape[:2] != (num, num_steps) or obs.dtype != xs.dtype or obs.device != xs.device:
            return None
        if signature != parameter_signature(net) or not torch.equal(obs, xs[:-1].transpose(0, 1)):
            return None
        grid = torch.arange(num_steps, device=time.device, dtype=time.dtype) / num_steps
        if not torch.equal(time, grid.expand(num, num_steps)):
            return None
        flat = tuple(None if t is None else t.view(num_steps * num, -1) for t in tables)
        return (*flat, None if drift is None else drift.view(num_steps * num, -1))
