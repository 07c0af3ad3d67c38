"""im2col / col2im: the copy that turns a convolution into one matrix product.

For x (N, C, H, W), a kh x kw kernel, stride (sh, sw) and zero padding (ph, pw):

    cols[(c*kh + i)*kw + j, (n*OH + oh)*OW + ow] = xpad[n, c, oh*sh + i, ow*sw + j]
    cols: (C*kh*kw, N*OH*OW),  OH = (H + 2*ph - kh) // sh + 1,  OW = (W + 2*pw - kw) // sw + 1

so a convolution with weights W (F, C, kh, kw) and bias b is one GEMM for the whole batch, and
its gradients two more, with W2 = W.reshape(F, C*kh*kw) and Y, dY = y, dL/dy as (F, N*OH*OW):

    forward    Y = W2 @ cols + b
    backward   dW2 = dY @ cols^T,  db = dY summed over its columns,  dcols = W2^T @ dY,  dx = col2im(dcols)

col2im is im2col's adjoint (transpose): it adds every column entry back onto the input pixel it
was copied from, which is how dL/dcols becomes dL/dx.

A layer too large for one cols buffer runs in chunks of output rows: `rows` = (g0, g1) selects
the rows g = n*OH + oh in [g0, g1), whose columns are (g - g0)*OW + ow, and col2im then adds the
chunk's share into dx (neighbouring chunks reach the same input rows). The CPU kernels take any
range; the GPU kernels whole images (`row_granule`).

NumPy arrays go to the Cython kernels (minidet/_ext/im2col.pyx), CuPy arrays to the
RawKernels in minidet/ops/cuda/im2col.cu; `im2col_reference` / `col2im_reference` are
the same maps in plain NumPy, for reading and for checking on small inputs.
"""
import numpy as np

from minidet._ext import im2col as _cpu
from minidet.backend import get_array_module
from minidet.ops.cuda import kernel, launch, scalar_name

# Elements of cols from which the CPU kernels split their work over OpenMP's threads (about 20 ms
# of copying on one core): shorter calls lose more waiting for a second core on a busy machine
# than they gain (docs/PERFORMANCE.md, "Threads").
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


def row_granule(xp, rows_per_image):
    """The output rows a chunk must be a multiple of: any on the CPU, whole images on the GPU."""
    return 1 if xp is np else int(rows_per_image)


def _rows(rows, n, oh, xp):
    """(g0, g1) of `rows` (default: all N*OH), checked; whole images unless the kernels are the CPU's."""
    g0, g1 = (0, n * oh) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= g0 < g1 <= n * oh:
        raise ValueError(f"rows must be a range of output rows inside [0, {n * oh}), got {rows!r}")
    granule = row_granule(xp, oh)
    if g0 % granule or g1 % granule:
        raise ValueError(f"rows {rows!r} must cover whole images ({oh} rows each) on the GPU")
    return g0, g1


def im2col(x, kernel_size, stride=1, padding=0, out=None, rows=None):
    """cols (C*kh*kw, (g1 - g0)*OW) of x (N, C, H, W), of the output rows rows = (g0, g1)
    (default: all); written into `out` when given (a reused buffer)."""
    xp = get_array_module(x)
    _check_float(x)
    x = xp.ascontiguousarray(x)
    geometry, (oh, ow), (k, _) = _geometry(x.shape, kernel_size, stride, padding)
    g0, g1 = _rows(rows, x.shape[0], oh, xp)
    cols_shape = (k, (g1 - g0) * ow)
    if out is None:
        out = xp.empty(cols_shape, dtype=x.dtype)
    elif out.shape != cols_shape or out.dtype != x.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {cols_shape} {x.dtype} array")
    if xp is np:
        _cpu.im2col(x, *geometry, out, g0, out.size >= PARALLEL_MIN_SIZE)
    else:
        _im2col_gpu(x[g0 // oh:g1 // oh], geometry, (oh, ow), out)      # whole images on the GPU
    return out


def col2im(cols, x_shape, kernel_size, stride=1, padding=0, out=None, rows=None):
    """dx (N, C, H, W) = im2col's adjoint applied to cols (C*kh*kw, (g1 - g0)*OW).

    dx[n, c, ih, iw] = sum of the cols entries that im2col copied from x[n, c, ih, iw].
    Without `rows`: all output rows, written into `out` when given. With rows = (g0, g1): the
    share of those rows is added into `out`, which is then required.
    """
    xp = get_array_module(cols)
    _check_float(cols)
    cols = xp.ascontiguousarray(cols)
    x_shape = tuple(int(d) for d in x_shape)
    geometry, (oh, ow), (k, _) = _geometry(x_shape, kernel_size, stride, padding)
    g0, g1 = _rows(rows, x_shape[0], oh, xp)
    if cols.shape != (k, (g1 - g0) * ow):
        raise ValueError(f"cols must be {(k, (g1 - g0) * ow)} for x {x_shape} and rows {rows!r}, got {cols.shape}")
    if rows is not None and out is None:
        raise ValueError("col2im with rows adds into out: give out")
    if out is None:
        out = xp.empty(x_shape, dtype=cols.dtype)
    elif tuple(out.shape) != x_shape or out.dtype != cols.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {x_shape} {cols.dtype} array")
    if xp is np:
        _cpu.col2im(cols, *geometry, out, g0, rows is not None, cols.size >= PARALLEL_MIN_SIZE)
        return out
    n0, n1 = g0 // oh, g1 // oh
    target = out[n0:n1] if rows is None else xp.empty((n1 - n0,) + x_shape[1:], dtype=cols.dtype)
    _col2im_gpu(cols, target.shape, geometry, (oh, ow), target)
    if rows is not None:
        out[n0:n1] += target
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
