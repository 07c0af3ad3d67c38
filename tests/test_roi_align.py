"""RoIAlign against its formulas written out as plain loops, against finite differences, and
against torchvision.ops.roi_align."""
import importlib
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from minidet.gradcheck import check_layer, numerical_gradient, relative_error
from minidet.nn.roi_align import RoIAlign
from minidet.ops.roi_align import (axis_points, roi_align, roi_align_backward, roi_align_backward_reference,
                                   roi_align_reference)
from tests.reference import require_torchvision

align_ops = importlib.import_module("minidet.ops.roi_align")


# ---- the module docstring, line by line ----------------------------------------------------

def spec_geometry(first, last, scale, pooled, sampling_ratio, aligned, t):
    """(start, bin size, points per bin) of one axis, every operation in the float type t."""
    offset = t(0.5) if aligned else t(0)
    start = t(first) * t(scale) - offset
    length = (t(last) * t(scale) - offset) - start
    if not aligned:
        length = max(length, t(1))
    grid = sampling_ratio if sampling_ratio > 0 else math.ceil(length / t(pooled))
    return start, length / t(pooled), grid


def spec_point(start, bin_size, p, i, grid, t):
    return (start + t(p) * bin_size) + t(i + 0.5) * bin_size / t(grid)


def spec_taps(y, x, height, width, t):
    """[(row, col, weight)] * 4 of the bilinear read at (y, x), or None when it reads nothing."""
    if y < -1 or y > height or x < -1 or x > width:
        return None
    y, x = (y if y > 0 else t(0)), (x if x > 0 else t(0))   # the band [-1, 0] reads cell 0
    y_lo, x_lo = int(y), int(x)
    if y_lo >= height - 1:
        y_lo = y_hi = height - 1
        y = t(y_lo)
    else:
        y_hi = y_lo + 1
    if x_lo >= width - 1:
        x_lo = x_hi = width - 1
        x = t(x_lo)
    else:
        x_hi = x_lo + 1
    ly, lx = y - t(y_lo), x - t(x_lo)
    hy, hx = t(1) - ly, t(1) - lx
    return [(y_lo, x_lo, hy * hx), (y_lo, x_hi, hy * lx), (y_hi, x_lo, ly * hx), (y_hi, x_hi, ly * lx)]


def spec_points(roi, pooled_h, pooled_w, scale, sampling_ratio, aligned, height, width, t):
    """{(ph, pw): [taps or None, one per point in the order (iy, ix)]} and the points per bin."""
    sh, bh, gh = spec_geometry(roi[2], roi[4], scale, pooled_h, sampling_ratio, aligned, t)
    sw, bw, gw = spec_geometry(roi[1], roi[3], scale, pooled_w, sampling_ratio, aligned, t)
    bins = {}
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            bins[ph, pw] = [spec_taps(spec_point(sh, bh, ph, iy, gh, t), spec_point(sw, bw, pw, ix, gw, t),
                                      height, width, t)
                            for iy in range(gh) for ix in range(gw)]
    return bins, gh * gw


def spec_roi_align(x, rois, pooled_h, pooled_w, scale, sampling_ratio, aligned):
    t = x.dtype.type
    y = np.zeros((len(rois), x.shape[1], pooled_h, pooled_w), x.dtype)
    for r, roi in enumerate(rois):
        bins, count = spec_points(roi, pooled_h, pooled_w, scale, sampling_ratio, aligned, *x.shape[2:], t)
        for c in range(x.shape[1]):
            plane = x[int(roi[0]), c]
            for (ph, pw), points in bins.items():
                total = t(0)
                for taps in points:
                    if taps is not None:
                        (a, b, w1), (_, d, w2), (e, f, w3), (_, g, w4) = taps
                        total = total + (((w1 * plane[a, b] + w2 * plane[a, d]) + w3 * plane[e, f]) + w4 * plane[e, g])
                y[r, c, ph, pw] = total / t(max(count, 1))
    return y


def spec_roi_align_backward(dy, rois, x_shape, pooled_h, pooled_w, scale, sampling_ratio, aligned):
    t = dy.dtype.type
    dx = np.zeros(x_shape, dy.dtype)
    for r, roi in enumerate(rois):
        bins, count = spec_points(roi, pooled_h, pooled_w, scale, sampling_ratio, aligned, *x_shape[2:], t)
        for c in range(x_shape[1]):
            plane = dx[int(roi[0]), c]
            for (ph, pw), points in bins.items():
                for taps in points:
                    for row, col, w in taps or ():
                        plane[row, col] = plane[row, col] + dy[r, c, ph, pw] * w / t(count)
    return dx


# ---- inputs -------------------------------------------------------------------------------

@st.composite
def align_case(draw, dtype=None, max_rois=4, scales=(1 / 16, 1 / 8, 0.5, 0.3, 1.0)):
    """x, rois, settings dict: RoIs inside, across and outside the map, corners on quarter cells
    (so that points land exactly on cells, on -1 and on H), reversed corners now and then."""
    dtype = dtype or draw(st.sampled_from([np.float32, np.float64]))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    scale = draw(st.sampled_from(scales))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    r = draw(st.integers(0, max_rois))
    corners = rng.uniform(-2, 1.3, (r, 4)) * np.array([w, h, w, h]) / scale
    corners[:, 2:] = np.where(rng.random((r, 2)) < 0.8, np.abs(corners[:, 2:] - corners[:, :2]) + corners[:, :2],
                              corners[:, 2:])
    if draw(st.booleans()):
        corners = np.round(corners * scale * 4) / (scale * 4)
    rois = np.concatenate([rng.integers(0, n, (r, 1)), corners], axis=1).astype(dtype)
    settings = dict(output_size=(draw(st.integers(1, 3)), draw(st.integers(1, 3))), spatial_scale=scale,
                    sampling_ratio=draw(st.sampled_from([-1, 0, 1, 2, 3])), aligned=draw(st.booleans()))
    return x, rois, settings


def spec_args(settings):
    s = settings
    return (*s["output_size"], s["spatial_scale"], s["sampling_ratio"], s["aligned"])


# ---- forward ------------------------------------------------------------------------------

@given(align_case())
def test_roi_align_matches_the_spec_loops(case):
    x, rois, settings = case
    y = roi_align(x, rois, **settings)
    assert y.dtype == x.dtype and y.shape == (len(rois), x.shape[1], *settings["output_size"])
    np.testing.assert_array_equal(y, spec_roi_align(x, rois, *spec_args(settings)))


@given(align_case(max_rois=6))
def test_roi_align_reference_matches_the_compiled_kernels_bit_for_bit(case):
    x, rois, settings = case
    y = roi_align(x, rois, **settings)
    np.testing.assert_array_equal(y, roi_align_reference(x, rois, **settings))
    dy = np.random.default_rng(0).standard_normal(y.shape).astype(x.dtype)
    np.testing.assert_array_equal(roi_align_backward(dy, rois, x.shape, **settings),
                                  roi_align_backward_reference(dy, rois, x.shape, **settings))


def test_roi_align_of_a_linear_map_is_the_map_at_each_bins_centre():
    # Bilinear reads of f(y, x) = 10 y + x are exact inside the map, so a bin's average is f at the
    # mean of its points: the bin's centre. aligned=True moves every point by -0.5 cell.
    height, width = 12, 16
    x = (10 * np.arange(height)[:, None] + np.arange(width)[None, :]).astype(np.float64)[None, None]
    rois = np.array([[0, 16, 32, 112, 96]], np.float64)  # cells x 1..7, y 2..6 at 1/16
    for aligned, shift in ((False, 0.0), (True, 0.5)):
        for sampling_ratio in (1, 2, 3, 0):
            y = roi_align(x, rois, (2, 3), 1 / 16, sampling_ratio, aligned)
            centres_y = 2 + (np.arange(2) + 0.5) * 4 / 2 - shift
            centres_x = 1 + (np.arange(3) + 0.5) * 6 / 3 - shift
            np.testing.assert_allclose(y[0, 0], 10 * centres_y[:, None] + centres_x[None, :], rtol=1e-12)


@pytest.mark.parametrize("centre, expected", [
    (-0.5, "row 0"),        # in the band [-1, 0]: read as row 0
    (-1.0, "row 0"),        # -1 itself is inside
    (-1.25, "nothing"),     # below -1: reads nothing
    (2.5, "last row"),      # beyond the last row (H - 1 = 2) but not beyond H: the last row
    (3.0, "last row"),      # H itself is inside
    (3.25, "nothing"),      # beyond H
    (1.25, "between"),      # 0.75 of row 1 and 0.25 of row 2
])
def test_roi_align_border_rules_of_a_single_point(centre, expected):
    # One bin, one point, scale 1, not aligned: a 1-pixel-high RoI from centre - 0.5 to centre + 0.5
    # puts its one point at y = centre; the column is 1 exactly.
    x = np.arange(3 * 4, dtype=np.float64).reshape(1, 1, 3, 4) + 1  # rows [1..4], [5..8], [9..12]
    roi = np.array([[0, 0.5, centre - 0.5, 1.5, centre + 0.5]])
    y = roi_align(x, roi, (1, 1), 1.0, 1, False).item()
    column = x[0, 0, :, 1]
    value = {"row 0": column[0], "nothing": 0.0, "last row": column[2], "between": 0.75 * column[1] + 0.25 * column[2]}
    assert y == value[expected]


def test_roi_align_points_follow_torchvisions_grid_rules():
    # aligned=False makes a reversed or tiny RoI one cell wide; aligned=True keeps its size, and the
    # adaptive grid of a zero-sized RoI has no point (output 0).
    rows = axis_points(40, 8, 1 / 16, 2, 1, False, 10, np.float32)        # x2 < x1: width forced to 1
    np.testing.assert_array_equal(rows["coord"].ravel(), [2.75, 3.25])
    rows = axis_points(40, 8, 1 / 16, 2, 1, True, 10, np.float32)         # width -2: backwards
    np.testing.assert_array_equal(rows["coord"].ravel(), [1.5, 0.5])
    assert axis_points(40, 40, 1 / 16, 2, 0, True, 10, np.float32)["grid"] == 0
    assert axis_points(0, 100 * 16, 1 / 16, 7, 0, False, 10, np.float32)["grid"] == math.ceil(100 / 7)
    x = np.ones((1, 2, 5, 5), np.float32)
    y = roi_align(x, np.array([[0, 40, 40, 40, 40]], np.float32), (2, 2), 1 / 16, 0, True)
    assert not y.any()
    assert (roi_align(x, np.array([[0, 40, 40, 40, 40]], np.float32), (2, 2), 1 / 16, 0, False) == 1).all()


def test_roi_align_reads_each_rois_own_image():
    from tests.test_roi_pool import one_box_on_two_images

    x, rois, rng = one_box_on_two_images()
    y = roi_align(x, rois, (3, 3))
    np.testing.assert_allclose(y[1], y[0] + 100, rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx = roi_align_backward(dy, rois, x.shape, (3, 3))
    np.testing.assert_allclose(dx[1], roi_align_backward(dy[1:2], rois[1:2], x.shape, (3, 3))[1], rtol=1e-12)
    assert np.isclose(dx[1].sum(), dy[1].sum())  # every point inside: the weights of a point sum to 1


def test_roi_align_rejects_bad_input_and_handles_no_rois():
    x = np.zeros((2, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="batch"):
        roi_align(x, np.array([[2, 0, 0, 16, 16]], np.float32))
    with pytest.raises(ValueError, match="batch"):
        roi_align_backward(np.zeros((1, 1, 7, 7), np.float32), np.array([[-1, 0, 0, 16, 16]], np.float32), x.shape)
    with pytest.raises(ValueError, match="dy"):
        roi_align_backward(np.zeros((1, 1, 7, 7), np.float32), np.zeros((2, 5), np.float32), x.shape)
    with pytest.raises(TypeError, match="float32 or float64"):
        roi_align(x.astype(np.int32), np.zeros((0, 5)))
    with pytest.raises(TypeError, match="float32 or float64"):
        roi_align_backward(np.zeros((0, 1, 7, 7), np.int32), np.zeros((0, 5)), x.shape)
    with pytest.raises(ValueError, match="does not match"):
        roi_align_backward(np.zeros((1, 1, 7), np.float32), np.zeros((1, 5)), x.shape)
    y = roi_align(x, np.zeros((0, 5), np.float32))
    assert y.shape == (0, 1, 7, 7)
    dx = roi_align_backward(y, np.zeros((0, 5), np.float32), x.shape)
    assert dx.shape == x.shape and not dx.any()


@given(align_case(dtype=np.float32))
def test_float32_and_float64_agree_wherever_their_points_read_the_same_cells(case):
    x, rois, settings = case
    s = settings
    for roi in rois:  # a point on -1 or H in one type may fall outside in the other: a jump, not rounding
        for (first, last), pooled, size in (((roi[2], roi[4]), s["output_size"][0], x.shape[2]),
                                            ((roi[1], roi[3]), s["output_size"][1], x.shape[3])):
            args = (s["spatial_scale"], pooled, s["sampling_ratio"], s["aligned"], size)
            p32 = axis_points(first, last, *args, np.float32)
            p64 = axis_points(np.float64(first), np.float64(last), *args, np.float64)
            assume(p32["grid"] == p64["grid"] and np.array_equal(p32["inside"], p64["inside"]))
    y32 = roi_align(x, rois, **settings)
    y64 = roi_align(x.astype(np.float64), rois.astype(np.float64), **settings)
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-5)


# ---- backward -----------------------------------------------------------------------------

@given(align_case())
def test_roi_align_backward_matches_the_spec_loops(case):
    x, rois, settings = case
    dy = np.random.default_rng(2).standard_normal((len(rois), x.shape[1], *settings["output_size"])).astype(x.dtype)
    np.testing.assert_array_equal(roi_align_backward(dy, rois, x.shape, **settings),
                                  spec_roi_align_backward(dy, rois, x.shape, *spec_args(settings)))


@given(align_case(dtype=np.float64, max_rois=3))
def test_roi_align_gradient_matches_finite_differences(case):
    x, rois, settings = case
    y = roi_align(x, rois, **settings)
    dy = np.random.default_rng(3).standard_normal(y.shape)
    numeric = numerical_gradient(lambda v: np.sum(roi_align(v, rois, **settings) * dy), x)
    assert relative_error(roi_align_backward(dy, rois, x.shape, **settings), numeric) < 1e-6


def test_roi_align_layer_keeps_what_its_backward_needs_and_passes_gradcheck():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 8))
    rois = np.array([[0, 0, 0, 127, 95], [1, 20, 8, 90, 70], [0, 40, 40, 47, 47], [1, -30, -30, 20, 20]],
                    np.float64)
    layer = RoIAlign((3, 2), 1 / 16, sampling_ratio=0, aligned=False)
    y = layer.forward(x, rois)
    assert y.shape == (4, 3, 3, 2) and layer.x_shape == x.shape and layer.rois is rois
    np.testing.assert_array_equal(y, roi_align(x, rois, (3, 2), 1 / 16, 0, False))
    errors = check_layer(layer, x, rois)
    assert errors["input0"] < 1e-6 and layer.params == {} and layer.grads == {}
    defaults = RoIAlign()
    assert defaults.settings() == ((7, 7), 1 / 16, 2, True)
    defaults.needs_input_grad = False
    defaults.forward(x, rois)
    assert defaults.backward(np.ones((4, 3, 7, 7))) is None


# ---- threads ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threaded_roi_align_equals_single_thread_bit_for_bit(monkeypatch, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 70, 19, 23)).astype(dtype)   # channels not a multiple of the block
    corners = np.sort(rng.uniform(-40, 400, (300, 2, 2)), axis=1).reshape(300, 4)
    rois = np.concatenate([rng.integers(0, 2, (300, 1)), corners], axis=1).astype(dtype)
    dy = rng.standard_normal((300, 70, 7, 7)).astype(dtype)
    results = {}
    for threshold in (float("inf"), 0):
        monkeypatch.setattr(align_ops, "PARALLEL_MIN_WORK", threshold)
        for sampling_ratio in (2, 0):
            results[threshold, sampling_ratio] = (roi_align(x, rois, sampling_ratio=sampling_ratio),
                                                  roi_align_backward(dy, rois, x.shape, sampling_ratio=sampling_ratio))
    for sampling_ratio in (2, 0):
        for a, b in zip(results[0, sampling_ratio], results[float("inf"), sampling_ratio]):
            np.testing.assert_array_equal(a, b)


# ---- torchvision ---------------------------------------------------------------------------
# torchvision's CPU kernel performs the same operations in the same order (no fused multiply-add in
# its x86-64 build, nor in minidet's: -ffp-contract=off), so here the two agree bit for bit; the
# hypothesis test allows rounding, so that a build that fuses would still pass it.

@given(align_case(max_rois=5))
def test_roi_align_equals_torchvision(case):
    torchvision = require_torchvision()
    import torch

    x, rois, settings = case
    s = settings
    for roi in rois:  # torchvision cannot size its table for gh * gw < 0 (a reversed RoI, adaptive, aligned)
        ph, pw = s["output_size"]
        args = (s["spatial_scale"], s["sampling_ratio"], s["aligned"])
        grid_h = axis_points(roi[2], roi[4], args[0], ph, *args[1:], x.shape[2], x.dtype)["grid"]
        grid_w = axis_points(roi[1], roi[3], args[0], pw, *args[1:], x.shape[3], x.dtype)["grid"]
        assume(grid_h * grid_w >= 0)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    expected = torchvision.ops.roi_align(xt, torch.from_numpy(rois), s["output_size"], s["spatial_scale"],
                                         s["sampling_ratio"], s["aligned"])
    y = roi_align(x, rois, **settings)
    rtol = 1e-5 if x.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expected.detach().numpy(), rtol=rtol, atol=rtol)
    dy = np.random.default_rng(0).standard_normal(y.shape).astype(x.dtype)
    expected.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(roi_align_backward(dy, rois, x.shape, **settings), xt.grad.numpy(),
                               rtol=rtol, atol=rtol)


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_equals_torchvision_bit_for_bit_on_a_real_sized_map(aligned):
    torchvision = require_torchvision()
    import torch

    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 16, 38, 63)).astype(np.float32)
    corners = np.sort(rng.uniform(-50, 1050, (300, 2, 2)), axis=1).reshape(300, 4)
    rois = np.concatenate([rng.integers(0, 2, (300, 1)), corners], axis=1).astype(np.float32)
    dy = rng.standard_normal((300, 16, 7, 7)).astype(np.float32)
    for sampling_ratio in (2, 0):
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        expected = torchvision.ops.roi_align(xt, torch.from_numpy(rois), (7, 7), 1 / 16, sampling_ratio, aligned)
        expected.backward(torch.from_numpy(dy))
        np.testing.assert_array_equal(roi_align(x, rois, (7, 7), 1 / 16, sampling_ratio, aligned),
                                      expected.detach().numpy())
        np.testing.assert_array_equal(roi_align_backward(dy, rois, x.shape, (7, 7), 1 / 16, sampling_ratio, aligned),
                                      xt.grad.numpy())
