"""RoI max pooling (Fast R-CNN's RoIPool), forward and backward, on NumPy and CuPy arrays.

For each RoI r = [n, x1, y1, x2, y2] in input-image pixels and scale s (1/16 for VGG16):

    start_w = round(x1 s), end_w = round(x2 s)   C round: halves away from zero (0.5 -> 1, -0.5 -> -1);
    start_h = round(y1 s), end_h = round(y2 s)   the products are taken in the map's float type
    roi_w = max(end_w - start_w + 1, 1)          likewise roi_h;  bin_w = roi_w / PW, bin_h = roi_h / PH
    bin (ph, pw): rows [floor(ph bin_h), ceil((ph + 1) bin_h)) + start_h, clipped to [0, H]
                  cols [floor(pw bin_w), ceil((pw + 1) bin_w)) + start_w, clipped to [0, W]
    y[r, c, ph, pw]      = max over the bin of x[n, c]   (0 for an empty bin)
    argmax[r, c, ph, pw] = h * W + w of that maximum, the first in row-major order on ties (-1 if empty)

    dx[n, c].flat[argmax[r, c, ph, pw]] += dy[r, c, ph, pw]   over all RoIs of image n and all bins

This is the original Caffe layer, bin for bin (and torchvision's roi_pool). The bin sizes are real
numbers in the map's float type, so float32 and float64 maps can differ in a bin edge: for a 29-cell
RoI at PH = 7, ceil(7 * (29 / 7)) is 29 in float32 and 30 in float64, as it was in the original layer.
A bin's running maximum starts at its first cell; the original started it at -FLT_MAX, which gives the
same maximum and argmax for every finite value above -FLT_MAX.

Three implementations compute the same numbers:
- `roi_pool_reference` / `roi_pool_backward_reference`: plain NumPy, one RoI at a time, to read;
- NumPy arrays: the Cython kernels of minidet/_ext/roi_pool.pyx (parallel, GIL released);
- CuPy arrays: the RawKernels of minidet/ops/cuda/roi_pool.cu (the backward to rounding, see below).
"""
import numpy as np

from minidet.backend import get_array_module, require_cupy


def check_roi_inputs(x, rois, output_size):
    """(PH, PW) of output_size, after checking what every RoI op takes: x (N, C, H, W) float32|float64
    and rois (R, 5); ValueError or TypeError naming the argument otherwise."""
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (R, 5) = [batch_index, x1, y1, x2, y2], got shape {rois.shape}")
    ph, pw = (int(v) for v in output_size)
    if ph < 1 or pw < 1:
        raise ValueError(f"output_size must be positive, got {output_size}")
    return ph, pw


def check_batch_index(batch, n_images):
    """ValueError unless batch (R,) int64 (rois[:, 0] truncated to int, as the layers read it) lies in [0, n_images)."""
    if batch.size and (int(batch.min()) < 0 or int(batch.max()) >= n_images):
        raise ValueError(f"rois[:, 0] must be batch indices in [0, {n_images}), "
                         f"got values in [{int(batch.min())}, {int(batch.max())}]")


def roi_cells(rois, spatial_scale=1 / 16, dtype=np.float32):
    """The feature cells each RoI pools from: (R, 5) int64 [batch index, start_w, start_h, end_w, end_h],
    the corners rounded as above (C round, halves away from zero, products in `dtype`, the map's
    type). Two RoIs of one image with equal rows pool the same bins of the same cells: their outputs
    are identical whatever the map holds. rois (R, 5) on NumPy or CuPy."""
    xp = get_array_module(rois)
    dtype = np.dtype(dtype)
    scaled = rois[:, 1:5].astype(dtype) * dtype.type(spatial_scale)
    magnitude = xp.abs(scaled)
    cells = xp.sign(scaled) * (xp.floor(magnitude) + (magnitude - xp.floor(magnitude) >= 0.5))
    return xp.concatenate([rois[:, :1].astype(xp.int64), cells.astype(xp.int64)], axis=1)


def roi_pool(x, rois, output_size=(7, 7), spatial_scale=1 / 16, out=None):
    """Max-pool every RoI of `rois` over its image's feature map into a fixed PH x PW grid.

    x (N, C, H, W) float32|float64; rois (R, 5) = [batch_index, x1, y1, x2, y2] in image pixels
    (any float dtype; converted to x's dtype, in which the scaled corners are computed).
    Returns y (R, C, PH, PW) of x's dtype and argmax (R, C, PH, PW) int32 (h * W + w, -1 for empty bins),
    written into out = (y, argmax) when given (C-contiguous arrays of those shapes and types).
    """
    xp = get_array_module(x, rois)
    ph, pw = check_roi_inputs(x, rois, output_size)
    rois = xp.ascontiguousarray(xp.asarray(rois, dtype=x.dtype))
    x = xp.ascontiguousarray(x)
    if xp is np:
        check_batch_index(rois[:, 0].astype(np.int64), x.shape[0])
        return _roi_pool_cpu(x, rois, ph, pw, spatial_scale, out)
    # No check on the GPU: reading the indices back would stall the device twice per call.
    # The kernel treats a RoI with an index outside [0, N) as empty (0, argmax -1) instead.
    return _roi_pool_gpu(x, rois, ph, pw, spatial_scale, out)


def _outputs(xp, out, shape, dtype):
    """(y, argmax) of `shape` to write: new arrays, or `out` after checking it."""
    if out is None:
        return xp.empty(shape, dtype=dtype), xp.empty(shape, dtype=np.int32)
    for array, want, what in zip(out, (dtype, np.int32), ("y", "argmax")):
        if tuple(array.shape) != tuple(shape) or array.dtype != want or not array.flags.c_contiguous:
            raise ValueError(f"out's {what} must be a C-contiguous {tuple(shape)} {np.dtype(want)} "
                             f"array, got {tuple(array.shape)} {array.dtype}")
    return tuple(out)


def roi_pool_backward(dy, argmax, x_shape, rois):
    """dx (N, C, H, W): each dy[r, c, ph, pw] added at x[rois[r, 0], c].flat[argmax[r, c, ph, pw]].

    dy (R, C, PH, PW) float; argmax (R, C, PH, PW) int32 from `roi_pool`; x_shape = (N, C, H, W);
    rois (R, 5) as given to `roi_pool` (only its batch index column is read).
    Positions chosen by several bins or RoIs receive the sum; empty bins (argmax -1) send nothing.
    """
    xp = get_array_module(dy, argmax)
    if dy.shape != argmax.shape or dy.ndim != 4:
        raise ValueError(f"dy {dy.shape} and argmax {argmax.shape} must both be (R, C, PH, PW)")
    if dy.dtype not in (np.float32, np.float64):
        raise TypeError(f"dy must be float32 or float64, got {dy.dtype}")
    n, c, h, w = (int(v) for v in x_shape)
    if dy.shape[1] != c or rois.shape[0] != dy.shape[0]:
        raise ValueError(f"dy {dy.shape} does not match x_shape {tuple(x_shape)} and rois {rois.shape}")
    batch = xp.ascontiguousarray(xp.asarray(rois[:, 0]).astype(np.int32))
    dy = xp.ascontiguousarray(dy)
    argmax = xp.ascontiguousarray(argmax, dtype=np.int32)
    if xp is np:
        check_batch_index(batch, n)
        return _roi_pool_backward_cpu(dy, argmax, (n, c, h, w), batch)
    return _roi_pool_backward_gpu(dy, argmax, (n, c, h, w), batch)


# --- The plain reference: NumPy, one RoI and one bin at a time ------------------------------

def c_round(v):
    """C's round(): halves away from zero (0.5 -> 1, 2.5 -> 3, -0.5 -> -1), elementwise.

    np.round rounds halves to even, and floor(v + 0.5) is off for the largest float just below 0.5
    (v + 0.5 rounds up to 1): the fraction v - trunc(v) is exact, so compare that instead.
    """
    t = np.trunc(v)
    return t + (v - t >= 0.5) - (v - t <= -0.5)


def roi_bins(roi, scale, pooled, size, dtype):
    """Bin edges (lo, hi) along one axis of one RoI: roi = (first, last) corner in image pixels.

    Every product and quotient is taken in `dtype`, as in the layer; lo, hi are int arrays (pooled,).
    """
    dtype = np.dtype(dtype).type
    start = int(c_round(dtype(roi[0]) * dtype(scale)))
    end = int(c_round(dtype(roi[1]) * dtype(scale)))
    bin_size = dtype(max(end - start + 1, 1)) / dtype(pooled)
    p = np.arange(pooled)
    lo = np.floor(p.astype(dtype) * bin_size).astype(np.int64) + start
    hi = np.ceil((p + 1).astype(dtype) * bin_size).astype(np.int64) + start
    return np.clip(lo, 0, size), np.clip(hi, 0, size)


def roi_pool_reference(x, rois, output_size=(7, 7), spatial_scale=1 / 16):
    """Plain NumPy `roi_pool` for small inputs (NumPy arrays only): same arguments, same results."""
    ph, pw = check_roi_inputs(x, rois, output_size)
    n_images, channels, height, width = x.shape
    rois = np.asarray(rois).astype(x.dtype)
    y = np.zeros((len(rois), channels, ph, pw), dtype=x.dtype)
    argmax = np.full((len(rois), channels, ph, pw), -1, dtype=np.int32)
    for r, roi in enumerate(rois):
        n = int(roi[0])
        h_lo, h_hi = roi_bins((roi[2], roi[4]), spatial_scale, ph, height, x.dtype)
        w_lo, w_hi = roi_bins((roi[1], roi[3]), spatial_scale, pw, width, x.dtype)
        for i in range(ph):
            for j in range(pw):
                if h_hi[i] <= h_lo[i] or w_hi[j] <= w_lo[j]:
                    continue  # empty bin: 0, argmax -1
                region = x[n, :, h_lo[i]:h_hi[i], w_lo[j]:w_hi[j]].reshape(channels, -1)
                k = region.argmax(axis=1)  # the first maximum in row-major order
                y[r, :, i, j] = region[np.arange(channels), k]
                bin_w = w_hi[j] - w_lo[j]
                argmax[r, :, i, j] = (h_lo[i] + k // bin_w) * width + w_lo[j] + k % bin_w
    return y, argmax


def roi_pool_backward_reference(dy, argmax, x_shape, rois):
    """Plain NumPy `roi_pool_backward`: np.add.at sums every bin's gradient into its argmax."""
    n_images, channels, height, width = x_shape
    dx = np.zeros((n_images, channels, height * width), dtype=dy.dtype)
    r, c, b = np.nonzero(argmax.reshape(len(dy), channels, -1) >= 0)
    batch = np.asarray(rois)[:, 0].astype(np.int64)
    np.add.at(dx, (batch[r], c, argmax.reshape(len(dy), channels, -1)[r, c, b]),
              dy.reshape(len(dy), channels, -1)[r, c, b])
    return dx.reshape(x_shape)


# --- CPU: Cython ----------------------------------------------------------------------------

def nhwc_copy(x):
    """x (N, C, H, W) NumPy as a new (N, H, W, C) array, one feature cell's C channels contiguous: the
    layout of the CPU RoI kernels (RoIPool, RoIAlign), whose inner loops run over channels."""
    from minidet._ext import nhwc

    n, c, h, w = x.shape
    x_nhwc = np.empty((n, h, w, c), dtype=x.dtype)
    nhwc.nchw_to_nhwc(x, x_nhwc)
    return x_nhwc


def _roi_pool_cpu(x, rois, ph, pw, spatial_scale, out):
    from minidet._ext import roi_pool as ext

    r, c = rois.shape[0], x.shape[1]
    y, argmax = _outputs(np, out, (r, c, ph, pw), x.dtype)
    ext.roi_pool_forward(nhwc_copy(x), rois, y.reshape(r, c, ph * pw), argmax.reshape(r, c, ph * pw),
                         ph, pw, float(spatial_scale))
    return y, argmax


def _roi_pool_backward_cpu(dy, argmax, x_shape, batch):
    from minidet._ext import roi_pool as ext

    n, c, h, w = x_shape
    r, _, ph, pw = dy.shape
    dx = np.zeros(x_shape, dtype=dy.dtype)
    ext.roi_pool_backward(dy.reshape(r, c, ph * pw), argmax.reshape(r, c, ph * pw), batch,
                          dx.reshape(n, c, h * w))
    return dx


# --- GPU: CUDA RawKernels --------------------------------------------------------------------
#
# Forward: one thread per output (r, c, ph, pw), each computing its bin as above (bit for bit the
# CPU's arithmetic: same float type, C round/floor/ceil, no fused multiply-add on these lines).
# Backward: one thread per dy element, atomicAdd into dx at its argmax. The original Caffe GPU layer
# gathered instead (one thread per input cell, looping over every RoI of its image and recomputing
# which bins can contain the cell): that needs the spatial scale, which the backward does not take,
# costs O(N C H W R) rather than O(R C PH PW), and its in-RoI test (start <= w <= end) skips the
# cells that the forward's bins can reach outside [start, end] (a RoI whose end rounds below its
# start still pools column `start`; a last bin whose ceil overshoots reaches end + 1). The scatter
# follows argmax exactly; the price is that a cell chosen by several bins sums their gradients in
# no fixed order, so the GPU agrees with the CPU to rounding, not bit for bit.

def _roi_pool_gpu(x, rois, ph, pw, spatial_scale, out):
    from minidet.ops.cuda import kernel, launch, scalar_name

    cp = require_cupy()
    n, c, h, w = x.shape
    r = rois.shape[0]
    y, argmax = _outputs(cp, out, (r, c, ph, pw), x.dtype)
    kern = kernel("roi_pool.cu", "roi_pool_forward", scalar_name(x.dtype))
    launch(kern, y.size, (x, rois, np.int64(y.size), np.int32(n), np.int32(c), np.int32(h), np.int32(w),
                          np.int32(ph), np.int32(pw), x.dtype.type(spatial_scale), y, argmax))
    return y, argmax


def _roi_pool_backward_gpu(dy, argmax, x_shape, batch):
    from minidet.ops.cuda import kernel, launch, scalar_name

    cp = require_cupy()
    n, c, h, w = x_shape
    r, _, ph, pw = dy.shape
    dx = cp.zeros(x_shape, dtype=dy.dtype)
    kern = kernel("roi_pool.cu", "roi_pool_backward", scalar_name(dy.dtype))
    launch(kern, dy.size, (dy, argmax, batch, np.int64(dy.size), np.int32(c), np.int32(h * w),
                           np.int32(ph * pw), dx))
    return dx
