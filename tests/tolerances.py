"""Float32 tolerances derived from the computation, not from one machine's result.

Two float32 evaluations of the same sum of ``n`` terms in different orders (another GEMM
blocking, another vector width, FMA or not) each differ from the exact sum by at most
``γ_n·Σ|terms|`` with ``γ_n = n·u / (1 − n·u)`` and ``u = ε/2`` (Higham, *Accuracy and Stability of
Numerical Algorithms*, §3.1); :func:`sum_bound` is that bound for one reduction. Through a
network, worst-case bounds compound to uselessness, so :func:`mlp_error` propagates the probable
error instead (see there). A test compares with :func:`assert_within`. Import with
``from tests.tolerances import ...`` (the repository root is on ``sys.path`` under
``python -m pytest``; ``tests/envs/conftest.py`` also puts it there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "EPS32",
    "GELU_LIPSCHITZ",
    "GELU_ULPS",
    "assert_within",
    "drift_network_error",
    "gamma",
    "mlp_error",
    "sum_bound",
]

#: Machine epsilon of float32 (2⁻²³): the spacing of floats at 1.
EPS32 = torch.finfo(torch.float32).eps
#: max |GELU'(x)| = GELU'(√2) ≈ 1.1289: how much GELU can amplify an error of its input.
GELU_LIPSCHITZ = 1.13
#: Error of a float32 GELU or GELU' in units of ``ε·(1 + |x|)``: ``Φ`` (an erf or the
#: Abramowitz-Stegun 7.1.26 form, absolute error ≤ 1.5e-7 ≈ 1.3ε) and its rounding (≤ 2ε), times
#: ``|x|``; a vectorized erf adds a few ulps of 1.
GELU_ULPS = 4.0


def gamma(n: int, eps: float = EPS32) -> float:
    """``γ_n = n·u / (1 − n·u)``, ``u = eps / 2``: relative error bound of a sum of ``n`` terms."""
    nu = n * eps / 2
    if nu >= 1:
        raise ValueError(f"a sum of {n} terms has no float error bound at eps={eps}")
    return nu / (1 - nu)


def sum_bound(abs_sum: Tensor | float, n: int, eps: float = EPS32) -> Tensor | float:
    """Largest difference between two float evaluations of a sum of ``n`` terms whose absolute
    values sum to ``abs_sum``, in any orders: ``2·γ_n·abs_sum``."""
    return 2 * gamma(n, eps) * abs_sum


def mlp_error(
    layers: Sequence[torch.nn.Linear], x: Tensor, offset: Tensor | None = None, eps: float = EPS32
) -> Tensor:
    """Probable largest error of a float evaluation of ``layers[-1](GELU(… GELU(layers[0](x) +
    offset)))`` -> ``[*B, out]`` (float64), for ``x`` ``[*B, in]`` and ``offset`` broadcastable to
    the first layer's output (a time embedding; taken as exact).

    From a float64 forward pass: a layer of fan-in ``K`` rounds its ``K`` products and 2 additions
    to at most ``u·√(K + 2)·(|W|·|a| + |b|)`` (independent roundings add in quadrature, and
    ``|W|·|a|`` bounds the partial sums), errors of its input pass through ``W`` in quadrature
    (``√(W²·err²)``), and each GELU multiplies them by at most :data:`GELU_LIPSCHITZ` and adds its
    own ``GELU_ULPS·ε·(1 + |h|)``. The worst-case bound (``γ_K`` and ``|W|·err``) would be ~200×
    larger here and check nothing; this estimate sits about 20× above the errors seen on AVX-512,
    AVX2 and SSE kernels, for any summation order."""
    u = eps / 2
    a = x.detach().double()
    err = torch.zeros_like(a)
    for i, layer in enumerate(layers):
        w, b = layer.weight.detach().double(), layer.bias.detach().double()
        h = a @ w.t() + b
        mag = a.abs() @ w.abs().t() + b.abs()
        if i == 0 and offset is not None:
            h, mag = h + offset.detach().double(), mag + offset.detach().double().abs()
        err = (err.square() @ w.square().t()).sqrt() + u * math.sqrt(w.shape[1] + 2) * mag
        if i + 1 < len(layers):
            err = GELU_LIPSCHITZ * err + GELU_ULPS * eps * (1 + h.abs())
            a = torch.nn.functional.gelu(h)
    return err


def drift_network_error(net, x: Tensor, t_emb: Tensor, eps: float = EPS32) -> Tensor:
    """:func:`mlp_error` of a :class:`~zarrl.envs.DriftNetwork`'s drift on states ``x``
    ``[*B, 2]`` with the time embedding ``t_emb`` broadcastable to ``[*B, H]`` -> ``[*B, 2]``.
    Two float32 evaluations (blocked or not, any kernel) differ by at most twice this."""
    layers = [net.state_embed, net.trunk[1], net.trunk[3], net.trunk[5]]
    return mlp_error(layers, x, t_emb, eps)


def assert_within(actual: Tensor, expected: Tensor, bound: Tensor | float, what: str = "") -> None:
    """``|actual − expected| ≤ bound`` elementwise (compared in float64), else an error naming the
    worst element, its difference and its bound. NaNs must sit at the same places."""
    a, e = actual.detach().double(), expected.detach().double()
    if a.shape != e.shape:
        raise AssertionError(f"{what} shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    nan = torch.isnan(e)
    if not torch.equal(torch.isnan(a), nan):
        raise AssertionError(f"{what} NaN pattern differs from the expected one")
    bound = torch.as_tensor(bound, dtype=torch.float64).expand_as(e)
    diff = torch.where(nan, 0.0, (a - e).abs())
    excess = diff - bound
    if (excess > 0).any():
        i = int(excess.argmax())
        idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), e.shape))
        raise AssertionError(
            f"{what} differs by {float(diff.flatten()[i]):.3e} at {idx} (value "
            f"{float(e.flatten()[i]):.6e}), above its bound {float(bound.flatten()[i]):.3e}; "
            f"{int((excess > 0).sum())} of {e.numel()} elements out of bounds"
        )
