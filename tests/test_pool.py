import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidet.gradcheck import check_layer
from minidet.nn.pool import MaxPool2d
from minidet.ops.maxpool import max_pool_backward, max_pool_forward, max_pool_reference, pooled_size
from tests.reference import as_torch, assert_close, require_torch


@st.composite
def pool_case(draw, dtypes=(np.float32, np.float64), max_size=9):
    """A MaxPool2d and an input of distinct values (a permutation): every window has one maximum."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = draw(st.integers(max(1, kh - 2 * ph), max_size))
    w = draw(st.integers(max(1, kw - 2 * pw), max_size))
    ceil_mode = draw(st.booleans())
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = (rng.permutation(n * c * h * w).reshape(n, c, h, w) - n * c * h * w / 2).astype(dtype)
    return MaxPool2d((kh, kw), (sh, sw), (ph, pw), ceil_mode), x


def pool_by_loops(x, kernel_size, stride, padding, out_size):
    """Each window clipped to the input, its maximum and the flat index of its first maximum."""
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel_size, stride, padding, out_size
    n, c, h, w = x.shape
    y = np.zeros((n, c, oh, ow), x.dtype)
    argmax = np.zeros((n, c, oh, ow), np.int64)
    for b in range(n):
        for ch in range(c):
            for r in range(oh):
                for s in range(ow):
                    best = None
                    for i in range(max(r * sh - ph, 0), min(r * sh - ph + kh, h)):
                        for j in range(max(s * sw - pw, 0), min(s * sw - pw + kw, w)):
                            if best is None or x[b, ch, i, j] > best:
                                best, argmax[b, ch, r, s] = x[b, ch, i, j], i * w + j
                    y[b, ch, r, s] = best
    return y, argmax


def caffe_size(size, k, s, p, ceil_mode):
    """The output-size rule written out as Caffe's pooling layer computes it."""
    rounding = math.ceil if ceil_mode else math.floor
    out = int(rounding((size + 2 * p - k) / s)) + 1
    if (out - 1) * s >= size + p:      # the last window must start inside the input or its left pad
        out -= 1
    return out


@given(pool_case())
def test_max_pool_forward_matches_plain_loops(case):
    pool, x = case
    y = pool.forward(x)
    n, c, h, w = x.shape
    out_size = tuple(caffe_size(size, k, s, p, pool.ceil_mode)
                     for size, k, s, p in zip((h, w), pool.kernel_size, pool.stride, pool.padding))
    expected_y, expected_argmax = pool_by_loops(x, pool.kernel_size, pool.stride, pool.padding, out_size)
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(pool.argmax, expected_argmax)


@given(pool_case())
def test_max_pool_kernel_equals_the_numpy_reference(case):
    pool, x = case
    x[..., ::2, ::3] = 7.0                     # ties too: the first maximum in row-major order wins
    y, argmax = max_pool_forward(x, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode)
    expected_y, expected_argmax = max_pool_reference(x, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(argmax, expected_argmax)


@given(pool_case(dtypes=(np.float64,), max_size=7))
def test_max_pool_backward_matches_numerical_gradient(case):
    pool, x = case
    errors = check_layer(pool, x)
    assert errors["input0"] < 1e-6, errors


@given(pool_case())
def test_max_pool_gradient_lands_on_argmax(case):
    pool, x = case
    y = pool.forward(x)
    dy = np.random.default_rng(0).standard_normal(y.shape).astype(x.dtype)
    dx = pool.backward(dy)
    expected = np.zeros(x.shape, np.float64)
    n, c, oh, ow = y.shape
    for b, ch, r, s in np.ndindex(n, c, oh, ow):            # overlapping windows add up
        i, j = divmod(int(pool.argmax[b, ch, r, s]), x.shape[3])
        expected[b, ch, i, j] += dy[b, ch, r, s]
    assert dx.dtype == x.dtype
    tol = 1e-6 if x.dtype == np.float32 else 1e-14
    np.testing.assert_allclose(dx, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("size, k, s, p, ceil_mode, expected", [
    (600, 2, 2, 0, True, 300), (75, 2, 2, 0, True, 38), (75, 2, 2, 0, False, 37),
    (125, 2, 2, 0, True, 63), (125, 2, 2, 0, False, 62),
    (5, 3, 2, 1, True, 3), (6, 3, 2, 1, True, 4), (6, 3, 2, 1, False, 3),
    (5, 2, 3, 1, True, 2),        # ceil gives 3, but window 3 would start at 6 - 1 = 5: past the input
    (4, 3, 3, 0, True, 2), (4, 3, 3, 0, False, 1), (1, 1, 1, 0, True, 1),
])
def test_pooled_size_hand_cases(size, k, s, p, ceil_mode, expected):
    assert pooled_size(size, k, s, p, ceil_mode) == expected == caffe_size(size, k, s, p, ceil_mode)


def test_vgg16_pools_take_600x1000_to_38x63_in_ceil_mode():
    x = np.zeros((1, 1, 600, 1000), np.float32)
    pools = [MaxPool2d(2, 2, ceil_mode=True) for _ in range(4)]
    for pool in pools:
        x = pool.forward(x)
    assert x.shape == (1, 1, 38, 63)
    for pool in reversed(pools):                # and the backward walks the shapes back
        x = pool.backward(x)
    assert x.shape == (1, 1, 600, 1000)
    assert MaxPool2d(2).forward(np.zeros((1, 1, 75, 125), np.float32)).shape == (1, 1, 37, 62)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel_size, stride, padding, ceil_mode", [
    (2, 2, 0, True), (2, 2, 0, False), (3, 2, 1, True), (3, 1, 1, False), (2, 3, 1, True),
    ((3, 2), (2, 3), (1, 0), True),
])
def test_max_pool_matches_torch(dtype, kernel_size, stride, padding, ceil_mode, rng):
    torch = require_torch()
    x = rng.permutation(2 * 3 * 11 * 13).reshape(2, 3, 11, 13).astype(dtype)
    pool = MaxPool2d(kernel_size, stride, padding, ceil_mode)
    tx = as_torch(x, grad=True)
    ty, tindex = torch.nn.functional.max_pool2d(tx, kernel_size, stride, padding, ceil_mode=ceil_mode,
                                                return_indices=True)
    dy = rng.standard_normal(tuple(ty.shape)).astype(dtype)
    ty.backward(as_torch(dy))
    assert_close(pool.forward(x), ty)
    np.testing.assert_array_equal(pool.argmax, tindex.numpy())
    assert_close(pool.backward(dy), tx.grad)


@given(st.integers(1, 3), st.integers(2, 21), st.integers(2, 41), st.booleans(),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**16))
def test_vgg16_2x2_windows_equal_the_reference_with_ties_nan_and_odd_sizes(c, h, w, ceil_mode, dtype, seed):
    """2x2, stride 2, no padding runs its own vectorised row loops: the same maxima and argmax as the
    plain reference, on values with many ties, NaNs and infinities, over odd and even sizes (in ceil
    mode the last row or column of windows holds one input row or column; in floor mode the last
    input row or column is in no window), and the backward that writes dx whole equals a scatter of
    dy onto the argmax into zeros."""
    rng = np.random.default_rng(seed)
    values = np.array([-np.inf, -1.0, 0.0, 0.0, 1.0, 2.0, np.inf, np.nan], dtype)
    x = rng.choice(values, size=(2, c, h, w))
    y, argmax = max_pool_forward(x, 2, 2, 0, ceil_mode)
    expected_y, expected_argmax = max_pool_reference(x, 2, 2, 0, ceil_mode)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(argmax, expected_argmax)
    dy = rng.standard_normal(y.shape).astype(dtype)
    expected_dx = np.zeros(x.shape, dtype)
    planes = expected_dx.reshape(x.shape[0] * c, h * w)
    np.add.at(planes, (np.arange(len(planes))[:, None], argmax.reshape(len(planes), -1)), dy.reshape(len(planes), -1))
    np.testing.assert_array_equal(max_pool_backward(dy, argmax, x.shape, 2, 2, 0), expected_dx)


def test_max_pool_nan_wins_its_window():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    y, argmax = max_pool_forward(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and argmax[0, 0, 0, 0] == 1
    assert y[0, 0, 1, 1] == 15


def test_max_pool_rejects_padding_over_half_the_kernel():
    with pytest.raises(ValueError, match="at most half"):
        MaxPool2d(2, padding=2).forward(np.zeros((1, 1, 4, 4), np.float32))
