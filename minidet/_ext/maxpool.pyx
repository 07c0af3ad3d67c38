"""Max pooling on the CPU: forward with argmax, backward by scattering to the argmax.

The mathematics (windows, ties, NaN) is written in minidet/ops/maxpool.py; this file adds only
its CPU layout. Both kernels run with the GIL released, on the calling thread alone unless the caller
passes parallel=True (minidet/ops/maxpool.py decides, by size, and says why). In
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

def max_pool_forward(const real[:, :, :, ::1] x, int kh, int kw, int sh, int sw, int ph, int pw,
                     real[:, :, :, ::1] y, int[:, :, :, ::1] argmax, bint parallel=False):
    """y[n, c, oh, ow] = max of x[n, c] over window (oh, ow); argmax its flat index in the plane.

    x (N, C, H, W); y and argmax (N, C, OH, OW), OH and OW chosen by the caller.
    Every window must hold at least one input pixel.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t plane, n, c, oh, ow, h, w, hs, he, ws, we, best_index
    cdef real best, v
    with nogil:
        for plane in prange(N * C, schedule="dynamic", use_threads_if=parallel):
            n = plane // C
            c = plane % C
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
                      real[:, :, :, ::1] dx, bint parallel=False):
    """Overwrite dx (N, C, H, W) with dL/dx: each dy[n, c, oh, ow] lands on x[n, c].flat[argmax]."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t plane, n, c, oh, ow
    cdef real* dst
    with nogil:
        for plane in prange(N * C, schedule="dynamic", use_threads_if=parallel):
            n = plane // C
            c = plane % C
            dst = &dx[n, c, 0, 0]
            memset(dst, 0, H * W * sizeof(real))
            for oh in range(OH):
                for ow in range(OW):
                    dst[argmax[n, c, oh, ow]] += dy[n, c, oh, ow]
