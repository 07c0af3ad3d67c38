"""The NHWC layout of the CPU RoI kernels (minidet/_ext/roi_pool.pyx, minidet/_ext/roi_align.pyx): a
map copied so that one feature cell's C channels are contiguous, and a gradient copied back.

Both directions walk the map one row (n, h) at a time, a thread a row, and within a row channel after
channel: the NCHW side of a row is read or written W cells at a time, the NHWC side every C-th value.
"""
from cython.parallel cimport prange

ctypedef fused real:
    float
    double


cdef void move_channels(const real* x, real* out, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                        bint to_nhwc, bint use_threads) noexcept nogil:
    """out = x (N, C, H, W) as (N, H, W, C) when to_nhwc, else x (N, H, W, C) as out (N, C, H, W)."""
    cdef Py_ssize_t row, c, w
    cdef const real* src
    cdef real* dst
    for row in prange(N * H, schedule="static", use_threads_if=use_threads):   # row = n * H + h
        if to_nhwc:
            for c in range(C):
                src = x + (row // H * C + c) * H * W + row % H * W
                dst = out + row * W * C + c
                for w in range(W):
                    dst[w * C] = src[w]
        else:
            for c in range(C):
                src = x + row * W * C + c
                dst = out + (row // H * C + c) * H * W + row % H * W
                for w in range(W):
                    dst[w] = src[w * C]


def nchw_to_nhwc(const real[:, :, :, ::1] x, real[:, :, :, ::1] out, bint use_threads=True):
    """out[n, h, w, c] = x[n, c, h, w]; parallel over the rows (n, h) when use_threads."""
    if x.size:
        move_channels(&x[0, 0, 0, 0], &out[0, 0, 0, 0], x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                      True, use_threads)


def nhwc_to_nchw(const real[:, :, :, ::1] x, real[:, :, :, ::1] out, bint use_threads=False):
    """out[n, c, h, w] = x[n, h, w, c]; parallel over the rows (n, h) when use_threads."""
    if x.size:
        move_channels(&x[0, 0, 0, 0], &out[0, 0, 0, 0], x.shape[0], x.shape[3], x.shape[1], x.shape[2],
                      False, use_threads)
