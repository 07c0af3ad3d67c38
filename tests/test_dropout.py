import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from minidet.gradcheck import FixedMaskDropout, check_layer
from minidet.nn.dropout import Dropout

nonzero = st.integers(1, 64).map(lambda k: k / 16) | st.integers(-64, -1).map(lambda k: k / 16)
inputs = arrays(np.float64, array_shapes(min_dims=1, max_dims=4, max_side=5), elements=nonzero)
probabilities = st.sampled_from([0.0, 0.1, 0.5, 0.9])


@given(inputs, probabilities, st.integers(0, 2**16))
def test_dropout_same_seed_gives_same_masks(x, p, seed):
    a, b = Dropout(p, seed), Dropout(p, seed)
    for _ in range(2):
        np.testing.assert_array_equal(a.forward(x), b.forward(x))


def test_dropout_draws_a_new_mask_each_forward_and_per_seed():
    x = np.ones((64, 64))
    layer = Dropout(0.5, seed=1)
    first, second = layer.forward(x), layer.forward(x)
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, Dropout(0.5, seed=2).forward(x))


@given(inputs, probabilities)
def test_dropout_eval_is_identity(x, p):
    layer = Dropout(p, seed=0)
    assert layer.eval().forward(x) is x
    dy = x + 1
    assert layer.backward(dy) is dy


@given(inputs, probabilities, st.integers(0, 2**16))
def test_dropout_gradient_is_mask_times_scale(x, p, seed):
    layer = Dropout(p, seed)
    y = layer.forward(x)
    kept = y != 0  # x has no zeros, so a zero output is a dropped unit
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-15)
    dy = np.arange(1.0, x.size + 1).reshape(x.shape)
    np.testing.assert_allclose(layer.backward(dy), np.where(kept, dy / (1 - p), 0.0), rtol=1e-15)


@given(inputs, probabilities, st.integers(0, 2**16))
def test_dropout_backward_matches_numerical_gradient(x, p, seed):
    assert check_layer(FixedMaskDropout(p, seed), x)["input0"] < 1e-6


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_preserves_the_expectation(p, dtype):
    # 10^6 units, fixed seed: the standard deviation of the mean is sqrt(p / (1 - p)) / 1000 <= 0.003
    y = Dropout(p, seed=0).forward(np.ones((1000, 1000), dtype))
    assert y.dtype == dtype
    assert abs(y.mean() - 1) < 0.015
    assert abs((y != 0).mean() - (1 - p)) < 0.005


def test_dropout_rejects_probability_one():
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)
