"""RoI pooling against SPEC.md "RoI pooling", written out as plain loops, and against torchvision."""
import math
import weakref

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from minidet.gradcheck import check_layer, numerical_gradient, relative_error
from minidet.nn.roi_pool import RoIPool
from minidet.ops.roi_pool import (roi_bins, roi_pool, roi_pool_backward, roi_pool_backward_reference,
                                  roi_pool_reference)
from tests.reference import require_torchvision


# ---- SPEC.md, line by line ----------------------------------------------------------------

def c_round(v):
    """C's round(): halves away from zero. float(v) holds a float32 or float64 value exactly."""
    v = float(v)
    whole = math.trunc(v)
    fraction = v - whole  # exact
    return whole + (1 if fraction >= 0.5 else -1 if fraction <= -0.5 else 0)


def spec_roi_pool(x, rois, pooled_h, pooled_w, scale):
    """Plain loops over RoIs, channels, bins and cells; every product in x's float type."""
    real = x.dtype.type
    n_images, channels, height, width = x.shape
    y = np.zeros((len(rois), channels, pooled_h, pooled_w), x.dtype)
    argmax = np.zeros(y.shape, np.int32)
    for r in range(len(rois)):
        n = int(rois[r][0])
        start_w = c_round(real(rois[r][1]) * real(scale))
        start_h = c_round(real(rois[r][2]) * real(scale))
        end_w = c_round(real(rois[r][3]) * real(scale))
        end_h = c_round(real(rois[r][4]) * real(scale))
        bin_w = real(max(end_w - start_w + 1, 1)) / real(pooled_w)
        bin_h = real(max(end_h - start_h + 1, 1)) / real(pooled_h)
        for c in range(channels):
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    h_lo = min(max(math.floor(real(ph) * bin_h) + start_h, 0), height)
                    h_hi = min(max(math.ceil(real(ph + 1) * bin_h) + start_h, 0), height)
                    w_lo = min(max(math.floor(real(pw) * bin_w) + start_w, 0), width)
                    w_hi = min(max(math.ceil(real(pw + 1) * bin_w) + start_w, 0), width)
                    best, best_index = 0, -1
                    for h in range(h_lo, h_hi):
                        for w in range(w_lo, w_hi):
                            if best_index == -1 or x[n, c, h, w] > best:
                                best, best_index = x[n, c, h, w], h * width + w
                    y[r, c, ph, pw], argmax[r, c, ph, pw] = best, best_index
    return y, argmax


def spec_roi_pool_backward(dy, argmax, x_shape, rois):
    dx = np.zeros(x_shape, dy.dtype)
    width = x_shape[3]
    for r, c, ph, pw in np.ndindex(*dy.shape):
        a = argmax[r, c, ph, pw]
        if a >= 0:
            dx[int(rois[r][0]), c, a // width, a % width] += dy[r, c, ph, pw]
    return dx


# ---- inputs -------------------------------------------------------------------------------

@st.composite
def pooling_case(draw, dtype=None, ties=None, max_rois=6, scales=(1 / 16, 1 / 16, 1 / 8, 0.5, 0.3, 1.0)):
    """x, rois, (PH, PW), scale: RoIs inside, across and outside the map, corners on half cells."""
    dtype = dtype or draw(st.sampled_from([np.float32, np.float64]))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    scale = draw(st.sampled_from(scales))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if ties if ties is not None else draw(st.booleans()):
        x = rng.integers(-2, 3, (n, c, h, w)).astype(dtype)  # many equal values: the first must win
    else:
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
    # Corners on a grid of half cells (k * 0.5 / scale) or anywhere, from well outside to well inside.
    r = draw(st.integers(1, max_rois))
    span_w, span_h = (w + 4) / scale, (h + 4) / scale
    corners = rng.uniform(-2 / scale, [span_w, span_h, span_w, span_h], (r, 4))
    if draw(st.booleans()):
        corners = np.round(corners * 2 * scale) / (2 * scale)
    swap = rng.random(r) < 0.8  # mostly x1 <= x2; the rest may be degenerate RoIs, one cell wide or tall
    corners[swap] = np.concatenate([np.minimum(corners[swap, :2], corners[swap, 2:]),
                                    np.maximum(corners[swap, :2], corners[swap, 2:])], axis=1)
    rois = np.concatenate([rng.integers(0, n, (r, 1)), corners], axis=1).astype(dtype)
    return x, rois, (draw(st.integers(1, 4)), draw(st.integers(1, 4))), scale


# ---- forward ------------------------------------------------------------------------------

@given(pooling_case())
def test_roi_pool_matches_the_spec_loops(case):
    x, rois, (ph, pw), scale = case
    y, argmax = roi_pool(x, rois, (ph, pw), scale)
    expected_y, expected_argmax = spec_roi_pool(x, rois, ph, pw, scale)
    assert y.dtype == x.dtype and argmax.dtype == np.int32
    np.testing.assert_array_equal(argmax, expected_argmax)
    np.testing.assert_array_equal(y, expected_y)


@given(pooling_case())
def test_roi_pool_reference_matches_the_compiled_kernel(case):
    x, rois, size, scale = case
    y, argmax = roi_pool(x, rois, size, scale)
    y_ref, argmax_ref = roi_pool_reference(x, rois, size, scale)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)


def test_roi_pool_rounds_scaled_corners_halves_away_from_zero():
    # x = 8 at 1/16 is 0.5 -> 1, 24 -> 1.5 -> 2, 40 -> 2.5 -> 3 (np.round would say 2), -8 -> -0.5 -> -1.
    # A map that increases to the right puts each one-bin RoI's maximum on its last column, end_w.
    x = np.tile(np.arange(8, dtype=np.float32), (1, 1, 3, 1))
    rois = np.array([[0, 0, 0, x2, 0] for x2 in (8, 24, 40, 56)], np.float32)
    _, argmax = roi_pool(x, rois, (1, 1))
    assert argmax.ravel().tolist() == [1, 2, 3, 4]
    # start_w = round(-8 / 16) = -1: three columns -1, 0, 1, the first of which is off the map,
    # so bin 0 of 3 is empty (with 0 instead of -1 it would be column 0, not empty).
    y, argmax = roi_pool(x, np.array([[0, -8, 0, 8, 0]], np.float32), (1, 3))
    assert argmax.ravel().tolist() == [-1, 0, 1] and y.ravel().tolist() == [0, 0, 1]
    # The largest float32 below 8 scales to the largest float32 below 0.5, which rounds to 0
    # (floor(v + 0.5) in float32 would round it to 1).
    below = np.nextafter(np.float32(8), np.float32(0))
    _, argmax = roi_pool(x, np.array([[0, 0, 0, below, 0]], np.float32), (1, 1))
    assert argmax.item() == 0


def test_roi_pool_of_rois_outside_the_map_is_empty_and_partial_rois_are_clipped():
    x = np.arange(2 * 4 * 5, dtype=np.float64).reshape(1, 2, 4, 5) + 1
    rois = np.array([[0, -200, -200, -100, -100],   # wholly above-left
                     [0, 400, 0, 600, 60],          # wholly to the right
                     [0, -64, -64, 31, 31]], np.float64)  # cells -4..2 (2 is round(31/16)): partly outside
    y, argmax = roi_pool(x, rois, (2, 2))
    assert (y[:2] == 0).all() and (argmax[:2] == -1).all()
    # bins of 7 cells: [-4, 0) is off the map, [-1, 3) clips to rows/cols 0..2
    assert (argmax[2, :, 0, :] == -1).all() and (argmax[2, :, :, 0] == -1).all()
    np.testing.assert_array_equal(y[2, :, 1, 1], x[0, :, 2, 2])  # the increasing map peaks at (2, 2)
    np.testing.assert_array_equal(argmax[2, :, 1, 1], [2 * 5 + 2] * 2)


def test_roi_pool_of_a_single_cell_repeats_it_in_every_bin():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 6))
    rois = np.array([[1, 32, 48, 32, 48], [0, 33, 47, 39, 40]], np.float64)  # both round to cell (h 3, w 2)
    y, argmax = roi_pool(x, rois, (7, 7))
    np.testing.assert_array_equal(y[0], np.broadcast_to(x[1, :, 3, 2, None, None], (3, 7, 7)))
    np.testing.assert_array_equal(y[1], np.broadcast_to(x[0, :, 3, 2, None, None], (3, 7, 7)))
    assert (argmax == 3 * 6 + 2).all()
    dx = roi_pool_backward(np.ones_like(y), argmax, x.shape, rois)
    assert dx[1, :, 3, 2].tolist() == [49.0] * 3 and dx[0, :, 3, 2].tolist() == [49.0] * 3
    assert dx.sum() == 2 * 3 * 49


def one_box_on_two_images():
    """x (2, 4, 6, 7) whose second image is the first + 100, one box on images 0, 1, 0, and the
    generator that drew x, for the test's further draws."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 6, 7))
    box = [5, 3, 90, 70]
    return np.concatenate([x, x + 100]), np.array([[0] + box, [1] + box, [0] + box], np.float64), rng


def test_roi_pool_reads_each_rois_own_image():
    x, rois, rng = one_box_on_two_images()
    y, argmax = roi_pool(x, rois, (3, 3))
    np.testing.assert_array_equal(y[1], y[0] + 100)
    np.testing.assert_array_equal(argmax[1], argmax[0])
    dy = rng.standard_normal(y.shape)
    dx = roi_pool_backward(dy, argmax, x.shape, rois)
    only_second = roi_pool_backward(dy * (rois[:, 0] == 1)[:, None, None, None], argmax, x.shape, rois)
    np.testing.assert_array_equal(dx[1], only_second[1])
    assert np.isclose(dx[0].sum(), dy[[0, 2]].sum()) and np.isclose(dx[1].sum(), dy[1].sum())


@given(pooling_case(max_rois=4, scales=(1 / 16,)), st.integers(0, 1))
def test_shifting_map_and_roi_by_one_cell_shifts_only_the_argmax(case, axis):
    x, rois, size, scale = case
    rois[:, 1:] = np.abs(rois[:, 1:])  # C round is symmetric about 0, so a shift across 0 is not a shift
    shifted_x = np.concatenate([np.zeros_like(x[:, :, :1]), x], axis=2) if axis == 0 else \
        np.concatenate([np.zeros_like(x[..., :1]), x], axis=3)
    shifted_rois = rois.copy()
    shifted_rois[:, [2, 4] if axis == 0 else [1, 3]] += 16
    y, argmax = roi_pool(x, rois, size, scale)
    y2, argmax2 = roi_pool(shifted_x, shifted_rois, size, scale)
    np.testing.assert_array_equal(y2, y)
    w, w2 = x.shape[3], shifted_x.shape[3]
    moved = np.where(argmax >= 0, (argmax // w + (axis == 0)) * w2 + argmax % w + (axis == 1), -1)
    np.testing.assert_array_equal(argmax2, moved)


@given(pooling_case(dtype=np.float32))
def test_float32_and_float64_agree_wherever_their_bin_edges_agree(case):
    x, rois, (ph, pw), scale = case
    for roi in rois:  # the bin sizes are real numbers in each type; see the next test
        for corners, pooled, size in (((roi[2], roi[4]), ph, x.shape[2]), ((roi[1], roi[3]), pw, x.shape[3])):
            e32 = roi_bins(corners, scale, pooled, size, np.float32)
            e64 = roi_bins(np.float64(corners), scale, pooled, size, np.float64)
            assume(all(np.array_equal(a, b) for a, b in zip(e32, e64)))
    y32, argmax32 = roi_pool(x, rois, (ph, pw), scale)
    y64, argmax64 = roi_pool(x.astype(np.float64), rois.astype(np.float64), (ph, pw), scale)
    np.testing.assert_array_equal(y32, y64)
    np.testing.assert_array_equal(argmax32, argmax64)


def test_float64_bin_reaches_one_cell_further_on_a_29_cell_roi_as_in_the_original_layer():
    # 29 cells in 7 bins: ceil(7 * (29 / 7)) is 29 in float32 but 30 in float64 (29.000000000000004),
    # so float64's last bin covers row 29, one past the RoI's last row 28.
    x = np.arange(32, dtype=np.float32)[None, None, :, None] * np.ones((1, 1, 1, 2), np.float32)
    rois = np.array([[0, 0, 0, 16, 28 * 16]], np.float32)
    _, argmax32 = roi_pool(x, rois, (7, 1))
    _, argmax64 = roi_pool(x.astype(np.float64), rois.astype(np.float64), (7, 1))
    assert argmax32[0, 0, -1, 0] == 28 * 2 and argmax64[0, 0, -1, 0] == 29 * 2
    np.testing.assert_array_equal(argmax32[..., :-1, :], argmax64[..., :-1, :])


def test_roi_pool_rejects_a_batch_index_outside_the_batch():
    x = np.zeros((2, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="batch"):
        roi_pool(x, np.array([[2, 0, 0, 16, 16]], np.float32))
    with pytest.raises(ValueError, match="batch"):
        roi_pool_backward(np.zeros((1, 1, 7, 7), np.float32), np.zeros((1, 1, 7, 7), np.int32), x.shape,
                          np.array([[-1, 0, 0, 16, 16]], np.float32))


def test_roi_pool_of_no_rois_is_empty_and_sends_no_gradient():
    x = np.ones((1, 3, 4, 4), np.float32)
    y, argmax = roi_pool(x, np.zeros((0, 5), np.float32))
    assert y.shape == (0, 3, 7, 7) and argmax.shape == (0, 3, 7, 7)
    dx = roi_pool_backward(y, argmax, x.shape, np.zeros((0, 5), np.float32))
    assert dx.shape == x.shape and not dx.any()


# ---- backward -----------------------------------------------------------------------------

@given(pooling_case())
def test_roi_pool_gradient_lands_on_argmax(case):
    x, rois, size, scale = case
    y, argmax = roi_pool(x, rois, size, scale)
    dy = np.random.default_rng(0).standard_normal(y.shape).astype(x.dtype)
    dx = roi_pool_backward(dy, argmax, x.shape, rois)
    expected = spec_roi_pool_backward(dy, argmax, x.shape, rois)
    np.testing.assert_allclose(dx, expected, rtol=1e-5 if x.dtype == np.float32 else 1e-12, atol=1e-5)
    # Only chosen cells receive gradient, and nothing is lost: the total equals dy over non-empty bins.
    hit = np.zeros(x.shape, bool)
    r, c, _, _ = np.nonzero(argmax >= 0)
    a = argmax[argmax >= 0]
    hit[rois[r, 0].astype(int), c, a // x.shape[3], a % x.shape[3]] = True
    assert not dx[~hit].any()
    np.testing.assert_allclose(dx.sum(dtype=np.float64), dy[argmax >= 0].sum(dtype=np.float64), rtol=1e-5,
                               atol=1e-4)


@given(pooling_case())
def test_roi_pool_backward_reference_matches_the_compiled_kernel_bit_for_bit(case):
    # Both add each cell's contributions in RoI order, then bin order.
    x, rois, size, scale = case
    y, argmax = roi_pool(x, rois, size, scale)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    np.testing.assert_array_equal(roi_pool_backward(dy, argmax, x.shape, rois),
                                  roi_pool_backward_reference(dy, argmax, x.shape, rois))


@given(pooling_case(dtype=np.float64, ties=False, max_rois=3))
def test_roi_pool_gradient_matches_finite_differences_where_maxima_are_unique(case):
    x, rois, size, scale = case
    # a permutation: every bin has a single maximum, 1 / x.size apart from the rest, far beyond eps
    x = np.random.default_rng(0).permutation(x.size).reshape(x.shape) / x.size
    y, argmax = roi_pool(x, rois, size, scale)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    numeric = numerical_gradient(lambda v: np.sum(roi_pool(v, rois, size, scale)[0] * dy), x)
    assert relative_error(roi_pool_backward(dy, argmax, x.shape, rois), numeric) < 1e-6


def test_roi_pool_layer_keeps_what_its_backward_needs_and_passes_gradcheck():
    rng = np.random.default_rng(3)
    x = rng.permutation(2 * 3 * 6 * 8).reshape(2, 3, 6, 8).astype(np.float64)
    rois = np.array([[0, 0, 0, 127, 95], [1, 20, 8, 90, 70], [0, 40, 40, 47, 47], [1, -30, -30, 20, 20]],
                    np.float64)
    layer = RoIPool((3, 2), 1 / 16)
    y = layer.forward(x, rois)
    assert y.shape == (4, 3, 3, 2) and layer.x_shape == x.shape and layer.rois is rois
    np.testing.assert_array_equal(layer.argmax, roi_pool(x, rois, (3, 2))[1])
    errors = check_layer(layer, x / x.size, rois)
    assert errors["input0"] < 1e-6 and layer.params == {} and layer.grads == {}


def test_roi_pool_layer_writes_into_last_outputs_only_when_nothing_holds_them():
    rng = np.random.default_rng(4)
    x1, x2 = (rng.standard_normal((1, 3, 6, 8)).astype(np.float32) for _ in range(2))
    rois = np.array([[0, 0, 0, 127, 95], [0, 20, 8, 90, 70]], np.float32)
    layer = RoIPool((3, 2), 1 / 16)
    held = layer.forward(x1, rois)
    kept = held.copy()
    view = layer.forward(x2, rois)[:, :1]        # the first result still held: a new array
    assert not np.shares_memory(view, held)
    np.testing.assert_array_equal(held, kept)
    second = view.base
    again = layer.forward(x1, rois)              # a view of the second held: a new one again
    np.testing.assert_array_equal(view, roi_pool(x2, rois, (3, 2))[0][:, :1])
    np.testing.assert_array_equal(again, kept)
    third = weakref.ref(again)
    del held, kept, again
    reused = layer.forward(x2, rois)             # the third dropped: written into
    assert reused is third()
    np.testing.assert_array_equal(reused, roi_pool(x2, rois, (3, 2))[0])
    np.testing.assert_array_equal(layer.argmax, roi_pool(x2, rois, (3, 2))[1])
    np.testing.assert_array_equal(second[:, :1], view)
    bigger = layer.forward(x2, np.concatenate([rois, rois]))   # another shape: a new array
    np.testing.assert_array_equal(bigger, roi_pool(x2, np.concatenate([rois, rois]), (3, 2))[0])


def test_roi_pool_refuses_out_arrays_of_the_wrong_shape_or_type():
    x = np.zeros((1, 3, 6, 8), np.float32)
    rois = np.array([[0, 0, 0, 127, 95]], np.float32)
    good = np.empty((1, 3, 2, 2), np.float32), np.empty((1, 3, 2, 2), np.int32)
    y, argmax = roi_pool(x, rois, (2, 2), out=good)
    assert y is good[0] and argmax is good[1]
    for bad in ((np.empty((1, 3, 2, 3), np.float32), good[1]), (good[0], np.empty((1, 3, 2, 2), np.int64))):
        with pytest.raises(ValueError, match="C-contiguous"):
            roi_pool(x, rois, (2, 2), out=bad)


# ---- torchvision ---------------------------------------------------------------------------
# torchvision's roi_pool is the original layer ported: its kernels cast spatial_scale to the map's type
# and take round(x1 * scale) there, divide the bins in that type, scan rows then columns replacing only
# on a strictly greater value, and give empty bins 0 and argmax -1. The one difference is the start of
# each bin's maximum, -FLT_MAX there and the bin's first cell here: they agree for every finite value
# above -FLT_MAX. So y and argmax must agree exactly, at any scale.

@given(pooling_case(max_rois=5))
def test_roi_pool_equals_torchvision(case):
    torchvision = require_torchvision()
    import torch

    x, rois, size, scale = case
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    expected_y, expected_argmax = torch.ops.torchvision.roi_pool(xt, torch.from_numpy(rois), scale, *size)
    y, argmax = roi_pool(x, rois, size, scale)
    np.testing.assert_array_equal(y, expected_y.detach().numpy())
    np.testing.assert_array_equal(argmax, expected_argmax.numpy())
    dy = np.random.default_rng(0).standard_normal(y.shape).astype(x.dtype)
    torchvision.ops.roi_pool(xt, torch.from_numpy(rois), size, scale).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(roi_pool_backward(dy, argmax, x.shape, rois), xt.grad.numpy(),
                               rtol=1e-5, atol=1e-5)


def test_roi_pool_equals_torchvision_on_a_real_sized_map():
    require_torchvision()
    import torch

    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 16, 38, 63)).astype(np.float32)
    corners = np.sort(rng.uniform(-50, 1050, (300, 2, 2)), axis=1).reshape(300, 4)[:, [0, 2, 1, 3]]
    rois = np.concatenate([rng.integers(0, 2, (300, 1)), corners], axis=1).astype(np.float32)
    y, argmax = roi_pool(x, rois)
    expected_y, expected_argmax = torch.ops.torchvision.roi_pool(torch.from_numpy(x), torch.from_numpy(rois),
                                                                 1 / 16, 7, 7)
    np.testing.assert_array_equal(y, expected_y.numpy())
    np.testing.assert_array_equal(argmax, expected_argmax.numpy())


# ---- GPU ----------------------------------------------------------------------------------
