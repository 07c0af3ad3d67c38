# distutils: extra_compile_args = -ffp-contract=off
"""RoIAlign on the CPU: the arithmetic of minidet/ops/roi_align.py (the formulas are there), laid
out for SIMD. -ffp-contract=off: no product may fuse with a sum (torchvision's kernel rounds each).

A RoI's points are separable: a point's row depends on (ph, iy) only and its column on (pw, ix)
only, so each axis's coordinates, cells and weights are computed once per RoI (`axis_points`),
not once per bin, channel or point, and a point's four weights are the products of its two axes'.

Forward: the map is copied to NHWC (minidet/_ext/nhwc.pyx), so that a cell's C channels
are contiguous, and every point adds its four weighted cells into the bin's C running sums: a SIMD
loop over channels, each channel still summed point after point, tap after tap, as in torchvision.
A RoI's (bin, channel) averages are then transposed into y[r] (C, PH*PW). Parallel over RoIs.

Backward: dx is accumulated in NHWC and copied back to NCHW at the end. Parallel over blocks of channels:
a thread owns dx[:, :, :, c0:c1] and walks every RoI, bin, point and tap in order, so every
element adds its contributions in the order of the reference, no two threads write one element,
and the result is the same on any number of threads. dy[r, c0:c1] is first transposed into a
(bin, channel) scratch so that the channel loop reads it contiguously.

Division by the point count: v / count and v * (1 / count) are the same number whenever count is
a power of two (both are v / count correctly rounded), as for sampling_ratio 2 (4 points); the
kernels multiply then, and divide otherwise.

Both release the GIL and run on the calling thread unless use_threads (see minidet/ops/roi_align.py),
and both take rois (R, 5) whose batch indices rois[:, 0] the caller has checked.
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
    # One thread's work area (`work` reals: the forward's bin sums, the backward's block of dy) and its
    # tables of one RoI's points: rows (PH * gh entries), then columns (PW * gw).
    void* work
    int gh
    int gw
    int* inside
    int* lo
    int* hi
    void* l
    void* h


cdef Scratch* new_scratch(int entries, size_t work, size_t real_size) noexcept nogil:
    """Room for `work` reals and `entries` points in one block (NULL without memory; free() it). A
    pointer, so that each thread of a parallel block assigns its own (OpenMP makes assigned variables
    private)."""
    cdef size_t head = (sizeof(Scratch) + 63) // 64 * 64     # the work area as aligned as malloc's
    cdef char* block = <char*> malloc(head + (work + 2 * <size_t> entries) * real_size
                                      + <size_t> entries * 3 * sizeof(int))
    cdef Scratch* s = <Scratch*> block
    if block == NULL:
        return NULL
    s.work = block + head                            # the reals first, then the ints
    s.l = block + head + work * real_size
    s.h = block + head + (work + entries) * real_size
    s.inside = <int*> (block + head + (work + 2 * entries) * real_size)
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


cdef inline bint point_cells(const Scratch* s, int ky, int kx, int W, int C, Py_ssize_t* cells,
                             real* weights) noexcept nogil:
    """The point of row ky and column kx of s: False when it reads nothing, else its four cells
    (offsets into an NHWC image, C values a cell) and their weights w1..w4, in the reference's order."""
    cdef const real* l = <real*> s.l
    cdef const real* h = <real*> s.h
    if not (s.inside[ky] and s.inside[kx]):
        return False
    weights[0] = h[ky] * h[kx]
    weights[1] = h[ky] * l[kx]
    weights[2] = l[ky] * h[kx]
    weights[3] = l[ky] * l[kx]
    cells[0] = <Py_ssize_t> (s.lo[ky] * W + s.lo[kx]) * C
    cells[1] = <Py_ssize_t> (s.lo[ky] * W + s.hi[kx]) * C
    cells[2] = <Py_ssize_t> (s.hi[ky] * W + s.lo[kx]) * C
    cells[3] = <Py_ssize_t> (s.hi[ky] * W + s.hi[kx]) * C
    return True


cdef void average_bins(const real* xn, int W, int C, int pooled_h, int pooled_w, const Scratch* s,
                       real* sums) noexcept nogil:
    """sums (PH*PW, C): each bin's average over the points in s, of xn = x_nhwc[n] (H, W, C)."""
    cdef int gh = s.gh, gw = s.gw, rows = pooled_h * s.gh if s.gh > 0 else 0
    cdef int count = gh * gw if gh * gw > 1 else 1
    cdef bint power_of_two = (count & (count - 1)) == 0
    cdef real inverse = <real> 1 / <real> count
    cdef int ph, pw, iy, ix, c
    cdef real w[4]
    cdef real w1, w2, w3, w4
    cdef Py_ssize_t cells[4]
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
                for ix in range(gw):
                    if not point_cells(s, ph * gh + iy, rows + pw * gw + ix, W, C, cells, w):
                        continue
                    w1, w2, w3, w4 = w[0], w[1], w[2], w[3]        # scalars: the channel loop reads no array
                    v1, v2, v3, v4 = xn + cells[0], xn + cells[1], xn + cells[2], xn + cells[3]
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
    """y (R, C, PH*PW) from x_nhwc (N, H, W, C) and rois (R, 5); H, W >= 1."""
    cdef int H = x_nhwc.shape[1], W = x_nhwc.shape[2], C = x_nhwc.shape[3]
    cdef Py_ssize_t R = rois.shape[0]
    cdef int B = pooled_h * pooled_w
    cdef real scale = <real> spatial_scale
    cdef int entries = largest_table(rois, scale, pooled_h, pooled_w, sampling_ratio, aligned)
    cdef int b, c
    cdef Py_ssize_t r
    cdef Scratch* s = NULL
    cdef real* sums
    cdef real* out
    cdef int[::1] out_of_memory = np.zeros(1, dtype=np.intc)
    if R == 0 or C == 0 or B == 0:
        return
    with nogil, parallel(use_threads_if=use_threads):
        s = new_scratch(entries, <size_t> B * C, sizeof(real))      # the work area: the bins' sums
        for r in prange(R, schedule="dynamic", chunksize=4):
            if s == NULL:
                out_of_memory[0] = 1
            else:
                sums = <real*> s.work
                roi_points(&rois[r, 0], scale, pooled_h, pooled_w, sampling_ratio, aligned, H, W, s)
                average_bins(&x_nhwc[<Py_ssize_t> rois[r, 0], 0, 0, 0], W, C, pooled_h, pooled_w, s, sums)
                out = &y[r, 0, 0]
                for c in range(C):
                    for b in range(B):
                        out[c * B + b] = sums[<Py_ssize_t> b * C + c]
        free(s)
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


cdef void spread_bins(const real* g, int nc, int W, int C, int pooled_h, int pooled_w, const Scratch* s,
                      real* dxn) noexcept nogil:
    """dxn += each bin's share of g (PH*PW, nc) at the points in s: dxn = &dx_nhwc[n, 0, 0, c0], nc channels
    from c0 on. The local arrays are the thread's own (a function's stack, not the parallel block's)."""
    cdef int gh = s.gh, gw = s.gw, rows = pooled_h * s.gh
    cdef int count = gh * gw
    cdef bint power_of_two = (count & (count - 1)) == 0
    cdef real inverse = <real> 1 / <real> count
    cdef int ph, pw, iy, ix
    cdef real w[4]
    cdef Py_ssize_t cells[4]
    cdef const real* gb
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            gb = g + (ph * pooled_w + pw) * nc
            for iy in range(gh):
                for ix in range(gw):
                    if not point_cells(s, ph * gh + iy, rows + pw * gw + ix, W, C, cells, w):
                        continue
                    add_share(dxn + cells[0], gb, w[0], nc, count, power_of_two, inverse)
                    add_share(dxn + cells[1], gb, w[1], nc, count, power_of_two, inverse)
                    add_share(dxn + cells[2], gb, w[2], nc, count, power_of_two, inverse)
                    add_share(dxn + cells[3], gb, w[3], nc, count, power_of_two, inverse)


def roi_align_backward(const real[:, :, ::1] dy, const real[:, ::1] rois, real[:, :, :, ::1] dx_nhwc,
                       int pooled_h, int pooled_w, double spatial_scale, int sampling_ratio, bint aligned,
                       bint use_threads=False):
    """dx_nhwc (N, H, W, C) += the backward of roi_align for dy (R, C, PH*PW); start it at zero."""
    cdef int H = dx_nhwc.shape[1], W = dx_nhwc.shape[2], C = dx_nhwc.shape[3]
    cdef int nblocks = (C + BACKWARD_CHANNEL_BLOCK - 1) // BACKWARD_CHANNEL_BLOCK   # tasks: channel blocks
    cdef int B = pooled_h * pooled_w, block, c0, nc, c, b
    cdef Py_ssize_t R = dy.shape[0], r
    cdef real scale = <real> spatial_scale
    cdef int entries = largest_table(rois, scale, pooled_h, pooled_w, sampling_ratio, aligned)
    cdef Scratch* s = NULL
    cdef real* g
    cdef const real* d
    cdef int[::1] out_of_memory = np.zeros(1, dtype=np.intc)
    if R == 0 or C == 0 or B == 0:
        return
    with nogil, parallel(use_threads_if=use_threads):
        s = new_scratch(entries, <size_t> B * BACKWARD_CHANNEL_BLOCK, sizeof(real))   # the work area: g
        for block in prange(nblocks, schedule="dynamic"):
            if s == NULL:
                out_of_memory[0] = 1
                continue
            g = <real*> s.work
            c0 = block * BACKWARD_CHANNEL_BLOCK
            nc = C - c0 if C - c0 < BACKWARD_CHANNEL_BLOCK else BACKWARD_CHANNEL_BLOCK
            for r in range(R):
                roi_points(&rois[r, 0], scale, pooled_h, pooled_w, sampling_ratio, aligned, H, W, s)
                if s.gh <= 0 or s.gw <= 0:
                    continue  # no point: nothing to send back
                for c in range(nc):  # dy[r, c0:c0+nc] (channel, bin) -> g (bin, channel)
                    d = &dy[r, c0 + c, 0]
                    for b in range(B):
                        g[b * nc + c] = d[b]
                spread_bins(g, nc, W, C, pooled_h, pooled_w, s, &dx_nhwc[<Py_ssize_t> rois[r, 0], 0, 0, c0])
        free(s)
    if out_of_memory[0]:
        raise MemoryError("roi_align_backward: no memory for the per-thread scratch")
