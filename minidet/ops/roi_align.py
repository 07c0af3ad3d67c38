"""RoIAlign (He et al., Mask R-CNN, 2017), forward and backward, on NumPy and CuPy arrays.

RoIPool rounds a RoI's corners to feature cells; RoIAlign does not round at all: it averages the
map, read by bilinear interpolation, at a regular grid of points in each bin. For each RoI
r = [n, x1, y1, x2, y2] in input-image pixels, scale s, output PH x PW, with every quantity in the
map's float type T (s included, as T(s)):

    o = 0.5 if aligned else 0            the half-pixel shift: cell (i, j) is centred on image pixel
    start_w = x1 s - o, end_w = x2 s - o   ((j + 0.5) / s, ...), so aligned=True puts a RoI where it is
    roi_w = end_w - start_w              likewise start_h, end_h, roi_h; when not aligned, at least 1
    bin_w = roi_w / PW,  bin_h = roi_h / PH
    gw = sampling_ratio if > 0 else ceil(roi_w / PW)    (an int; likewise gh: points per bin per axis)
    point (iy, ix) of bin (ph, pw):  y = (start_h + ph bin_h) + (iy + 0.5) bin_h / gh    (added in this
                                     x = (start_w + pw bin_w) + (ix + 0.5) bin_w / gw     order)
    the bilinear value at (y, x) of x[n, c] (H x W), each axis on its own (shown for y):
        y < -1 or y > H (either axis)  ->  the point reads nothing: value 0
        y <= 0 -> y = 0                    the band [-1, 0] reads row 0
        y_lo = int(y); if y_lo >= H - 1: y_lo = y_hi = H - 1, y = y_lo   (the last row, weight 1)
                       else y_hi = y_lo + 1
        ly = y - y_lo, hy = 1 - ly;   w1 = hy hx, w2 = hy lx, w3 = ly hx, w4 = ly lx
        v = ((w1 x[y_lo, x_lo] + w2 x[y_lo, x_hi]) + w3 x[y_hi, x_lo]) + w4 x[y_hi, x_hi]
    y[r, c, ph, pw] = (sum of v over the points, from 0, in the order (iy, ix)) / max(gh gw, 1)

    dx[n, c, y_lo, x_lo] += dy[r, c, ph, pw] w1 / (gh gw),  and likewise w2, w3, w4 at their cells,
    for every point of every bin of every RoI of image n: in the order r, ph, pw, iy, ix, then w1..w4.

This is torchvision.ops.roi_align's CPU kernel, rule for rule and operation for operation, so the
two agree bit for bit, forward and backward. Two differences, on purpose: torchvision adds
0 * x[n, c, 0, 0] for each point outside the map, so an inf or NaN there spreads to every RoI with
such a point (here such a point reads nothing); and it fails on a reversed RoI (x2 < x1) with
aligned=True and an adaptive grid when gh * gw < 0 (here its bins have no point and give 0).

Three implementations compute the same numbers:
- `roi_align_reference` / `roi_align_backward_reference`: plain NumPy, one RoI at a time, to read;
- NumPy arrays: the Cython kernels of minidet/_ext/roi_align.pyx (parallel, GIL released; the
  backward adds in the order above, so threads change nothing);
- CuPy arrays: the RawKernels of minidet/ops/cuda/roi_align.cu (the backward to rounding: atomicAdd).
"""
import math

import numpy as np

from minidet.backend import get_array_module, require_cupy
from minidet.ops.roi_pool import check_batch_index, check_roi_inputs, nhwc_copy

# Work (RoIs x channels x bins x points) from which the CPU kernels split over OpenMP's threads:
# about 20 ms on one core, for the reason given at minidet.ops.im2col.PARALLEL_MIN_SIZE (on a busy
# machine a parallel call waits tens of ms for its second thread). A point of one channel took
# 3.6 ns forward and 1.7 ns backward on one core (2000 RoIs on (2, 512, 38, 63), float32, busy machine).
PARALLEL_MIN_WORK = 1 << 23


def roi_align(x, rois, output_size=(7, 7), spatial_scale=1 / 16, sampling_ratio=2, aligned=True):
    """Average the bilinearly sampled map over each bin of each RoI (see the module docstring).

    x (N, C, H, W) float32|float64; rois (R, 5) = [batch_index, x1, y1, x2, y2] in image pixels
    (any float dtype; converted to x's, in which every coordinate is computed).
    Returns y (R, C, PH, PW) of x's dtype.
    """
    xp = get_array_module(x, rois)
    ph, pw = check_roi_inputs(x, rois, output_size)
    rois = xp.ascontiguousarray(xp.asarray(rois, dtype=x.dtype))
    x = xp.ascontiguousarray(x)
    args = (ph, pw, spatial_scale, int(sampling_ratio), bool(aligned))
    if xp is np:
        check_batch_index(rois[:, 0].astype(np.int64), x.shape[0])
        return _roi_align_cpu(x, rois, *args)
    # No check on the GPU (it would read the indices back): a RoI of a missing image gives 0.
    return _roi_align_gpu(x, rois, *args)


def roi_align_backward(dy, rois, x_shape, output_size=(7, 7), spatial_scale=1 / 16, sampling_ratio=2,
                       aligned=True):
    """dx (N, C, H, W) of `roi_align`: each dy[r, c, ph, pw] spread over the four cells of every point
    of its bin, with the point's bilinear weights, divided by the bin's point count.

    dy (R, C, PH, PW) float32|float64; rois (R, 5) and the settings as given to `roi_align`;
    x_shape = (N, C, H, W).
    """
    xp = get_array_module(dy, rois)
    if dy.dtype not in (np.float32, np.float64):
        raise TypeError(f"dy must be float32 or float64, got {dy.dtype}")
    n, c, h, w = (int(v) for v in x_shape)
    ph, pw = (int(v) for v in output_size)
    if dy.shape != (rois.shape[0], c, ph, pw):
        raise ValueError(f"dy {dy.shape} does not match rois {rois.shape}, x_shape {tuple(x_shape)} "
                         f"and output_size {tuple(output_size)}")
    rois = xp.ascontiguousarray(xp.asarray(rois, dtype=dy.dtype))
    dy = xp.ascontiguousarray(dy)
    args = (spatial_scale, int(sampling_ratio), bool(aligned))
    if xp is np:
        check_batch_index(rois[:, 0].astype(np.int64), n)
        return _roi_align_backward_cpu(dy, rois, (n, c, h, w), *args)
    return _roi_align_backward_gpu(dy, rois, (n, c, h, w), *args)


# --- The plain reference: NumPy, one RoI at a time -------------------------------------------

def axis_points(first, last, scale, pooled, sampling_ratio, aligned, size, dtype):
    """The sampling points of one RoI along one axis, and their bilinear taps.

    first, last: the RoI's corners on this axis in image pixels (x1, x2 or y1, y2); size: W or H.
    Every operation in `dtype`, as in the kernels. Returns dict(
        grid   points per bin on this axis (gw or gh; may be 0 or below, then a bin has no point),
        coord  (pooled, grid) the points' coordinates in feature cells, before the border rules,
        inside (pooled, grid) bool: -1 <= coord <= size,
        lo, hi (pooled, grid) int64: the two cells a point reads (0 where not inside),
        l, h   (pooled, grid) dtype: the weights of hi and lo (0 where not inside)).
    """
    t = np.dtype(dtype).type
    offset = t(0.5) if aligned else t(0)
    start = t(first) * t(scale) - offset
    length = t(last) * t(scale) - offset - start
    if not aligned:
        length = max(length, t(1))
    bin_size = length / t(pooled)
    grid = int(sampling_ratio) if sampling_ratio > 0 else int(math.ceil(length / t(pooled)))
    p = np.arange(pooled).astype(t)[:, None]
    i = (np.arange(max(grid, 0)) + 0.5).astype(t)[None, :]
    coord = (start + p * bin_size) + i * bin_size / t(max(grid, 1))
    inside = (coord >= -1) & (coord <= size)
    v = np.where(inside & (coord > 0), coord, t(0))         # the band [-1, 0] reads cell 0
    lo = v.astype(np.int64)                                 # truncation, v >= 0
    last_cell = lo >= size - 1
    lo = np.where(last_cell, size - 1, lo)
    hi = np.where(last_cell, lo, lo + 1)
    v = np.where(last_cell, lo.astype(t), v)
    l = v - lo.astype(t)
    h = t(1) - l
    zero = np.zeros_like(l)
    return dict(grid=grid, coord=coord, inside=inside, lo=np.where(inside, lo, 0), hi=np.where(inside, hi, 0),
                l=np.where(inside, l, zero), h=np.where(inside, h, zero))


def _taps(ys, xs, width):
    """The four cells and weights of every point of every bin, (PH, PW, gh, gw) each, and inside."""
    ylo, yhi = ys["lo"][:, None, :, None], ys["hi"][:, None, :, None]
    xlo, xhi = xs["lo"][None, :, None, :], xs["hi"][None, :, None, :]
    yl, yh = ys["l"][:, None, :, None], ys["h"][:, None, :, None]
    xl, xh = xs["l"][None, :, None, :], xs["h"][None, :, None, :]
    cells = (ylo * width + xlo, ylo * width + xhi, yhi * width + xlo, yhi * width + xhi)
    weights = (yh * xh, yh * xl, yl * xh, yl * xl)
    inside = ys["inside"][:, None, :, None] & xs["inside"][None, :, None, :]
    return cells, weights, inside


def _roi_points(roi, output_size, spatial_scale, sampling_ratio, aligned, height, width, dtype):
    ph, pw = output_size
    ys = axis_points(roi[2], roi[4], spatial_scale, ph, sampling_ratio, aligned, height, dtype)
    xs = axis_points(roi[1], roi[3], spatial_scale, pw, sampling_ratio, aligned, width, dtype)
    return ys, xs


def roi_align_reference(x, rois, output_size=(7, 7), spatial_scale=1 / 16, sampling_ratio=2, aligned=True):
    """Plain NumPy `roi_align` for small inputs (NumPy arrays only): same arguments, same results."""
    ph, pw = check_roi_inputs(x, rois, output_size)
    n_images, channels, height, width = x.shape
    t = x.dtype.type
    rois = np.asarray(rois).astype(x.dtype)
    y = np.zeros((len(rois), channels, ph, pw), dtype=x.dtype)
    for r, roi in enumerate(rois):
        ys, xs = _roi_points(roi, (ph, pw), spatial_scale, sampling_ratio, aligned, height, width, x.dtype)
        cells, weights, inside = _taps(ys, xs, width)
        plane = x[int(roi[0])].reshape(channels, -1)
        total = np.zeros((channels, ph, pw), dtype=x.dtype)
        for iy in range(max(ys["grid"], 0)):          # the points one after another, as the kernels add
            for ix in range(max(xs["grid"], 0)):
                k = (slice(None), slice(None), iy, ix)
                v = ((weights[0][k] * plane[:, cells[0][k]] + weights[1][k] * plane[:, cells[1][k]])
                     + weights[2][k] * plane[:, cells[2][k]]) + weights[3][k] * plane[:, cells[3][k]]
                total = total + np.where(inside[k], v, t(0))
        y[r] = total / t(max(ys["grid"] * xs["grid"], 1))
    return y


def roi_align_backward_reference(dy, rois, x_shape, output_size=(7, 7), spatial_scale=1 / 16, sampling_ratio=2,
                                 aligned=True):
    """Plain NumPy `roi_align_backward`: np.add.at adds every contribution in the order of the docstring."""
    n_images, channels, height, width = (int(v) for v in x_shape)
    t = dy.dtype.type
    rois = np.asarray(rois).astype(dy.dtype)
    dx = np.zeros((n_images, channels, height * width), dtype=dy.dtype)
    for r, roi in enumerate(rois):
        ys, xs = _roi_points(roi, output_size, spatial_scale, sampling_ratio, aligned, height, width, dy.dtype)
        cells, weights, inside = _taps(ys, xs, width)
        count = t(ys["grid"] * xs["grid"])
        g = dy[r][:, :, :, None, None]                                     # (C, PH, PW, 1, 1)
        # (C, PH, PW, gh, gw, 4): the last axis is w1..w4, so flattening gives the kernels' order
        values = np.stack([g * w / count for w in weights], axis=-1)
        index = np.stack(cells, axis=-1)
        keep = np.broadcast_to(inside[..., None], index.shape)
        np.add.at(dx[int(roi[0])], (slice(None), index[keep]), values[:, keep])
    return dx.reshape(n_images, channels, height, width)


# --- CPU: Cython -----------------------------------------------------------------------------

def _work(rois, channels, ph, pw, spatial_scale, sampling_ratio):
    """RoIs x channels x bins x points per bin: what decides whether the kernels go parallel."""
    if sampling_ratio > 0:
        points = sampling_ratio * sampling_ratio * len(rois)
    else:  # the adaptive grid, roughly: about one point per cell
        sizes = np.abs(rois[:, 3:5] - rois[:, 1:3]) * spatial_scale
        points = float(np.sum(np.ceil(sizes[:, 0] / pw + 1) * np.ceil(sizes[:, 1] / ph + 1)))
    return points * channels * ph * pw


def _roi_align_cpu(x, rois, ph, pw, spatial_scale, sampling_ratio, aligned):
    from minidet._ext import roi_align as ext

    n, c, h, w = x.shape
    r = rois.shape[0]
    y = np.zeros((r, c, ph, pw), dtype=x.dtype)
    if r == 0 or c == 0 or h == 0 or w == 0:
        return y
    parallel = _work(rois, c, ph, pw, spatial_scale, sampling_ratio) >= PARALLEL_MIN_WORK
    ext.roi_align_forward(nhwc_copy(x), rois, y.reshape(r, c, ph * pw), ph, pw, float(spatial_scale),
                          sampling_ratio, aligned, parallel)
    return y


def _roi_align_backward_cpu(dy, rois, x_shape, spatial_scale, sampling_ratio, aligned):
    from minidet._ext import nhwc
    from minidet._ext import roi_align as ext

    n, c, h, w = x_shape
    r, _, ph, pw = dy.shape
    dx = np.zeros(x_shape, dtype=dy.dtype)
    if r == 0 or c == 0 or h == 0 or w == 0:
        return dx
    dx_nhwc = np.zeros((n, h, w, c), dtype=dy.dtype)
    parallel = _work(rois, c, ph, pw, spatial_scale, sampling_ratio) >= PARALLEL_MIN_WORK
    ext.roi_align_backward(dy.reshape(r, c, ph * pw), rois, dx_nhwc, ph, pw, float(spatial_scale),
                           sampling_ratio, aligned, parallel)
    nhwc.nhwc_to_nchw(dx_nhwc, dx, parallel)
    return dx


# --- GPU: CUDA RawKernels --------------------------------------------------------------------
#
# Forward: one thread per output (r, c, ph, pw), computing its points as above, bit for bit the
# CPU's arithmetic (same float type, no fused multiply-add). Backward: one thread per dy element,
# atomicAdd of each point's four shares into dx: the sums come in no fixed order, so the GPU agrees
# with the CPU to rounding (exactly where every share is exact, as for small integer dy and weights
# that are multiples of 1/16).

def _roi_align_gpu(x, rois, ph, pw, spatial_scale, sampling_ratio, aligned):
    y = require_cupy().zeros((rois.shape[0], x.shape[1], ph, pw), dtype=x.dtype)
    _launch_gpu("roi_align_forward", x, rois, y, y.size, x.shape, ph, pw, spatial_scale, sampling_ratio, aligned)
    return y


def _roi_align_backward_gpu(dy, rois, x_shape, spatial_scale, sampling_ratio, aligned):
    dx = require_cupy().zeros(x_shape, dtype=dy.dtype)
    _launch_gpu("roi_align_backward", dy, rois, dx, dy.size, x_shape, dy.shape[2], dy.shape[3], spatial_scale,
                sampling_ratio, aligned)
    return dx


def _launch_gpu(name, source, rois, out, total, x_shape, ph, pw, spatial_scale, sampling_ratio, aligned):
    """Run roi_align.cu's kernel `name` (forward or backward: the same arguments) with one thread per
    element (r, c, ph, pw), `total` of them: it reads `source` (x or dy) and writes `out` (y or dx)."""
    from minidet.ops.cuda import kernel, launch, scalar_name

    n, c, h, w = x_shape
    if h == 0 or w == 0:
        return
    i32 = np.int32
    launch(kernel("roi_align.cu", name, scalar_name(out.dtype)), total,
           (source, rois, np.int64(total), i32(n), i32(c), i32(h), i32(w), i32(ph), i32(pw),
            out.dtype.type(spatial_scale), i32(sampling_ratio), i32(aligned), out))
