# distutils: extra_compile_args = -ffp-contract=off
"""RoIAlign on the CPU: the arithmetic of minidet/ops/roi_align.py (the formulas are there), laid
out for SIMD. -ffp-contract=off: no product may fuse with a sum (torchvision's kernel rounds each).

A RoI's points are separable: a point's row depends on (ph, iy) only and its column on (pw, ix)
only, so each axis's coordinates, cells and weights are computed once per RoI (`axis_points`),
not once per bin, channel or point, and a point's four weights are the products of its two axes'.

Forward: the map is copied to NHWC (minidet._ext.roi_pool.nchw_to_nhwc), so that a cell's C channels
are contiguous, and every point adds its four weighted cells into the bin's C running sums: a SIMD
loop over channels, each channel still summed point after point, tap after tap, as in torchvision.
A RoI's (bin, channel) averages are then transposed into y[r] (C, PH*PW). Parallel over RoIs.

Backward: dx is accumulated in NHWC and transposed at the end. Parallel over blocks of channels:
a thread owns dx[:, :, :, c0:c1] and walks every RoI, bin, point and tap in order, so every
element adds its contributions in the order of the reference, no two threads write one element,
and the result is the same on any number of threads. dy[r, c0:c1] is first transposed into a
(bin, channel) scratch so that the channel loop reads it contiguously.

Division by the point count: v / count and v * (1 / count) are the same number whenever count is
a power of two (both are v / count correctly rounded), as for sampling_ratio 2 (4 points); the
kernels multiply then, and divide otherwise.

Both release the GIL and run on the calling thread unless use_threads (see minidet/ops/roi_align.py).
"""
from cython.parallel cimport parallel, prange
from libc.math cimport ceil
from libc.stdlib cimport free, malloc

import numpy as np

ctypedef fused real:
    float
    double

cdef enum:
    # Channels per backward task. Measured on 2000 RoIs over (2, 512, 38, 63), 7x7, 4 points a bin,
    # float32, 2 threads (2 cores, load average 6): blocks of 16, 32, 64 and 128 channels took 0.84,
    # 0.53, 0.43 and 0.45 s (more passes over the RoIs and shorter channel loops below 64).
    BACKWARD_CHANNEL_BLOCK = 64


cdef inline int axis_geometry(real first, real last, real scale, int pooled, int sampling_ratio,
                              bint aligned, real* start, real* bin_size) noexcept nogil:
    """start and bin size of one RoI along one axis (corners first, last); returns its points per bin."""
    cdef real offset = <real> 0.5 if aligned else <real> 0
    cdef real s = first * scale - offset
    cdef real length = (last * scale - offset) - s
    if not aligned and length < 1:  # malformed RoIs count as one cell when not aligned
        length = 1
    start[0] = s
    bin_size[0] = length / <real> pooled
    if sampling_ratio > 0:
        return sampling_ratio
    return <int> ceil(length / <real> pooled)


cdef void axis_points(real start, real bin_size, int pooled, int grid, int size,
                      int* inside, int* lo, int* hi, real* l, real* h) noexcept nogil:
    """The pooled * grid points of one axis: inside, cells lo/hi and their weights h (of lo), l (of hi)."""
    cdef int p, i, k = 0, low
    cdef real v
    for p in range(pooled):
        for i in range(grid):
            v = (start + <real> p * bin_size) + <real> (i + 0.5) * bin_size / <real> grid
            if not (v >= -1 and v <= size):  # also NaN: the point reads nothing
                inside[k] = lo[k] = hi[k] = 0
                l[k] = h[k] = 0
            else:
                inside[k] = 1
                if v <= 0:
                    v = 0
                low = <int> v
                if low >= size - 1:
                    low = size - 1
                    hi[k] = low
                    v = <real> low
                else:
                    hi[k] = low + 1
                lo[k] = low
                l[k] = v - <real> low
                h[k] = 1 - l[k]
            k += 1


cdef struct Scratch:
    # One thread's tables of one RoI's points: rows (PH * gh entries), then columns (PW * gw).
    int gh
    int gw
    int* inside
    int* lo
    int* hi
    void* l
    void* h


cdef Scratch* new_scratch(int entries, size_t real_size) noexcept nogil:
    """Room for `entries` points in one block (NULL without memory; free() it). A pointer, so that
    each thread of a parallel block assigns its own (OpenMP makes assigned variables private)."""
    cdef char* block = <char*> malloc(sizeof(Scratch) + <size_t> entries * (2 * real_size + 3 * sizeof(int)))
    cdef Scratch* s = <Scratch*> block
    if block == NULL:
        return NULL
    s.l = block + sizeof(Scratch)                    # the reals first: aligned after the struct
    s.h = block + sizeof(Scratch) + entries * real_size
    s.inside = <int*> (block + sizeof(Scratch) + 2 * entries * real_size)
    s.lo = s.inside + entries
    s.hi = s.lo + entries
    return s


cdef inline void roi_points(const real* roi, real scale, int pooled_h, int pooled_w, int sampling_ratio,
                            bint aligned, int H, int W, Scratch* s) noexcept nogil:
    """Fill s with the grid sizes of roi and its rows (entries 0 .. PH*gh) and columns (from PH*gh on)."""
    cdef real start, bin_size
    cdef int rows
    cdef real* l = <real*> s.l
    cdef real* h = <real*> s.h
    s.gh = axis_geometry(roi[2], roi[4], scale, pooled_h, sampling_ratio, aligned, &start, &bin_size)
    axis_points(start, bin_size, pooled_h, s.gh, H, s.inside, s.lo, s.hi, l, h)
    rows = pooled_h * s.gh if s.gh > 0 else 0
    s.gw = axis_geometry(roi[1], roi[3], scale, pooled_w, sampling_ratio, aligned, &start, &bin_size)
    axis_points(start, bin_size, pooled_w, s.gw, W, s.inside + rows, s.lo + rows, s.hi + rows, l + rows, h + rows)


cdef int largest_table(const real[:, ::1] rois, real scale, int pooled_h, int pooled_w, int sampling_ratio,
                       bint aligned) noexcept nogil:
    """The most table entries (PH*gh + PW*gw) any RoI needs, at least 1."""
    cdef Py_ssize_t r
    cdef real start, bin_size
    cdef int gh, gw, entries, most = 1
    for r in range(rois.shape[0]):
        gh = axis_geometry(rois[r, 2], rois[r, 4], scale, pooled_h, sampling_ratio, aligned, &start, &bin_size)
        gw = axis_geometry(rois[r, 1], rois[r, 3], scale, pooled_w, sampling_ratio, aligned, &start, &bin_size)
        entries = (pooled_h * gh if gh > 0 else 0) + (pooled_w * gw if gw > 0 else 0)
        if entries > most:
            most = entries
    return most


cdef void average_bins(const real* xn, int W, int C, int pooled_h, int pooled_w, const Scratch* s,
                       real* sums) noexcept nogil:
    """sums (PH*PW, C): each bin's average over the points in s, of xn = x_nhwc[n] (H, W, C)."""
    cdef int gh = s.gh, gw = s.gw, rows = pooled_h * s.gh if s.gh > 0 else 0
    cdef const real* l = <real*> s.l
    cdef const real* h = <real*> s.h
    cdef int count = gh * gw if gh * gw > 1 else 1
    cdef bint power_of_two = (count & (count - 1)) == 0
    cdef real inverse = <real> 1 / <real> count
    cdef int ph, pw, iy, ix, ky, kx, c
    cdef real w1, w2, w3, w4
    cdef real* acc
    cdef const real* v1
    cdef const real* v2
    cdef const real* v3
    cdef const real* v4
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            acc = sums + <Py_ssize_t> (ph * pooled_w + pw) * C
            for c in range(C):
                acc[c] = 0
            for iy in range(gh):
                ky = ph * gh + iy
                if not s.inside[ky]:
                    continue
                for ix in range(gw):
                    kx = rows + pw * gw + ix
                    if not s.inside[kx]:
                        continue
                    w1 = h[ky] * h[kx]
                    w2 = h[ky] * l[kx]
                    w3 = l[ky] * h[kx]
                    w4 = l[ky] * l[kx]
                    v1 = xn + <Py_ssize_t> (s.lo[ky] * W + s.lo[kx]) * C
                    v2 = xn + <Py_ssize_t> (s.lo[ky] * W + s.hi[kx]) * C
                    v3 = xn + <Py_ssize_t> (s.hi[ky] * W + s.lo[kx]) * C
                    v4 = xn + <Py_ssize_t> (s.hi[ky] * W + s.hi[kx]) * C
                    for c in range(C):
                        acc[c] = acc[c] + (((w1 * v1[c] + w2 * v2[c]) + w3 * v3[c]) + w4 * v4[c])
            if power_of_two:
                for c in range(C):
                    acc[c] = acc[c] * inverse
            else:
                for c in range(C):
                    acc[c] = acc[c] / <real> count


def roi_align_forward(const real[:, :, :, ::1] x_nhwc, const real[:, ::1] rois, real[:, :, ::1] y,
                      int pooled_h, int pooled_w, double spatial_scale, int sampling_ratio, bint aligned,
                      bint use_threads=False):
    """y (R, C, PH*PW) from x_nhwc (N, H, W, C) and rois (R, 5); H, W >= 1.

    rois[:, 0] must already be valid batch indices (checked by the caller).
    """
    cdef int H = x_nhwc.shape[1], W = x_nhwc.shape[2], C = x_nhwc.shape[3]
    cdef Py_ssize_t R = rois.shape[0]
    cdef int B = pooled_h * pooled_w
    cdef real scale = <real> spatial_scale
    cdef Py_ssize_t image_size = <Py_ssize_t> H * W * C
    cdef int entries, b, c
    cdef Py_ssize_t r
    cdef Scratch* s = NULL
    cdef real* sums = NULL
    cdef real* out
    cdef int[::1] out_of_memory = np.zeros(1, dtype=np.intc)
    if R == 0 or C == 0 or B == 0:
        return
    with nogil:
        entries = largest_table(rois, scale, pooled_h, pooled_w, sampling_ratio, aligned)
    with nogil, parallel(use_threads_if=use_threads):
        s = new_scratch(entries, sizeof(real))
        sums = <real*> malloc(<size_t> B * C * sizeof(real))
        for r in prange(R, schedule="dynamic", chunksize=4):
            if s == NULL or sums == NULL:
                out_of_memory[0] = 1
            else:
                roi_points(&rois[r, 0], scale, pooled_h, pooled_w, sampling_ratio, aligned, H, W, s)
                average_bins(&x_nhwc[0, 0, 0, 0] + <Py_ssize_t> rois[r, 0] * image_size, W, C,
                             pooled_h, pooled_w, s, sums)
                out = &y[r, 0, 0]
                for c in range(C):
                    for b in range(B):
                        out[c * B + b] = sums[<Py_ssize_t> b * C + c]
        free(s)
        free(sums)
    if out_of_memory[0]:
        raise MemoryError("roi_align_forward: no memory for the per-thread scratch")


cdef inline void add_share(real* row, const real* g, real w, int n, int count, bint power_of_two,
                           real inverse) noexcept nogil:
    """row[c] += g[c] * w / count for c < n: one tap of one point, over a block of channels."""
    cdef int c
    if power_of_two:
        for c in range(n):
            row[c] = row[c] + (g[c] * w) * inverse
    else:
        for c in range(n):
            row[c] = row[c] + (g[c] * w) / <real> count


def roi_align_backward(const real[:, :, ::1] dy, const real[:, ::1] rois, real[:, :, :, ::1] dx_nhwc,
                       int pooled_h, int pooled_w, double spatial_scale, int sampling_ratio, bint aligned,
                       bint use_threads=False):
    """dx_nhwc (N, H, W, C) += the backward of roi_align for dy (R, C, PH*PW); start it at zero."""
    cdef int H = dx_nhwc.shape[1], W = dx_nhwc.shape[2], C = dx_nhwc.shape[3]
    cdef Py_ssize_t R = dy.shape[0]
    cdef int B = pooled_h * pooled_w
    cdef real scale = <real> spatial_scale
    cdef Py_ssize_t image_size = <Py_ssize_t> H * W * C
    cdef int nblocks = (C + BACKWARD_CHANNEL_BLOCK - 1) // BACKWARD_CHANNEL_BLOCK
    cdef int block, c0, nc, c, b, gh, gw, rows, ph, pw, iy, ix, ky, kx, count, entries
    cdef bint power_of_two
    cdef real inverse, w1, w2, w3, w4
    cdef Py_ssize_t r
    cdef Scratch* s = NULL
    cdef const real* l
    cdef const real* h
    cdef real* g = NULL
    cdef real* gb
    cdef real* dxn
    cdef const real* d
    cdef int[::1] out_of_memory = np.zeros(1, dtype=np.intc)
    if R == 0 or C == 0 or B == 0:
        return
    with nogil:
        entries = largest_table(rois, scale, pooled_h, pooled_w, sampling_ratio, aligned)
    with nogil, parallel(use_threads_if=use_threads):
        s = new_scratch(entries, sizeof(real))
        g = <real*> malloc(<size_t> B * BACKWARD_CHANNEL_BLOCK * sizeof(real))
        for block in prange(nblocks, schedule="dynamic"):
            if s == NULL or g == NULL:
                out_of_memory[0] = 1
                continue
            c0 = block * BACKWARD_CHANNEL_BLOCK
            nc = C - c0 if C - c0 < BACKWARD_CHANNEL_BLOCK else BACKWARD_CHANNEL_BLOCK
            l = <real*> s.l
            h = <real*> s.h
            for r in range(R):
                roi_points(&rois[r, 0], scale, pooled_h, pooled_w, sampling_ratio, aligned, H, W, s)
                gh = s.gh
                gw = s.gw
                if gh <= 0 or gw <= 0:
                    continue  # no point: nothing to send back
                rows = pooled_h * gh
                count = gh * gw
                power_of_two = (count & (count - 1)) == 0
                inverse = <real> 1 / <real> count
                for c in range(nc):  # dy[r, c0:c0+nc] (channel, bin) -> g (bin, channel)
                    d = &dy[r, c0 + c, 0]
                    for b in range(B):
                        g[b * nc + c] = d[b]
                dxn = &dx_nhwc[0, 0, 0, 0] + <Py_ssize_t> rois[r, 0] * image_size + c0
                for ph in range(pooled_h):
                    for pw in range(pooled_w):
                        gb = g + (ph * pooled_w + pw) * nc
                        for iy in range(gh):
                            ky = ph * gh + iy
                            if not s.inside[ky]:
                                continue
                            for ix in range(gw):
                                kx = rows + pw * gw + ix
                                if not s.inside[kx]:
                                    continue
                                w1 = h[ky] * h[kx]
                                w2 = h[ky] * l[kx]
                                w3 = l[ky] * h[kx]
                                w4 = l[ky] * l[kx]
                                add_share(dxn + <Py_ssize_t> (s.lo[ky] * W + s.lo[kx]) * C, gb, w1, nc,
                                          count, power_of_two, inverse)
                                add_share(dxn + <Py_ssize_t> (s.lo[ky] * W + s.hi[kx]) * C, gb, w2, nc,
                                          count, power_of_two, inverse)
                                add_share(dxn + <Py_ssize_t> (s.hi[ky] * W + s.lo[kx]) * C, gb, w3, nc,
                                          count, power_of_two, inverse)
                                add_share(dxn + <Py_ssize_t> (s.hi[ky] * W + s.hi[kx]) * C, gb, w4, nc,
                                          count, power_of_two, inverse)
        free(s)
        free(g)
    if out_of_memory[0]:
        raise MemoryError("roi_align_backward: no memory for the per-thread scratch")


def nhwc_to_nchw(const real[:, :, :, ::1] x, real[:, :, :, ::1] out, bint use_threads=False):
    """out[n, c, h, w] = x[n, h, w, c]; parallel over the rows (n, c, h) of out when use_threads."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t row, n, c, h, w
    cdef const real* src
    cdef real* dst
    if N * C * H * W == 0:
        return
    with nogil:
        for row in prange(N * C * H, schedule="static", use_threads_if=use_threads):
            n = row // (C * H)
            c = row // H % C
            h = row % H
            src = &x[n, h, 0, c]
            dst = &out[n, c, h, 0]
            for w in range(W):
                dst[w] = src[w * C]
