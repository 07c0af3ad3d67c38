import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minidet.gradcheck import check_layer
from minidet.nn.linear import Linear
from tests.reference import as_torch, assert_close, require_torch

# values on a 1/16 grid: exact in float64, never tiny-but-nonzero
grid = st.integers(-64, 64).map(lambda k: k / 16)


@st.composite
def layer_and_input(draw, dtype=np.float64):
    n, fan_in, fan_out = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    layer = Linear(fan_in, fan_out, dtype=dtype, rng=np.random.default_rng(draw(st.integers(0, 2**16))))
    layer.params["bias"][:] = draw(arrays(dtype, fan_out, elements=grid))
    return layer, draw(arrays(dtype, (n, fan_in), elements=grid))


@given(layer_and_input())
def test_linear_forward_matches_plain_sums(case):
    layer, x = case
    w, b = layer.params["weight"], layer.params["bias"]
    expected = [[sum(x[n, i] * w[o, i] for i in range(x.shape[1])) + b[o] for o in range(len(b))]
                for n in range(len(x))]
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12, atol=1e-12)


@given(layer_and_input())
def test_linear_backward_matches_numerical_gradient(case):
    layer, x = case
    errors = check_layer(layer, x)
    assert set(errors) == {"input0", "weight", "bias"}
    assert max(errors.values()) < 1e-6, errors


@given(layer_and_input(dtype=np.float32))
def test_linear_float32_stays_float32(case):
    layer, x = case
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == layer.grads["weight"].dtype == layer.grads["bias"].dtype == np.float32


def test_linear_frozen_leaves_grads_empty_and_still_returns_dx(rng):
    layer = Linear(4, 3, dtype=np.float64, rng=rng)
    x, dy = rng.standard_normal((2, 4)), rng.standard_normal((2, 3))
    layer.forward(x)
    layer.backward(dy)
    layer.frozen = True
    layer.forward(x)
    dx = layer.backward(dy)
    assert layer.grads == {}
    np.testing.assert_allclose(dx, dy @ layer.params["weight"])


def test_linear_without_input_grad_returns_none_and_fills_grads(rng):
    layer = Linear(4, 3, dtype=np.float64, rng=rng)
    layer.needs_input_grad = False
    x, dy = rng.standard_normal((2, 4)), rng.standard_normal((2, 3))
    layer.forward(x)
    assert layer.backward(dy) is None
    np.testing.assert_allclose(layer.grads["weight"], dy.T @ x)
    np.testing.assert_allclose(layer.grads["bias"], dy.sum(axis=0))
    assert check_layer(layer, x, wrt=())["weight"] < 1e-6


def test_linear_keeps_its_input_in_training_only(rng):
    layer = Linear(4, 3, dtype=np.float64, rng=rng)
    x, dy = rng.standard_normal((2, 4)), rng.standard_normal((2, 3))
    layer.eval().forward(x)
    assert layer.x is None                       # a test forward keeps nothing for a weight gradient
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(dy)
    layer.frozen = True                          # frozen: dx alone, which needs only the weights
    np.testing.assert_allclose(layer.backward(dy), dy @ layer.params["weight"])
    layer.frozen = False
    layer.train().forward(x)
    assert layer.x is x
    layer.backward(dy)
    np.testing.assert_allclose(layer.grads["weight"], dy.T @ x)


def test_linear_init_is_he_normal_with_zero_bias():
    layer = Linear(500, 400, rng=np.random.default_rng(0))
    w = layer.params["weight"]
    assert w.shape == (400, 500) and w.dtype == np.float32
    assert abs(w.mean()) < 1e-3                                   # 200k draws: std of the mean 1e-4
    assert abs(w.std() / np.sqrt(2 / 500) - 1) < 0.01             # relative std of the std 0.16%
    assert not layer.params["bias"].any()


def test_linear_same_rng_seed_gives_same_weights():
    a, b = Linear(6, 4, rng=np.random.default_rng(7)), Linear(6, 4, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
    assert not np.array_equal(a.params["weight"], Linear(6, 4, rng=np.random.default_rng(8)).params["weight"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_matches_torch(dtype, rng):
    torch = require_torch()
    layer = Linear(7, 5, dtype=dtype, rng=rng)
    layer.params["bias"][:] = rng.standard_normal(5)
    x, dy = rng.standard_normal((3, 7)).astype(dtype), rng.standard_normal((3, 5)).astype(dtype)
    tx, tw, tb = (as_torch(a, grad=True) for a in (x, layer.params["weight"], layer.params["bias"]))
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(as_torch(dy))
    assert_close(layer.forward(x), ty)
    assert_close(layer.backward(dy), tx.grad)
    assert_close(layer.grads["weight"], tw.grad)
    assert_close(layer.grads["bias"], tb.grad)
