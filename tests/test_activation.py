import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from minidet.gradcheck import check_layer
from minidet.nn.activation import ReLU
from tests.reference import as_torch, assert_close, require_torch

# odd multiples of 1/32: never 0, where ReLU has no derivative, and never within eps of it
off_zero = st.integers(-64, 63).map(lambda k: (2 * k + 1) / 32)
inputs = arrays(np.float64, array_shapes(min_dims=1, max_dims=4, max_side=4), elements=off_zero)


@given(inputs)
def test_relu_forward_is_max_with_zero(x):
    expected = np.array([max(v, 0.0) for v in x.ravel()]).reshape(x.shape)
    np.testing.assert_array_equal(ReLU().forward(x), expected)


@given(inputs)
def test_relu_backward_matches_numerical_gradient(x):
    assert check_layer(ReLU(), x)["input0"] < 1e-6


@given(inputs)
def test_relu_gradient_passes_only_where_input_is_positive(x):
    relu = ReLU()
    relu.forward(x)
    dy = np.arange(1.0, x.size + 1).reshape(x.shape)
    expected = [d if v > 0 else 0.0 for v, d in zip(x.ravel(), dy.ravel())]
    np.testing.assert_array_equal(relu.backward(dy).ravel(), expected)


def test_relu_keeps_float32(rng):
    relu = ReLU()
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    assert relu.forward(x).dtype == np.float32 and relu.backward(x).dtype == np.float32


def test_relu_matches_torch(rng):
    torch = require_torch()
    x, dy = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 5))
    relu, tx = ReLU(), as_torch(x, grad=True)
    ty = torch.nn.functional.relu(tx)
    ty.backward(as_torch(dy))
    assert_close(relu.forward(x), ty)
    assert_close(relu.backward(dy), tx.grad)
