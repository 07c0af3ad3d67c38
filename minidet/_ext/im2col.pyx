"""im2col and col2im on the CPU: a convolution as one matrix product.

Layout, shared with minidet/ops/cuda/im2col.cu and the plain reference in
minidet/ops/im2col.py (xpad is x zero-padded by ph rows and pw columns):

    cols[(c * kh + i) * kw + j, (n * OH + oh) * OW + ow] = xpad[n, c, oh * sh + i, ow * sw + j]

so that `W.reshape(F, C * kh * kw) @ cols` is the convolution of every image at
once, (F, N * OH * OW), in a single GEMM. The padding is never materialised:
entries that fall outside the input are written as zeros.

Both run with the GIL released, on the calling thread alone unless the caller passes
parallel=True (minidet/ops/im2col.py decides, by size, and says why). In parallel,
im2col shares out the rows of cols (a thread writes whole rows, so writes never
overlap) and col2im the (image, channel) planes of dx (a plane gathers the kh * kw
rows of its own channel, so no two threads add into the same element). The schedule
is dynamic, one row or plane at a time: when the second thread is late to start (a
busy machine), the first takes over its share instead of waiting to hand it over.
"""
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

ctypedef fused real:
    float
    double

cdef inline Py_ssize_t first_inside(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t out_size) noexcept nogil:
    """Smallest o >= 0 with o * stride + offset >= 0 (at most out_size)."""
    cdef Py_ssize_t o = 0
    if offset < 0:
        o = (-offset + stride - 1) // stride
    return o if o < out_size else out_size


cdef inline Py_ssize_t end_inside(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size,
                                  Py_ssize_t out_size) noexcept nogil:
    """One past the largest o < out_size with o * stride + offset < size (0 if none)."""
    cdef Py_ssize_t o
    if offset >= size:
        return 0
    o = (size - 1 - offset) // stride + 1
    return o if o < out_size else out_size


def im2col(const real[:, :, :, ::1] x, int kh, int kw, int sh, int sw, int ph, int pw,
           real[:, ::1] cols, bint parallel=False):
    """Fill cols (C*kh*kw, N*OH*OW) from x (N, C, H, W) with the layout above.

    OH = (H + 2*ph - kh) // sh + 1, OW = (W + 2*pw - kw) // sw + 1.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = (H + 2 * ph - kh) // sh + 1
    cdef Py_ssize_t OW = (W + 2 * pw - kw) // sw + 1
    cdef Py_ssize_t K = C * kh * kw
    cdef Py_ssize_t r, c, i, j, n, oh, ow, ih, iw0, lo, hi
    cdef real* dst
    cdef const real* src
    if cols.shape[0] != K or cols.shape[1] != N * OH * OW:
        raise ValueError(f"cols must be ({K}, {N * OH * OW}), got ({cols.shape[0]}, {cols.shape[1]})")
    with nogil:
        for r in prange(K, schedule="dynamic", use_threads_if=parallel):
            c = r // (kh * kw)
            i = (r // kw) % kh
            j = r % kw
            iw0 = j - pw
            # Output columns [lo, hi) read inside the input; the others read padding.
            lo = first_inside(iw0, sw, OW)
            hi = end_inside(iw0, sw, W, OW)
            if hi < lo:
                hi = lo
            for n in range(N):
                for oh in range(OH):
                    dst = &cols[r, (n * OH + oh) * OW]
                    ih = oh * sh - ph + i
                    if ih < 0 or ih >= H:
                        memset(dst, 0, OW * sizeof(real))
                        continue
                    src = &x[n, c, ih, 0]
                    memset(dst, 0, lo * sizeof(real))
                    if sw == 1:
                        memcpy(dst + lo, src + lo + iw0, (hi - lo) * sizeof(real))
                    else:
                        for ow in range(lo, hi):
                            dst[ow] = src[ow * sw + iw0]
                    memset(dst + hi, 0, (OW - hi) * sizeof(real))


def col2im(const real[:, ::1] cols, int kh, int kw, int sh, int sw, int ph, int pw,
           real[:, :, :, ::1] dx, bint parallel=False):
    """Overwrite dx (N, C, H, W) with the adjoint of im2col applied to cols (C*kh*kw, N*OH*OW).

    dx[n, c, ih, iw] = sum of cols[(c*kh + i)*kw + j, (n*OH + oh)*OW + ow] over all
    (i, j, oh, ow) with oh*sh - ph + i = ih and ow*sw - pw + j = iw: every input
    pixel collects the gradient of each column entry that copied it.
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = (H + 2 * ph - kh) // sh + 1
    cdef Py_ssize_t OW = (W + 2 * pw - kw) // sw + 1
    cdef Py_ssize_t K = C * kh * kw
    cdef Py_ssize_t plane, r, c, i, j, n, oh, ow, ih, iw0, lo, hi
    cdef real* dst
    cdef const real* src
    if cols.shape[0] != K or cols.shape[1] != N * OH * OW:
        raise ValueError(f"cols must be ({K}, {N * OH * OW}), got ({cols.shape[0]}, {cols.shape[1]})")
    with nogil:
        for plane in prange(N * C, schedule="dynamic", use_threads_if=parallel):
            n = plane // C
            c = plane % C
            memset(&dx[n, c, 0, 0], 0, H * W * sizeof(real))
            for i in range(kh):
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    iw0 = j - pw
                    lo = first_inside(iw0, sw, OW)
                    hi = end_inside(iw0, sw, W, OW)
                    for oh in range(OH):
                        ih = oh * sh - ph + i
                        if ih < 0 or ih >= H:
                            continue
                        src = &cols[r, (n * OH + oh) * OW]
                        dst = &dx[n, c, ih, 0]
                        if sw == 1:     # unit stride: a loop the compiler vectorises
                            dst = dst + lo + iw0
                            src = src + lo
                            for ow in range(hi - lo):
                                dst[ow] += src[ow]
                        else:
                            for ow in range(lo, hi):
                                dst[ow * sw + iw0] += src[ow]
