"""The compiled GELU / GELU' kernel agrees with ATen, in place and out of place, and falls back."""

from __future__ import annotations

import pytest
import torch
from zarrl.envs import native_gelu
from zarrl.envs.native_gelu import gelu_, gelu_and_grad, native_gelu_available


def _inputs() -> torch.Tensor:
    torch.manual_seed(0)
    wide = torch.linspace(-12.0, 12.0, 4001)
    special = torch.tensor([0.0, -0.0, 50.0, -50.0, 1e4, -1e4, 1e-30, -1e-30])
    return torch.cat([wide, special, 3 * torch.randn(10_005)]).view(-1, 7)


def _exact(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h64 = h.double()
    g = torch.nn.functional.gelu(h64)
    grad = torch.ops.aten.gelu_backward(torch.ones_like(h64), h64)
    return g, grad


@pytest.fixture(params=["native", "aten"])
def kernel(request, monkeypatch):
    if request.param == "native" and not native_gelu_available():
        pytest.skip("no C compiler here: the ATen fallback is in use")
    if request.param == "aten":
        monkeypatch.setattr(native_gelu._library, "loaded", None)
    return request.param


def test_gelu_and_its_derivative_match_float64_to_float32_rounding(kernel):
    h = _inputs()
    g, grad = torch.empty_like(h), torch.empty_like(h)
    assert gelu_and_grad(h, g, grad) is grad
    g_ref, grad_ref = _exact(h)
    torch.testing.assert_close(g.double(), g_ref, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=2e-6, atol=1e-6)
    assert torch.isfinite(g).all() and torch.isfinite(grad).all()


def test_the_derivative_may_overwrite_the_input_and_gelu_may_run_in_place(kernel):
    h = _inputs()
    g_ref, grad_ref = _exact(h)
    work, g = h.clone(), torch.empty_like(h)
    gelu_and_grad(work, g, work)
    torch.testing.assert_close(work.double(), grad_ref, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(g.double(), g_ref, rtol=2e-6, atol=1e-6)
    inplace = h.clone()
    assert gelu_(inplace) is inplace
    torch.testing.assert_close(inplace.double(), g_ref, rtol=2e-6, atol=1e-6)


def test_nan_propagates_and_other_layouts_fall_back_to_aten(kernel):
    h = torch.tensor([[1.0, float("nan")], [-2.0, 0.5]])
    g, grad = torch.empty_like(h), torch.empty_like(h)
    gelu_and_grad(h, g, grad)
    assert torch.isnan(g[0, 1]) and torch.isnan(grad[0, 1])
    strided = _inputs().t()  # not contiguous: ATen path
    out = torch.empty_like(strided)
    gelu_(strided, out)
    torch.testing.assert_close(out.double(), _exact(strided)[0], rtol=2e-6, atol=1e-6)
    h64 = _inputs().double()  # float64: ATen path, exact
    g64, grad64 = torch.empty_like(h64), torch.empty_like(h64)
    gelu_and_grad(h64, g64, grad64)
    torch.testing.assert_close(g64, _exact(h64)[0], rtol=0, atol=0)


def test_a_bias_is_added_before_the_activation_and_empty_inputs_pass(kernel):
    h, bias = _inputs()[:, :7], torch.linspace(-1.0, 1.0, 7)
    g, grad = torch.empty_like(h), torch.empty_like(h)
    g_ref, grad_ref = _exact(h + bias)
    gelu_and_grad(h.clone(), g, grad, bias)
    torch.testing.assert_close(g.double(), g_ref, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(gelu_(h.clone(), bias=bias).double(), g_ref, rtol=2e-6, atol=1e-6)
    with pytest.raises(ValueError, match="bias of shape"):
        gelu_(h.clone(), bias=torch.zeros(3))
    empty = torch.empty(0, 64)
    assert gelu_(empty).shape == (0, 64)
    assert gelu_and_grad(empty, empty.clone(), empty.clone()).shape == (0, 64)


def test_the_kernel_is_off_when_asked(monkeypatch):
    monkeypatch.setenv("ZARRL_NATIVE_GELU", "0")
    assert native_gelu._compile() is None
