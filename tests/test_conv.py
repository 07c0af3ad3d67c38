import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidet.nn.conv as conv_module
from minidet.gradcheck import check_layer
from minidet.nn.conv import SHARED_WORKSPACE, Conv2d, Workspace
from minidet.ops.im2col import col2im, col2im_reference, im2col, im2col_reference
from tests.reference import as_torch, assert_close, require_torch


@st.composite
def conv_case(draw, dtypes=(np.float32, np.float64), max_size=7):
    """A Conv2d with random bias and an input it fits: any batch, kernel, stride, padding, dtype."""
    n, c, f = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * ph), max_size))
    w = draw(st.integers(max(1, kw - 2 * pw), max_size))
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    winograd_fits = (kh, kw, sh, sw, ph, pw) == (3, 3, 1, 1, 1, 1)
    algorithm = draw(st.sampled_from(["auto", "im2col"] + ["winograd2", "winograd4"] * winograd_fits))
    conv = Conv2d(c, f, (kh, kw), (sh, sw), (ph, pw), dtype=dtype, rng=rng, algorithm=algorithm)
    conv.params["bias"][:] = rng.standard_normal(f)
    return conv, rng.standard_normal((n, c, h, w)).astype(dtype)


def conv_by_loops(x, weight, bias, stride, padding):
    """y[n, f, oh, ow] = b[f] + sum_{c,i,j} xpad[n, c, oh*sh + i, ow*sw + j] * W[f, c, i, j], one output at a time."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    f, _, kh, kw = weight.shape
    xpad = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    xpad[:, :, ph:ph + h, pw:pw + w] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = np.zeros((n, f, oh, ow))
    for b in range(n):
        for o in range(f):
            for r in range(oh):
                for s in range(ow):
                    window = xpad[b, :, r * sh:r * sh + kh, s * sw:s * sw + kw]
                    y[b, o, r, s] = bias[o] + np.sum(window * weight[o])
    return y


@given(conv_case())
def test_conv_forward_matches_plain_loops(case):
    conv, x = case
    y = conv.forward(x)
    expected = conv_by_loops(x.astype(np.float64), conv.params["weight"].astype(np.float64),
                             conv.params["bias"].astype(np.float64), conv.stride, conv.padding)
    assert y.dtype == x.dtype and y.shape == conv.output_shape(x.shape)
    tol = 1e-5 if x.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)


@given(conv_case(dtypes=(np.float64,), max_size=6))
def test_conv_backward_matches_numerical_gradient(case):
    conv, x = case
    errors = check_layer(conv, x)
    assert set(errors) == {"input0", "weight", "bias"}
    assert max(errors.values()) < 1e-6, errors


@given(conv_case())
def test_conv_float32_stays_float32_and_float64_stays_float64(case):
    conv, x = case
    y = conv.forward(x)
    dx = conv.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == conv.grads["weight"].dtype == conv.grads["bias"].dtype == x.dtype
    assert dx.shape == x.shape and conv.grads["weight"].shape == conv.params["weight"].shape


@given(conv_case())
def test_col2im_is_the_adjoint_of_im2col(case):
    # <im2col(x), d> == <x, col2im(d)> for all x and d: col2im is exactly im2col's transpose
    conv, x = case
    x = x.astype(np.float64)
    cols = im2col(x, conv.kernel_size, conv.stride, conv.padding)
    d = np.random.default_rng(1).standard_normal(cols.shape)
    dx = col2im(d, x.shape, conv.kernel_size, conv.stride, conv.padding)
    np.testing.assert_allclose(np.sum(cols * d), np.sum(x * dx), rtol=1e-12)


@given(conv_case())
def test_im2col_kernels_equal_the_numpy_reference(case):
    conv, x = case
    geometry = conv.kernel_size, conv.stride, conv.padding
    cols = im2col(x, *geometry)
    np.testing.assert_array_equal(cols, im2col_reference(x, *geometry))
    d = np.random.default_rng(2).standard_normal(cols.shape).astype(x.dtype)
    tol = 1e-6 if x.dtype == np.float32 else 1e-14
    np.testing.assert_allclose(col2im(d, x.shape, *geometry), col2im_reference(d, x.shape, *geometry),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0), ((2, 1), (0, 2))])
def test_conv_matches_torch(dtype, stride, padding, rng):
    torch = require_torch()
    conv = Conv2d(5, 6, (3, 2), stride, padding, dtype=dtype, rng=rng)
    conv.params["bias"][:] = rng.standard_normal(6)
    x = rng.standard_normal((3, 5, 11, 9)).astype(dtype)
    tx, tw, tb = (as_torch(a, grad=True) for a in (x, conv.params["weight"], conv.params["bias"]))
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding)
    dy = rng.standard_normal(tuple(ty.shape)).astype(dtype)
    ty.backward(as_torch(dy))
    assert_close(conv.forward(x), ty)
    assert_close(conv.backward(dy), tx.grad)
    assert_close(conv.grads["weight"], tw.grad, rtol=1e-4 if dtype == np.float32 else None)
    assert_close(conv.grads["bias"], tb.grad)


def test_conv_vgg_layer_matches_torch_in_float32(rng):
    torch = require_torch()
    conv = Conv2d(64, 32, 3, padding=1, rng=rng)
    x = rng.standard_normal((2, 64, 19, 27)).astype(np.float32)
    dy = rng.standard_normal((2, 32, 19, 27)).astype(np.float32)
    tx, tw, tb = (as_torch(a, grad=True) for a in (x, conv.params["weight"], conv.params["bias"]))
    ty = torch.nn.functional.conv2d(tx, tw, tb, padding=1)
    ty.backward(as_torch(dy))
    assert_close(conv.forward(x), ty, rtol=1e-4, atol=1e-4)
    assert_close(conv.backward(dy), tx.grad, rtol=1e-4, atol=1e-4)
    assert_close(conv.grads["weight"], tw.grad, rtol=1e-4, atol=1e-3)
    assert_close(conv.grads["bias"], tb.grad, rtol=1e-4, atol=1e-3)


def test_conv_frozen_leaves_grads_empty_and_still_returns_dx(rng):
    conv = Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=rng)
    x, dy = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 3, 5, 4))
    conv.forward(x)
    dx = conv.backward(dy)
    assert set(conv.grads) == {"weight", "bias"}
    conv.frozen = True
    conv.forward(x)
    np.testing.assert_allclose(conv.backward(dy), dx)
    assert conv.grads == {}
    assert conv.x is None                         # nothing kept for a weight gradient


def test_conv_without_input_grad_returns_none_and_fills_grads(rng):
    conv = Conv2d(2, 3, 3, stride=2, padding=1, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 2, 7, 6))
    reference = Conv2d(2, 3, 3, stride=2, padding=1, dtype=np.float64, rng=rng)
    reference.params = {name: value.copy() for name, value in conv.params.items()}
    dy = rng.standard_normal(conv.output_shape(x.shape))
    conv.needs_input_grad = False
    conv.forward(x)
    assert conv.backward(dy) is None
    reference.forward(x)
    reference.backward(dy)
    np.testing.assert_allclose(conv.grads["weight"], reference.grads["weight"])
    np.testing.assert_allclose(conv.grads["bias"], dy.sum(axis=(0, 2, 3)))
    assert check_layer(conv, x, wrt=())["weight"] < 1e-6


def test_conv_frozen_without_input_grad_does_no_backward_work(rng):
    conv = Conv2d(2, 3, 3, dtype=np.float64, rng=rng)
    conv.frozen, conv.needs_input_grad = True, False
    y = conv.forward(rng.standard_normal((1, 2, 4, 4)))
    assert conv.backward(np.ones_like(y)) is None and conv.grads == {}


def test_conv_reused_buffers_follow_changing_shapes_and_dtypes(rng):
    # a training loop feeds images of varying size through one layer: the kept buffers must not leak
    conv = Conv2d(3, 4, 3, padding=1, dtype=np.float64, rng=rng)
    for shape, dtype in [((2, 3, 9, 7), np.float64), ((1, 3, 4, 5), np.float64), ((3, 3, 6, 6), np.float32),
                         ((2, 3, 9, 7), np.float64)]:
        x = rng.standard_normal(shape).astype(dtype)
        dy = rng.standard_normal(conv.output_shape(shape)).astype(dtype)
        fresh = Conv2d(3, 4, 3, padding=1, dtype=np.float64)
        fresh.params = conv.params
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(conv.forward(x), fresh.forward(x), rtol=tol, atol=tol)
        np.testing.assert_allclose(conv.backward(dy), fresh.backward(dy), rtol=tol, atol=tol)
        np.testing.assert_allclose(conv.grads["weight"], fresh.grads["weight"], rtol=tol, atol=tol)


def test_conv_output_is_not_a_reused_buffer(rng):
    conv = Conv2d(2, 2, 3, padding=1, dtype=np.float64, rng=rng)
    x = rng.standard_normal((1, 2, 5, 5))
    y1 = conv.forward(x)
    kept = y1.copy()
    y2 = conv.forward(2 * x)
    dx1 = conv.backward(np.ones_like(y2))
    dx1_kept = dx1.copy()
    conv.backward(2 * np.ones_like(y2))
    np.testing.assert_array_equal(y1, kept)
    np.testing.assert_array_equal(dx1, dx1_kept)


def test_conv_init_is_he_normal_with_zero_bias():
    conv = Conv2d(64, 100, 3, rng=np.random.default_rng(0))
    w = conv.params["weight"]
    assert w.shape == (100, 64, 3, 3) and w.dtype == np.float32
    std = np.sqrt(2 / (64 * 9))
    assert abs(w.std() / std - 1) < 0.01                          # 57600 draws: relative std of the std 0.3%
    assert abs(w.mean()) < 0.02 * std                             # std of the mean 0.004 std
    assert not conv.params["bias"].any()


def test_conv_rejects_wrong_channels_and_too_small_inputs(rng):
    conv = Conv2d(3, 4, 5, rng=rng)
    with pytest.raises(ValueError, match="takes"):
        conv.forward(np.zeros((1, 2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        conv.forward(np.zeros((1, 3, 4, 8), np.float32))


@st.composite
def output_rows(draw, n, oh):
    g0 = draw(st.integers(0, n * oh - 1))
    return g0, draw(st.integers(g0 + 1, n * oh))


@given(conv_case(dtypes=(np.float64,)), st.data())
def test_im2col_of_a_range_of_rows_is_that_slice_of_the_whole(case, data):
    conv, x = case
    geometry = conv.kernel_size, conv.stride, conv.padding
    _, _, oh, ow = conv.output_shape(x.shape)
    g0, g1 = data.draw(output_rows(x.shape[0], oh))
    whole = im2col(x, *geometry)
    np.testing.assert_array_equal(im2col(x, *geometry, rows=(g0, g1)), whole[:, g0 * ow:g1 * ow])
    # col2im of the chunks, added up, is col2im of the whole
    d = np.random.default_rng(0).standard_normal(whole.shape)
    dx = np.zeros(x.shape)
    for rows in ((0, g0), (g0, g1), (g1, x.shape[0] * oh)):
        if rows[1] > rows[0]:
            col2im(d[:, rows[0] * ow:rows[1] * ow], x.shape, *geometry, out=dx, rows=rows)
    np.testing.assert_allclose(dx, col2im(d, x.shape, *geometry), rtol=1e-12, atol=1e-12)


@given(conv_case(dtypes=(np.float64,), max_size=9), st.integers(1, 12))
def test_conv_in_chunks_of_rows_equals_one_chunk(case, min_columns):
    # a one-byte workspace gives chunks of ceil(min_columns / OW) output rows, inside images and across them
    conv, x = case
    whole = Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                   dtype=np.float64, algorithm=conv.algorithm, workspace=Workspace(1 << 30))
    whole.params = conv.params
    conv.workspace = Workspace(1)
    dy = np.random.default_rng(0).standard_normal(conv.output_shape(x.shape))
    assert_chunked_equals_whole(conv, whole, x, dy, min_columns)


def assert_chunked_equals_whole(chunked, whole, x, dy, min_columns):
    """The forward, dx and dW of a layer run in chunks of at least min_columns columns (its workspace
    too small for more) equal those of the same layer run whole, to float64's rounding."""
    saved, conv_module.MIN_CHUNK_COLUMNS = conv_module.MIN_CHUNK_COLUMNS, min_columns
    try:
        y, dx = chunked.forward(x), chunked.backward(dy)
    finally:
        conv_module.MIN_CHUNK_COLUMNS = saved
    np.testing.assert_allclose(y, whole.forward(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, whole.backward(dy), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(chunked.grads["weight"], whole.grads["weight"], rtol=1e-11, atol=1e-11)


def test_convolutions_share_one_workspace_sized_for_the_largest_chunk(rng):
    SHARED_WORKSPACE.release()
    small, large = Conv2d(4, 4, 3, padding=1, rng=rng), Conv2d(4, 32, 3, padding=1, rng=rng)
    assert small.workspace is large.workspace is SHARED_WORKSPACE
    x = rng.standard_normal((2, 4, 30, 30)).astype(np.float32)
    large.forward(x)
    after_large = SHARED_WORKSPACE.nbytes
    small.forward(x)
    assert SHARED_WORKSPACE.nbytes == after_large > 0           # the small layer fits in the large one's buffer
    assert not any(isinstance(v, np.ndarray) and v.nbytes > 4096 for v in vars(small).values()
                   if v is not small.x)                          # no buffer of its own


def test_conv_keeps_its_input_only_for_a_weight_gradient(rng):
    conv = Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=rng)
    x = rng.standard_normal((1, 2, 6, 5))
    conv.forward(x)
    assert conv.x is x                                          # a reference, not a copy
    conv.training = False                                       # test mode: nothing kept, no backward
    conv.forward(x)
    assert conv.x is None
    with pytest.raises(RuntimeError, match="training mode"):
        conv.backward(np.ones((1, 3, 6, 5)))
    conv.training, conv.frozen = True, True                     # frozen: dx needs the weights only
    conv.forward(x)
    assert conv.x is None and conv.backward(np.ones((1, 3, 6, 5))).shape == x.shape


def test_conv_auto_takes_winograd_for_float32_3x3_and_im2col_otherwise(rng):
    vgg = Conv2d(64, 64, 3, padding=1, rng=rng)
    assert vgg.choose_algorithm(np.zeros((1, 64, 8, 8), np.float32)).startswith("winograd")
    assert vgg.choose_algorithm(np.zeros((1, 64, 8, 8), np.float64)) == "im2col"
    assert Conv2d(3, 64, 3, padding=1).choose_algorithm(np.zeros((1, 3, 8, 8), np.float32)) == "im2col"
    assert Conv2d(64, 64, 3, stride=2, padding=1).choose_algorithm(np.zeros((1, 64, 8, 8), np.float32)) == "im2col"
    with pytest.raises(ValueError, match="algorithm must be one of"):
        Conv2d(3, 4, 3, algorithm="fft")
