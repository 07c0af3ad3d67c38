"""RoI max pooling on the CPU. The mathematics (the rounding of the corners, the bins, the
argmax) is written in minidet/ops/roi_pool.py; this file adds only its CPU layout.

Forward: the map is first copied to NHWC (minidet/_ext/nhwc.pyx), so that one feature cell holds
all C channels contiguously. A RoI's bin edges are computed once (not once per channel), and every bin then
runs a max over whole channel rows: `for c: if v[c] > m[c]: m[c] = v[c]; i[c] = idx`, written
branch-free so that the compiler turns it into SIMD compares and blends (float32; the float64
loop stays scalar). The (bin, channel) result of one RoI is then transposed into y[r]
(C, PH*PW), four channels at a time. Parallel over RoIs: each thread writes whole y[r].

Backward: dx[n, c].flat[argmax[r, c, b]] += dy[r, c, b] for every RoI r of image n and bin b.
Parallel over blocks of channels: a thread owns dx[:, c0:c1] and walks all RoIs, so no two
threads ever add into the same element and no atomics are needed. Each position sums its
contributions in the order (r, b), the order of the plain reference (np.add.at), so the two
agree bit for bit.
"""
from cython.parallel cimport parallel, prange
from libc.math cimport ceil, floor, round
from libc.stdlib cimport free, malloc

import numpy as np

ctypedef fused real:
    float
    double

cdef enum:
    # Channels per backward task: long enough reads of dy, few enough passes over the RoIs
    # (docs/PERFORMANCE.md, "RoI pooling", has the measurements).
    BACKWARD_CHANNEL_BLOCK = 32


cdef inline int clip_int(int v, int lo, int hi) noexcept nogil:
    return lo if v < lo else (hi if v > hi else v)


cdef inline void bin_edges(real first, real last, real scale, int pooled, int size,
                           int* lo, int* hi) noexcept nogil:
    """Edges [lo[p], hi[p]) of the `pooled` bins of one RoI along one axis, as the original layer."""
    # The product is taken in `real` (float for float32 maps) and C's round() then rounds
    # halves away from zero: 0.5 -> 1, -0.5 -> -1.
    cdef int start = <int> round(first * scale)
    cdef int end = <int> round(last * scale)
    cdef int length = end - start + 1
    cdef real bin_size
    cdef int p
    if length < 1:
        length = 1
    bin_size = <real> length / <real> pooled
    for p in range(pooled):
        lo[p] = clip_int(<int> floor(<real> p * bin_size) + start, 0, size)
        hi[p] = clip_int(<int> ceil(<real> (p + 1) * bin_size) + start, 0, size)


cdef void pool_one_roi(const real* xn, int W, int C, int pooled_h, int pooled_w,
                       const int* h_lo, const int* h_hi, const int* w_lo, const int* w_hi,
                       real* values, int* indices) noexcept nogil:
    """Max of every bin of one RoI over all channels: values, indices (PH*PW, C); xn = x_nhwc[n]."""
    cdef int ph, pw, h, w, c, idx, first_idx, i, keep
    cdef real v, m
    cdef real* vb
    cdef int* ib
    cdef const real* cell
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            vb = values + (ph * pooled_w + pw) * C
            ib = indices + (ph * pooled_w + pw) * C
            if h_hi[ph] <= h_lo[ph] or w_hi[pw] <= w_lo[pw]:
                for c in range(C):
                    vb[c] = 0
                    ib[c] = -1
                continue
            # The bin's first cell starts every channel's maximum ...
            first_idx = h_lo[ph] * W + w_lo[pw]
            cell = xn + <Py_ssize_t> first_idx * C
            for c in range(C):
                vb[c] = cell[c]
                ib[c] = first_idx
            # ... and a later cell replaces it only where strictly greater (the first maximum wins).
            # Branch-free, so that the channel loop becomes SIMD compares and blends.
            for h in range(h_lo[ph], h_hi[ph]):
                for w in range(w_lo[pw], w_hi[pw]):
                    idx = h * W + w
                    if idx == first_idx:
                        continue
                    cell = xn + <Py_ssize_t> idx * C
                    for c in range(C):
                        v = cell[c]
                        m = vb[c]
                        i = ib[c]
                        keep = (v > m) - 1  # 0 where v replaces m, all ones where m stays
                        vb[c] = v if v > m else m
                        ib[c] = (i & keep) | (idx & ~keep)


cdef void bins_to_channels(const real* values, const int* indices, int B, int C,
                           real* y, int* argmax) noexcept nogil:
    """(bin, channel) scratch -> one RoI's y (C, B) and argmax (C, B).

    Four channels at a time: one 4-wide read of the scratch row feeds four output rows.
    """
    cdef int b, c, c4 = C - C % 4
    cdef const real* v
    cdef const int* i
    for c in range(0, c4, 4):
        for b in range(B):
            v = values + b * C + c
            i = indices + b * C + c
            y[c * B + b] = v[0]
            y[(c + 1) * B + b] = v[1]
            y[(c + 2) * B + b] = v[2]
            y[(c + 3) * B + b] = v[3]
            argmax[c * B + b] = i[0]
            argmax[(c + 1) * B + b] = i[1]
            argmax[(c + 2) * B + b] = i[2]
            argmax[(c + 3) * B + b] = i[3]
    for c in range(c4, C):
        for b in range(B):
            y[c * B + b] = values[b * C + c]
            argmax[c * B + b] = indices[b * C + c]


def roi_pool_forward(const real[:, :, :, ::1] x_nhwc, const real[:, ::1] rois,
                     real[:, :, ::1] y, int[:, :, ::1] argmax,
                     int pooled_h, int pooled_w, double spatial_scale):
    """y (R, C, PH*PW) and argmax (R, C, PH*PW) from x_nhwc (N, H, W, C) and rois (R, 5) whose batch
    indices rois[:, 0] the caller has checked."""
    cdef int H = x_nhwc.shape[1], W = x_nhwc.shape[2], C = x_nhwc.shape[3]
    cdef Py_ssize_t R = rois.shape[0]
    cdef int B = pooled_h * pooled_w
    cdef real scale = <real> spatial_scale
    cdef Py_ssize_t r
    cdef int* edges = NULL
    cdef real* values = NULL
    cdef int* indices = NULL
    cdef int[::1] out_of_memory = np.zeros(1, dtype=np.intc)
    if R == 0 or C == 0:
        return
    with nogil, parallel():
        # Per-thread scratch: one RoI's bin edges (h_lo, h_hi, w_lo, w_hi) and its (bin, channel) maxima.
        edges = <int*> malloc(2 * (pooled_h + pooled_w) * sizeof(int))
        values = <real*> malloc(<size_t> B * C * sizeof(real))
        indices = <int*> malloc(<size_t> B * C * sizeof(int))
        for r in prange(R, schedule="dynamic", chunksize=8):
            if edges == NULL or values == NULL or indices == NULL:
                out_of_memory[0] = 1
            else:
                bin_edges(rois[r, 2], rois[r, 4], scale, pooled_h, H, edges, edges + pooled_h)
                bin_edges(rois[r, 1], rois[r, 3], scale, pooled_w, W,
                          edges + 2 * pooled_h, edges + 2 * pooled_h + pooled_w)
                pool_one_roi(&x_nhwc[<int> rois[r, 0], 0, 0, 0], W, C, pooled_h, pooled_w,
                             edges, edges + pooled_h, edges + 2 * pooled_h, edges + 2 * pooled_h + pooled_w,
                             values, indices)
                bins_to_channels(values, indices, B, C, &y[r, 0, 0], &argmax[r, 0, 0])
        free(edges)
        free(values)
        free(indices)
    if out_of_memory[0]:
        raise MemoryError("roi_pool_forward: no memory for the per-thread scratch")


def roi_pool_backward(const real[:, :, ::1] dy, const int[:, :, ::1] argmax,
                      const int[::1] batch_index, real[:, :, ::1] dx):
    """dx (N, C, H*W) += the scatter of dy (R, C, B) into argmax positions; dx must start at zero."""
    cdef Py_ssize_t R = dy.shape[0], C = dy.shape[1], B = dy.shape[2]
    cdef Py_ssize_t nblocks = (C + BACKWARD_CHANNEL_BLOCK - 1) // BACKWARD_CHANNEL_BLOCK
    cdef Py_ssize_t block, r, c, c_end, b
    cdef int a
    cdef const real* d
    cdef const int* am
    cdef real* plane
    if R == 0 or C == 0 or B == 0:
        return
    with nogil:
        for block in prange(nblocks, schedule="dynamic"):
            c_end = (block + 1) * BACKWARD_CHANNEL_BLOCK
            if c_end > C:
                c_end = C
            for r in range(R):
                for c in range(block * BACKWARD_CHANNEL_BLOCK, c_end):
                    d = &dy[r, c, 0]
                    am = &argmax[r, c, 0]
                    plane = &dx[batch_index[r], c, 0]
                    for b in range(B):
                        a = am[b]
                        if a >= 0:
                            plane[a] = plane[a] + d[b]
