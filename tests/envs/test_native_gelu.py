"""The compiled GELU / GELU' kernel agrees with float64 to float32 rounding, in place and out of
place, computes no subnormal float, and falls back to ATen."""

from __future__ import annotations

import pytest
import torch
from zarrl.envs.gmm_posterior import native_gelu
from zarrl.envs.gmm_posterior.native_gelu import gelu_, gelu_and_grad, native_gelu_available

from tests.tolerances import EPS32, GELU_ULPS, assert_within

TINY = torch.finfo(torch.float32).tiny
#: Where the compiled kernel switches to the limits (envs/gmm_posterior/csrc/gelu.c's GELU_X0).
X0 = 13.0


def _inputs() -> torch.Tensor:
    torch.manual_seed(0)
    wide = torch.linspace(-12.0, 12.0, 4001)
    special = torch.tensor([0.0, -0.0, 50.0, -50.0, 1e4, -1e4, 1e-30, -1e-30])
    return torch.cat([wide, special, 3 * torch.randn(10_005)]).view(-1, 7)


def _wide_inputs() -> torch.Tensor:
    """±1e4 on a log scale, the thresholds ±13, ±6 and the exp's edge (x²/2 = 87) densely, the
    largest float and FLT_MIN -> ``[N, 2]``."""
    logs = torch.logspace(-30, 4, 2001)
    near = torch.cat([torch.linspace(a - 0.05, a + 0.05, 1001) for a in (X0, 13.19, 6.0, 5.5)])
    edge = torch.tensor([X0, 13.0001, 12.9999, 1e4, 3.4e38, 1.1755e-38])
    pos = torch.cat([logs, near, edge])
    return torch.cat([pos, -pos]).view(-1, 2)


def _exact(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h64 = h.double()
    g = torch.nn.functional.gelu(h64)
    grad = torch.ops.aten.gelu_backward(torch.ones_like(h64), h64)
    return g, grad


def _bound(h: torch.Tensor) -> torch.Tensor:
    """Float32 error of GELU(h) and GELU'(h): GELU_ULPS·ε·(1 + |h|) (``Φ`` to a few ε, times
    ``|h|``; see tests/tolerances.py)."""
    return GELU_ULPS * EPS32 * (1 + h.double().abs())


def _subnormal(t: torch.Tensor) -> torch.Tensor:
    return (t != 0) & (t.abs() < TINY)


@pytest.fixture(params=["native", "aten"])
def kernel(request, monkeypatch):
    if request.param == "native" and not native_gelu_available():
        pytest.skip("no C compiler here: the ATen fallback is in use")
    if request.param == "aten":
        monkeypatch.setattr(native_gelu.library, "loaded", None)
    return request.param


def test_gelu_and_its_derivative_match_float64_to_float32_rounding(kernel):
    h = _inputs()
    g, grad = torch.empty_like(h), torch.empty_like(h)
    assert gelu_and_grad(h, g, grad) is grad
    g_ref, grad_ref = _exact(h)
    assert_within(g, g_ref, _bound(h), "GELU")
    assert_within(grad, grad_ref, _bound(h), "GELU'")
    assert torch.isfinite(g).all() and torch.isfinite(grad).all()


def test_the_derivative_may_overwrite_the_input_and_gelu_may_run_in_place(kernel):
    h = _inputs()
    g_ref, grad_ref = _exact(h)
    work, g = h.clone(), torch.empty_like(h)
    gelu_and_grad(work, g, work)
    assert_within(work, grad_ref, _bound(h), "GELU' in place")
    assert_within(g, g_ref, _bound(h), "GELU")
    inplace = h.clone()
    assert gelu_(inplace) is inplace
    assert_within(inplace, g_ref, _bound(h), "GELU in place")


@pytest.fixture
def compiled():
    if not native_gelu_available():
        pytest.skip("no C compiler here: the ATen fallback is in use")


@pytest.mark.usefixtures("compiled")
def test_no_output_is_subnormal_up_to_1e4_and_the_limits_are_exact():
    h = _wide_inputs()
    g, grad = torch.empty_like(h), torch.empty_like(h)
    gelu_and_grad(h.clone(), g, grad)
    assert not _subnormal(g).any() and not _subnormal(grad).any()
    assert not _subnormal(gelu_(h.clone())).any()
    g_ref, grad_ref = _exact(h)
    assert_within(g, g_ref, _bound(h), "GELU")
    assert_within(grad, grad_ref, _bound(h), "GELU'")
    big = h >= 6.0  # float32 rounds GELU to x and GELU' to 1 from 6 on
    assert torch.equal(g[big], h[big]) and bool((grad[big] == 1).all())
    assert bool((g[h < -X0] == 0).all()) and bool((grad[h < -X0] == 0).all())


@pytest.mark.usefixtures("compiled")
def test_the_kernel_leaves_subnormal_arithmetic_of_the_process_as_it_was():
    h = _wide_inputs()
    gelu_and_grad(h.clone(), torch.empty_like(h), torch.empty_like(h))
    gelu_(h.clone())
    half_tiny = torch.full((8,), TINY) * 0.5  # flush-to-zero only inside the kernel
    assert bool(_subnormal(half_tiny).all())


def test_nan_propagates_and_other_layouts_fall_back_to_aten(kernel):
    h = torch.tensor([[1.0, float("nan")], [-2.0, 0.5]])
    g, grad = torch.empty_like(h), torch.empty_like(h)
    gelu_and_grad(h, g, grad)
    assert torch.isnan(g[0, 1]) and torch.isnan(grad[0, 1])
    strided = _inputs().t()  # not contiguous: ATen path
    out = torch.empty_like(strided)
    gelu_(strided, out)
    assert_within(out, _exact(strided)[0], _bound(strided), "strided GELU")
    h64 = _inputs().double()  # float64: ATen path, the very same operation as the reference
    g64, grad64 = torch.empty_like(h64), torch.empty_like(h64)
    gelu_and_grad(h64, g64, grad64)
    torch.testing.assert_close(g64, _exact(h64)[0], rtol=0, atol=0)


def test_a_bias_is_added_before_the_activation_and_empty_inputs_pass(kernel):
    h, bias = _inputs()[:, :7], torch.linspace(-1.0, 1.0, 7)
    g, grad = torch.empty_like(h), torch.empty_like(h)
    x = h + bias  # one float32 rounding, as in the kernel
    g_ref, grad_ref = _exact(x)
    gelu_and_grad(h.clone(), g, grad, bias)
    assert_within(g, g_ref, _bound(x), "GELU")
    assert_within(grad, grad_ref, _bound(x), "GELU'")
    assert_within(gelu_(h.clone(), bias=bias), g_ref, _bound(x), "GELU")
    with pytest.raises(ValueError, match="bias of shape"):
        gelu_(h.clone(), bias=torch.zeros(3))
    empty = torch.empty(0, 64)
    assert gelu_(empty).shape == (0, 64)
    assert gelu_and_grad(empty, empty.clone(), empty.clone()).shape == (0, 64)


def test_the_kernel_is_off_when_asked(monkeypatch):
    monkeypatch.setenv("ZARRL_NATIVE_GELU", "0")
    assert native_gelu.compile_library() is None
