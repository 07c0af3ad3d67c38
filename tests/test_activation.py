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


@given(inputs)
def test_relu_in_place_gives_the_same_output_and_gradient(x):
    dy = np.arange(1.0, x.size + 1).reshape(x.shape)
    plain = ReLU()
    y, dx = plain.forward(x), plain.backward(dy)
    inplace = ReLU(inplace=True)
    x2, dy2 = x.copy(), dy.copy()
    y2 = inplace.forward(x2)
    assert y2 is x2                                    # written over its input
    np.testing.assert_array_equal(y2, y)
    dx2 = inplace.backward(dy2)
    assert dx2 is dy2
    np.testing.assert_array_equal(dx2, dx)


def test_relu_keeps_its_output_as_the_mask_and_nothing_when_no_backward_comes(rng):
    x = rng.standard_normal((3, 4))
    relu = ReLU()
    y = relu.forward(x)
    assert relu.y is y and not [v for v in vars(relu).values() if isinstance(v, np.ndarray) and v is not y]
    relu.needs_input_grad = False
    relu.forward(x)
    assert relu.y is None
    relu.needs_input_grad, relu.training = True, False
    relu.forward(x)
    assert relu.y is None
