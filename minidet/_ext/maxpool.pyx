"""Max pooling on the CPU: forward with argmax, backward by scattering to the argmax.

The mathematics (windows, ties, NaN) is written in minidet/ops/maxpool.py; this file adds only
its CPU layout. With vgg=True (VGG16's windows: 2x2, stride 2, no padding, as minidet/ops/maxpool.py
decides) both kernels take vectorised row loops (maxpool_loops.h) with the same result; every other
window takes the general loops below. Both kernels run with the GIL released, on the calling thread
alone unless the caller passes parallel=True (minidet/ops/maxpool.py decides, by size, and says why). In
parallel they share out the (image, channel) planes, one at a time (dynamic schedule:
a thread that starts late on a busy machine finds its share taken over rather than
waited for); in the backward a plane's overlapping windows add into that plane only,
so no two threads write the same element.
"""
from cython.parallel cimport prange
from libc.string cimport memset

ctypedef fused real:
    float
    double


cdef extern from "maxpool_loops.h":
    void pool2x2_row_float(const float*, const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, float*,
                           int*) noexcept nogil
    void pool2x2_row_double(const double*, const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, double*,
                            int*) noexcept nogil
    void unpool2x2_row_float(const float*, const int*, Py_ssize_t, Py_ssize_t, Py_ssize_t, float*,
                             float*) noexcept nogil
    void unpool2x2_row_double(const double*, const int*, Py_ssize_t, Py_ssize_t, Py_ssize_t, double*,
                              double*) noexcept nogil


cdef inline void pool2x2_plane(const real* x, Py_ssize_t H, Py_ssize_t W, real* y, int* argmax,
                               Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """One (H, W) plane into its (OH, OW) outputs, 2x2 windows of stride 2, no padding."""
    cdef Py_ssize_t oh
    cdef const real* second
    for oh in range(OH):
        second = x + (2 * oh + 1) * W if 2 * oh + 1 < H else NULL
        if real is float:
            pool2x2_row_float(x + 2 * oh * W, second, W, OW, 2 * oh * W, y + oh * OW, argmax + oh * OW)
        else:
            pool2x2_row_double(x + 2 * oh * W, second, W, OW, 2 * oh * W, y + oh * OW, argmax + oh * OW)

cdef inline void unpool2x2_plane(const real* dy, const int* argmax, Py_ssize_t OH, Py_ssize_t OW,
                                 real* dx, Py_ssize_t H, Py_ssize_t W) noexcept nogil:
    """dx of one (H, W) plane from its (OH, OW) dy and argmax, 2x2 windows of stride 2, no padding:
    every element written (rows no window covers, in floor mode, are zero)."""
    cdef Py_ssize_t oh
    cdef real* second
    for oh in range(OH):
        second = dx + (2 * oh + 1) * W if 2 * oh + 1 < H else NULL
        if real is float:
            unpool2x2_row_float(dy + oh * OW, argmax + oh * OW, W, OW, 2 * oh * W, dx + 2 * oh * W, second)
        else:
            unpool2x2_row_double(dy + oh * OW, argmax + oh * OW, W, OW, 2 * oh * W, dx + 2 * oh * W, second)
    if 2 * OH < H:
        memset(dx + 2 * OH * W, 0, (H - 2 * OH) * W * sizeof(real))


def max_pool_forward(const real[:, :, :, ::1] x, int kh, int kw, int sh, int sw, int ph, int pw,
                     real[:, :, :, ::1] y, int[:, :, :, ::1] argmax, bint parallel=False, bint vgg=False):
    """y[n, c, oh, ow] = max of x[n, c] over window (oh, ow); argmax its flat index in the plane.

    x (N, C, H, W); y and argmax (N, C, OH, OW), OH and OW chosen by the caller.
    Every window must hold at least one input pixel. vgg=True: the windows are 2x2, stride 2, no padding.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t plane, n, c, oh, ow, h, w, hs, he, ws, we, best_index
    cdef real best, v
    with nogil:
        for plane in prange(N * C, schedule="dynamic", use_threads_if=parallel):
            n = plane // C
            c = plane % C
            if vgg:
                pool2x2_plane(&x[n, c, 0, 0], H, W, &y[n, c, 0, 0], &argmax[n, c, 0, 0], OH, OW)
                continue
            for oh in range(OH):
                hs = oh * sh - ph
                he = min(hs + kh, H)
                hs = max(hs, 0)
                for ow in range(OW):
                    ws = ow * sw - pw
                    we = min(ws + kw, W)
                    ws = max(ws, 0)
                    # The window is never empty: its first pixel starts the search.
                    best_index = hs * W + ws
                    best = x[n, c, hs, ws]
                    for h in range(hs, he):
                        for w in range(ws, we):
                            v = x[n, c, h, w]
                            if v > best or v != v:
                                best = v
                                best_index = h * W + w
                    y[n, c, oh, ow] = best
                    argmax[n, c, oh, ow] = <int>best_index


def max_pool_backward(const real[:, :, :, ::1] dy, const int[:, :, :, ::1] argmax,
                      real[:, :, :, ::1] dx, bint parallel=False, bint vgg=False):
    """Overwrite dx (N, C, H, W) with dL/dx: each dy[n, c, oh, ow] lands on x[n, c].flat[argmax].
    vgg=True: the windows were 2x2, stride 2, no padding (argmax inside each), which never overlap."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t plane, n, c, oh, ow
    cdef real* dst
    with nogil:
        for plane in prange(N * C, schedule="dynamic", use_threads_if=parallel):
            n = plane // C
            c = plane % C
            dst = &dx[n, c, 0, 0]
            if vgg:
                unpool2x2_plane(&dy[n, c, 0, 0], &argmax[n, c, 0, 0], OH, OW, dst, H, W)
                continue
            memset(dst, 0, H * W * sizeof(real))
            for oh in range(OH):
                for ow in range(OW):
                    dst[argmax[n, c, oh, ow]] += dy[n, c, oh, ow]
