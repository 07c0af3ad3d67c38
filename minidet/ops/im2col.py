"""im2col / col2im: the copy that turns a convolution into one matrix product.

For x (N, C, H, W), a kh x kw kernel, stride (sh, sw) and zero padding (ph, pw):

    cols[(c*kh + i)*kw + j, (n*OH + oh)*OW + ow] = xpad[n, c, oh*sh + i, ow*sw + j]
    cols: (C*kh*kw, N*OH*OW),  OH = (H + 2*ph - kh) // sh + 1,  OW = (W + 2*pw - kw) // sw + 1

so a convolution with weights W (F, C, kh, kw) is `W.reshape(F, -1) @ cols`, (F, N*OH*OW),
one GEMM for the whole batch. col2im is its adjoint (transpose): it adds every column
entry back onto the input pixel it was copied from, which is how dL/dcols becomes dL/dx.

NumPy arrays go to the Cython kernels (minidet/_ext/im2col.pyx), CuPy arrays to the
RawKernels in minidet/ops/cuda/im2col.cu; `im2col_reference` / `col2im_reference` are
the same maps in plain NumPy, for reading and for checking on small inputs.
"""
import numpy as np

from minidet._ext import im2col as _cpu
from minidet.backend import get_array_module
from minidet.ops.cuda import kernel, launch, scalar_name

# The CPU kernels split their work over OpenMP's threads only from this many elements of
# cols (128 MiB of float32, 20-25 ms of copying on one core); below it they run on the
# calling thread. A parallel call is a fork and a join, and on a busy machine (2 cores,
# load average 5-10 of other work) the second thread waits tens of ms for a core: a
# 1 ms kernel took 47 ms on 2 threads. Shorter calls cannot win that back, and the copies
# of a narrow network are many and short: every im2col/col2im of FastRCNN.small's train
# step moves 2-13 M elements (4-10 ms), and with the copies and poolings on 2 threads (its
# GEMMs on one) the step took 1.7 s instead of 0.4-0.6 s with everything on one thread
# (load average 6-7). On an idle machine 2 threads halve a copy, which below the
# threshold saves at most ~10 ms, next to GEMMs several times longer.
PARALLEL_MIN_SIZE = 1 << 25


def pair(value, name="value"):
    """(a, b) from an int or a pair of ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def conv_output_size(size, kernel_size, stride, padding):
    """(size + 2*padding - kernel_size) // stride + 1, the number of window positions along one axis."""
    span = size + 2 * padding - kernel_size
    if span < 0:
        raise ValueError(
            f"a kernel of {kernel_size} does not fit an input of {size} padded by {padding}")
    return span // stride + 1


def _geometry(x_shape, kernel_size, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError("kernel size and stride must be >= 1 and padding >= 0, got "
                         f"{kernel_size!r}, {stride!r}, {padding!r}")
    n, c, h, w = x_shape
    oh = conv_output_size(h, kh, sh, ph)
    ow = conv_output_size(w, kw, sw, pw)
    return (kh, kw, sh, sw, ph, pw), (oh, ow), (c * kh * kw, n * oh * ow)


def _check_float(x):
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"im2col/col2im take float32 or float64 arrays, got {x.dtype}")


def im2col(x, kernel_size, stride=1, padding=0, out=None):
    """cols (C*kh*kw, N*OH*OW) of x (N, C, H, W); written into `out` when given (reused buffer)."""
    xp = get_array_module(x)
    _check_float(x)
    x = xp.ascontiguousarray(x)
    geometry, (oh, ow), cols_shape = _geometry(x.shape, kernel_size, stride, padding)
    if out is None:
        out = xp.empty(cols_shape, dtype=x.dtype)
    elif out.shape != cols_shape or out.dtype != x.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {cols_shape} {x.dtype} array")
    if xp is np:
        _cpu.im2col(x, *geometry, out, out.size >= PARALLEL_MIN_SIZE)
    else:
        _im2col_gpu(x, geometry, (oh, ow), out)
    return out


def col2im(cols, x_shape, kernel_size, stride=1, padding=0, out=None):
    """dx (N, C, H, W) = im2col's adjoint applied to cols (C*kh*kw, N*OH*OW).

    dx[n, c, ih, iw] = sum of the cols entries that im2col copied from x[n, c, ih, iw].
    Written into `out` when given.
    """
    xp = get_array_module(cols)
    _check_float(cols)
    cols = xp.ascontiguousarray(cols)
    geometry, (oh, ow), cols_shape = _geometry(tuple(x_shape), kernel_size, stride, padding)
    if cols.shape != cols_shape:
        raise ValueError(f"cols must be {cols_shape} for x {tuple(x_shape)}, got {cols.shape}")
    if out is None:
        out = xp.empty(tuple(x_shape), dtype=cols.dtype)
    elif tuple(out.shape) != tuple(x_shape) or out.dtype != cols.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {tuple(x_shape)} {cols.dtype} array")
    if xp is np:
        _cpu.col2im(cols, *geometry, out, cols.size >= PARALLEL_MIN_SIZE)
    else:
        _col2im_gpu(cols, tuple(x_shape), geometry, (oh, ow), out)
    return out


# --- GPU: the RawKernels of minidet/ops/cuda/im2col.cu, whose index arithmetic is 32-bit -------

INT32_MAX = 2**31 - 1


def _gpu_sizes(x_shape, geometry, output_hw):
    """The kernels' int arguments, once their thread counts (which bound every 32-bit index) fit."""
    n, c, h, w = (int(v) for v in x_shape)
    (oh, ow) = output_hw
    if max(c * n * oh * ow, n * c * h * w) > INT32_MAX:
        raise ValueError(f"im2col on the GPU indexes with 32-bit integers: input {tuple(x_shape)} with "
                         f"{oh}x{ow} windows is too large; split the batch")
    i32 = np.int32
    return tuple(i32(v) for v in (n, c, h, w, *geometry, oh, ow))


def _im2col_gpu(x, geometry, output_hw, out):
    n, c = x.shape[:2]
    threads = c * n * output_hw[0] * output_hw[1]                 # one per (c, n, oh, ow)
    launch(kernel("im2col.cu", "im2col", scalar_name(x.dtype)), threads,
           (x, *_gpu_sizes(x.shape, geometry, output_hw), np.int32(threads), out))


def _col2im_gpu(cols, x_shape, geometry, output_hw, out):
    threads = int(np.prod(x_shape))                               # one per input pixel
    launch(kernel("im2col.cu", "col2im", scalar_name(cols.dtype)), threads,
           (cols, *_gpu_sizes(x_shape, geometry, output_hw), np.int32(threads), out))


def im2col_reference(x, kernel_size, stride=1, padding=0):
    """im2col in plain NumPy: one strided slice of the padded input per kernel tap (i, j)."""
    (kh, kw, sh, sw, ph, pw), (oh, ow), cols_shape = _geometry(x.shape, kernel_size, stride, padding)
    n, c = x.shape[:2]
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            taps = xpad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]      # (N, C, OH, OW)
            cols[:, i, j] = taps.transpose(1, 0, 2, 3)
    return cols.reshape(cols_shape)


def col2im_reference(cols, x_shape, kernel_size, stride=1, padding=0):
    """col2im in plain NumPy: each tap's slice is added back where im2col_reference took it."""
    (kh, kw, sh, sw, ph, pw), (oh, ow), _ = _geometry(tuple(x_shape), kernel_size, stride, padding)
    n, c, h, w = x_shape
    taps = cols.reshape(c, kh, kw, n, oh, ow)
    dxpad = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxpad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += taps[:, i, j].transpose(1, 0, 2, 3)
    return dxpad[:, :, ph:ph + h, pw:pw + w]
