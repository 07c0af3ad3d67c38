"""im2col and col2im on the CPU (the layout of cols and the mathematics: minidet/ops/im2col.py).

The padding is never materialised: im2col writes zeros where a window leaves the input, and
col2im skips those entries; a unit-stride row is one memcpy (im2col) or one vectorised add (col2im).
Both take a range of output rows [g0, g0 + G), g = n * OH + oh, so that a layer can run in chunks.

Both run with the GIL released, on the calling thread alone unless the caller passes
parallel=True (minidet/ops/im2col.py decides, by size). In parallel, im2col shares out the rows
of cols (a thread writes whole rows, so writes never overlap) and col2im the (image, channel)
planes of dx (a plane gathers the kh * kw rows of its own channel, so no two threads add into the
same element). The schedule is dynamic, one row or plane at a time: when the second thread is late
to start (a busy machine), the first takes over its share instead of waiting to hand it over.
"""
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int minidet_openmp_threads(void) { return omp_get_max_threads(); }
    #else
    static int minidet_openmp_threads(void) { return 1; }
    #endif
    """
    int minidet_openmp_threads() noexcept nogil


def openmp_threads():
    """The threads a parallel kernel would run on now: 1 when built without OpenMP."""
    return minidet_openmp_threads()

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
           real[:, ::1] cols, Py_ssize_t g0=0, bint parallel=False):
    """Fill cols (C*kh*kw, G*OW) from x (N, C, H, W) for the output rows g = n*OH + oh in [g0, g0 + G).

    OH = (H + 2*ph - kh) // sh + 1, OW = (W + 2*pw - kw) // sw + 1; column (g - g0)*OW + ow.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = (H + 2 * ph - kh) // sh + 1
    cdef Py_ssize_t OW = (W + 2 * pw - kw) // sw + 1
    cdef Py_ssize_t K = C * kh * kw, G = cols.shape[1] // OW
    cdef Py_ssize_t r, c, i, j, g, n, oh, ow, ih, iw0, lo, hi
    cdef real* dst
    cdef const real* src
    if cols.shape[0] != K or cols.shape[1] != G * OW or g0 < 0 or g0 + G > N * OH:
        raise ValueError(f"cols must be ({K}, G * {OW}) for output rows [g0, g0 + G) inside [0, {N * OH}), "
                         f"got ({cols.shape[0]}, {cols.shape[1]}) from row {g0}")
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
            for g in range(g0, g0 + G):
                n = g // OH
                oh = g % OH
                dst = &cols[r, (g - g0) * OW]
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
           real[:, :, :, ::1] dx, Py_ssize_t g0=0, bint accumulate=False, bint parallel=False):
    """The adjoint of im2col applied to cols (C*kh*kw, G*OW) of the output rows [g0, g0 + G),
    into dx (N, C, H, W): overwriting the planes of the images those rows touch, or adding to
    them (accumulate=True, for a layer run in chunks of rows).

    dx[n, c, ih, iw] (+)= sum of cols[(c*kh + i)*kw + j, (n*OH + oh - g0)*OW + ow] over all
    (i, j, oh, ow) with oh*sh - ph + i = ih and ow*sw - pw + j = iw: every input
    pixel collects the gradient of each column entry that copied it.
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = (H + 2 * ph - kh) // sh + 1
    cdef Py_ssize_t OW = (W + 2 * pw - kw) // sw + 1
    cdef Py_ssize_t K = C * kh * kw, G = cols.shape[1] // OW
    cdef Py_ssize_t n0, n1, plane, r, c, i, j, n, oh, oh0, oh1, ow, ih, iw0, lo, hi
    cdef real* dst
    cdef const real* src
    if cols.shape[0] != K or cols.shape[1] != G * OW or g0 < 0 or g0 + G > N * OH:
        raise ValueError(f"cols must be ({K}, G * {OW}) for output rows [g0, g0 + G) inside [0, {N * OH}), "
                         f"got ({cols.shape[0]}, {cols.shape[1]}) from row {g0}")
    n0 = g0 // OH
    n1 = (g0 + G + OH - 1) // OH
    with nogil:
        for plane in prange((n1 - n0) * C, schedule="dynamic", use_threads_if=parallel):
            n = n0 + plane // C
            c = plane % C
            oh0 = g0 - n * OH if g0 > n * OH else 0
            oh1 = g0 + G - n * OH if g0 + G < (n + 1) * OH else OH
            if not accumulate:
                memset(&dx[n, c, 0, 0], 0, H * W * sizeof(real))
            for i in range(kh):
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    iw0 = j - pw
                    lo = first_inside(iw0, sw, OW)
                    hi = end_inside(iw0, sw, W, OW)
                    for oh in range(oh0, oh1):
                        ih = oh * sh - ph + i
                        if ih < 0 or ih >= H:
                            continue
                        src = &cols[r, (n * OH + oh - g0) * OW]
                        dst = &dx[n, c, ih, 0]
                        if sw == 1:     # unit stride: a loop the compiler vectorises
                            dst = dst + lo + iw0
                            src = src + lo
                            for ow in range(hi - lo):
                                dst[ow] += src[ow]
                        else:
                            for ow in range(lo, hi):
                                dst[ow * sw + iw0] += src[ow]
