"""Winograd F(2x2, 3x3) and F(4x4, 3x3): the matrices, the Cython transforms against the NumPy
reference, each transform against its adjoint, and the convolution against direct ones."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidet.gradcheck import check_layer
import minidet.nn.conv as conv_module
from minidet.nn.conv import Conv2d, Workspace
from minidet.ops import winograd
from tests.test_conv import assert_chunked_equals_whole, conv_by_loops

TILES = winograd.TILE_SIZES


@st.composite
def layer_case(draw, max_size=11):
    """(m, x, weight, bias, dy) in float64: odd sizes, sizes that are no multiple of the tile, N > 1."""
    m = draw(st.sampled_from(TILES))
    n, c, f = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return (m, rng.standard_normal((n, c, h, w)), rng.standard_normal((f, c, 3, 3)), rng.standard_normal(f),
            rng.standard_normal((n, f, h, w)))


@st.composite
def tile_rows(draw, n, h, m):
    """A range (g0, g1) of the n * ceil(h / m) tile rows."""
    total = n * winograd.tiles(h, m)
    g0 = draw(st.integers(0, total - 1))
    return g0, draw(st.integers(g0 + 1, total))


@pytest.mark.parametrize("m", TILES)
def test_one_dimensional_winograd_is_a_correlation(m):
    # F(m, 3): A^T [(G g) * (B^T d)] = the m outputs of correlating g with the a = m + 2 inputs d
    bt, g, at = winograd.matrices(m)
    rng = np.random.default_rng(m)
    for _ in range(20):
        d, filt = rng.standard_normal(m + 2), rng.standard_normal(3)
        expected = [d[i:i + 3] @ filt for i in range(m)]
        np.testing.assert_allclose(at @ ((g @ filt) * (bt @ d)), expected, rtol=1e-13, atol=1e-13)


@given(layer_case(), st.data())
def test_cython_transforms_equal_the_numpy_reference(case, data):
    m, x, weight, bias, dy = case
    n, c, h, w = x.shape
    rows = data.draw(tile_rows(n, h, m))
    np.testing.assert_allclose(winograd.filter_transform(weight, m), winograd.filter_transform_reference(weight, m),
                               rtol=1e-13, atol=1e-13)
    v = winograd.input_transform(x, m, rows)
    np.testing.assert_allclose(v, winograd.input_transform_reference(x, m, rows), rtol=1e-13, atol=1e-12)
    z = winograd.output_transform_adjoint(dy, m, rows)
    np.testing.assert_allclose(z, winograd.output_transform_adjoint_reference(dy, m, rows), rtol=1e-13, atol=1e-12)
    du = np.random.default_rng(0).standard_normal(((m + 2) ** 2, weight.shape[0], c))
    np.testing.assert_allclose(winograd.filter_transform_adjoint(du, m),
                               winograd.filter_transform_adjoint_reference(du, m), rtol=1e-13, atol=1e-12)
    # output transform and input adjoint write only the rows' pixels: compare through the NumPy paths
    mm = np.random.default_rng(1).standard_normal(((m + 2) ** 2, weight.shape[0], v.shape[2]))
    y = np.full(dy.shape, np.nan)
    winograd.output_transform(mm, bias, m, y, rows)
    expected = np.full(dy.shape, np.nan)
    winograd._write_tile_rows(expected, winograd.output_transform_reference(mm, bias, m, dy.shape, rows), m, rows)
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-12)
    dx = np.ones(x.shape)
    winograd.input_transform_adjoint(v, m, dx, rows)
    expected = np.ones(x.shape)
    winograd._add_tile_rows(expected, winograd.input_transform_adjoint_reference(v, m, x.shape, rows), m, rows)
    np.testing.assert_allclose(dx, expected, rtol=1e-13, atol=1e-11)


@given(layer_case())
def test_each_backward_transform_is_the_adjoint_of_its_forward_transform(case):
    # <T(a), b> == <a, T^T(b)> for the three pairs: the backward is the forward's transpose
    m, x, weight, bias, dy = case
    rng = np.random.default_rng(0)
    u = winograd.filter_transform(weight, m)
    du = rng.standard_normal(u.shape)
    np.testing.assert_allclose(np.sum(u * du), np.sum(weight * winograd.filter_transform_adjoint(du, m)), rtol=1e-11)
    v = winograd.input_transform(x, m)
    dv = rng.standard_normal(v.shape)
    dx = winograd.input_transform_adjoint(dv, m, np.zeros(x.shape))
    np.testing.assert_allclose(np.sum(v * dv), np.sum(x * dx), rtol=1e-11)
    mm = rng.standard_normal((v.shape[0], weight.shape[0], v.shape[2]))
    y = winograd.output_transform(mm, np.zeros(len(bias)), m, np.empty(dy.shape))
    np.testing.assert_allclose(np.sum(y * dy), np.sum(mm * winograd.output_transform_adjoint(dy, m)), rtol=1e-11)


def direct_gradients(x, weight, dy):
    """dx and dW of a 3x3 pad-1 correlation by explicit sums over the 9 taps (float64)."""
    n, c, h, w = x.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    dxpad = np.zeros_like(xpad)
    dw = np.zeros_like(weight)
    for i in range(3):
        for j in range(3):
            window = xpad[:, :, i:i + h, j:j + w]                              # (N, C, H, W)
            dw[:, :, i, j] = np.einsum("nfhw,nchw->fc", dy, window)
            dxpad[:, :, i:i + h, j:j + w] += np.einsum("nfhw,fc->nchw", dy, weight[:, :, i, j])
    return dxpad[:, :, 1:h + 1, 1:w + 1], dw


def winograd_layer(m, weight, bias, workspace=None):
    conv = Conv2d(weight.shape[1], weight.shape[0], 3, padding=1, dtype=weight.dtype,
                  algorithm=f"winograd{m}", workspace=workspace)
    conv.params = {"weight": weight, "bias": bias}
    return conv


@given(layer_case())
def test_winograd_layer_equals_direct_convolution_forward_and_gradients(case):
    m, x, weight, bias, dy = case
    conv = winograd_layer(m, weight, bias)
    np.testing.assert_allclose(conv.forward(x), conv_by_loops(x, weight, bias, (1, 1), (1, 1)), rtol=1e-11, atol=1e-11)
    dx = conv.backward(dy)
    dx_direct, dw_direct = direct_gradients(x, weight, dy)
    np.testing.assert_allclose(dx, dx_direct, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(conv.grads["weight"], dw_direct, rtol=1e-11, atol=1e-10)
    np.testing.assert_allclose(conv.grads["bias"], dy.sum(axis=(0, 2, 3)), rtol=1e-12)


@given(layer_case(max_size=7))
def test_winograd_layer_backward_matches_numerical_gradient(case):
    m, x, weight, bias, _ = case
    errors = check_layer(winograd_layer(m, weight, bias), x)
    assert max(errors.values()) < 1e-6, errors


@given(layer_case(max_size=14), st.integers(1, 3))
def test_winograd_layer_in_chunks_equals_one_chunk(case, rows_budget):
    # a workspace of a few tile rows splits the layer inside images and across them
    m, x, weight, bias, dy = case
    whole, chunked = (winograd_layer(m, weight, bias, Workspace(size)) for size in (1 << 30, 1))
    assert_chunked_equals_whole(chunked, whole, x, dy, rows_budget)


@pytest.mark.parametrize("m, tol", [(2, 1e-5), (4, 1e-5)])
def test_winograd_float32_stays_close_to_float64(m, tol):
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 16, 13, 18)), rng.standard_normal((2, 8, 13, 18))
    weight, bias = rng.standard_normal((8, 16, 3, 3)) * 0.1, rng.standard_normal(8)
    exact = winograd_layer(m, weight, bias)
    fast = winograd_layer(m, weight.astype(np.float32), bias.astype(np.float32))
    y64, y32 = exact.forward(x), fast.forward(x.astype(np.float32))
    dx64, dx32 = exact.backward(dy), fast.backward(dy.astype(np.float32))
    assert y32.dtype == dx32.dtype == fast.grads["weight"].dtype == np.float32
    for a32, a64 in ((y32, y64), (dx32, dx64), (fast.grads["weight"], exact.grads["weight"])):
        assert np.abs(a32 - a64).max() <= tol * np.abs(a64).max()


def test_winograd_refuses_layers_it_cannot_compute():
    with pytest.raises(ValueError, match="3x3 kernels with stride 1 and padding 1"):
        Conv2d(3, 4, 3, stride=2, padding=1, algorithm="winograd2")
    with pytest.raises(ValueError, match="3x3 kernels"):
        Conv2d(3, 4, 5, padding=2, algorithm="winograd4")
    with pytest.raises(ValueError, match="tile size"):
        winograd.matrices(3)
    with pytest.raises(ValueError, match="rows must be a range"):
        winograd.input_transform(np.zeros((1, 2, 4, 4)), 2, rows=(0, 3))
    with pytest.raises(ValueError, match="must be a C-contiguous"):
        winograd.input_transform(np.zeros((1, 2, 4, 4)), 2, out=np.zeros((16, 2, 3)))
    with pytest.raises(TypeError, match="float32 or float64"):
        winograd.filter_transform(np.zeros((2, 2, 3, 3), np.int32), 2)
