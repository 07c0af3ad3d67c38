"""Max pooling with the argmax kept for the backward.

Window (oh, ow) of each (H, W) plane covers rows [oh*sh - ph, oh*sh - ph + kh) and
columns [ow*sw - pw, ow*sw - pw + kw), clipped to the input (the padding never wins):

    y[n, c, oh, ow] = max over the window of x[n, c],   argmax[n, c, oh, ow] = h*W + w of that max
    dx[n, c].flat[argmax[n, c, oh, ow]] += dy[n, c, oh, ow]

Ties go to the first maximum in row-major order and a NaN wins, as in torch.
NumPy arrays go to minidet/_ext/maxpool.pyx, CuPy arrays to minidet/ops/cuda/maxpool.cu;
`max_pool_reference` is the forward in plain NumPy, for reading and checking.
"""
import numpy as np

from minidet._ext import maxpool as _cpu
from minidet.backend import get_array_module
from minidet.ops.cuda import kernel, launch, scalar_name
from minidet.ops.im2col import pair

# Input elements from which the CPU kernels split their work over OpenMP's threads: about
# 20 ms of work on one core, below which waiting for a second thread costs more than it saves
# (docs/PERFORMANCE.md, "Threads").
FORWARD_PARALLEL_MIN_SIZE = 1 << 22
BACKWARD_PARALLEL_MIN_SIZE = 1 << 25
# VGG16's 2x2, stride-2 windows take a vectorised loop of under 1 ns an input element (6 ns in the
# general loop): 20 ms of it from 2^25 elements, as the backward.
FORWARD_2X2_PARALLEL_MIN_SIZE = 1 << 25


def _vgg_windows(kernel_size, stride, padding):
    """2x2 windows, stride 2, no padding: VGG16's, which the CPU kernels run by their own loops."""
    return (pair(kernel_size) == (2, 2) and pair(kernel_size if stride is None else stride) == (2, 2)
            and pair(padding) == (0, 0))


def pooled_size(size, kernel_size, stride, padding=0, ceil_mode=False):
    """Number of pooling windows along one axis.

    floor mode: (size + 2p - k) // s + 1.
    ceil mode (Caffe's rounding): ceil((size + 2p - k) / s) + 1, less one when the last
    window would start beyond the input and its left padding, i.e. (out - 1)*s >= size + p,
    as torch does. Caffe makes that correction only when p > 0; without padding the two differ
    only for a stride larger than the window (k = 1, s = 3 on 5 inputs: torch and minidet 2,
    Caffe 3), never for k >= s, where (out - 1)*s < size - k + s <= size. So VGG16's 2x2
    stride-2 pools come out as Caffe's: 600 -> 300 -> 150 -> 75 -> 38.
    """
    span = size + 2 * padding - kernel_size
    if span < 0:
        raise ValueError(f"a pooling window of {kernel_size} does not fit an input of {size} "
                         f"padded by {padding}")
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _geometry(x_shape, kernel_size, stride, padding, ceil_mode):
    (kh, kw) = pair(kernel_size, "kernel_size")
    (sh, sw) = pair(kernel_size if stride is None else stride, "stride")
    (ph, pw) = pair(padding, "padding")
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError("kernel size and stride must be >= 1 and padding >= 0, got "
                         f"{kernel_size!r}, {stride!r}, {padding!r}")
    # Larger padding would leave windows with no input pixel (torch refuses them too).
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"padding {padding!r} must be at most half the kernel size {kernel_size!r}")
    h, w = x_shape[2:]
    oh = pooled_size(h, kh, sh, ph, ceil_mode)
    ow = pooled_size(w, kw, sw, pw, ceil_mode)
    return (kh, kw, sh, sw, ph, pw), (oh, ow)


def _check_float(x):
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"max pooling takes float32 or float64 arrays, got {x.dtype}")


def max_pool_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """(y (N, C, OH, OW) x.dtype, argmax (N, C, OH, OW) int32) of x (N, C, H, W).

    stride defaults to kernel_size; OH and OW from `pooled_size`.
    """
    xp = get_array_module(x)
    _check_float(x)
    if x.ndim != 4:
        raise ValueError(f"max pooling takes (N, C, H, W) arrays, got shape {x.shape}")
    x = xp.ascontiguousarray(x)
    geometry, (oh, ow) = _geometry(x.shape, kernel_size, stride, padding, ceil_mode)
    n, c, h, w = x.shape
    y = xp.empty((n, c, oh, ow), dtype=x.dtype)
    argmax = xp.empty((n, c, oh, ow), dtype=np.int32)
    if xp is np:
        vgg = _vgg_windows(kernel_size, stride, padding)
        threshold = FORWARD_2X2_PARALLEL_MIN_SIZE if vgg else FORWARD_PARALLEL_MIN_SIZE
        _cpu.max_pool_forward(x, *geometry, y, argmax, x.size >= threshold, vgg)
    else:
        i32 = np.int32
        launch(kernel("maxpool.cu", "max_pool_forward", scalar_name(x.dtype)), y.size,
               (x, i32(n), i32(c), i32(h), i32(w), *(i32(v) for v in geometry),
                i32(oh), i32(ow), np.int64(y.size), y, argmax))
    return y, argmax


def max_pool_backward(dy, argmax, x_shape, kernel_size, stride=None, padding=0):
    """dx (N, C, H, W): every dy[n, c, oh, ow] added onto x[n, c].flat[argmax[n, c, oh, ow]].

    argmax must come from max_pool_forward with the same windows: the GPU gathers each input pixel
    from the windows that can contain it (instead of scattering with atomics), and the CPU writes
    2x2, stride-2 windows, which never overlap, whole (instead of clearing dx and adding).
    """
    xp = get_array_module(dy, argmax)
    _check_float(dy)
    dy = xp.ascontiguousarray(dy)
    argmax = xp.ascontiguousarray(argmax, dtype=np.int32)
    if dy.shape != argmax.shape:
        raise ValueError(f"dy {dy.shape} and argmax {argmax.shape} must have the same shape")
    n, c, h, w = (int(v) for v in x_shape)
    dx = xp.empty((n, c, h, w), dtype=dy.dtype)
    if xp is np:
        _cpu.max_pool_backward(dy, argmax, dx, dx.size >= BACKWARD_PARALLEL_MIN_SIZE,
                               _vgg_windows(kernel_size, stride, padding))
    else:
        (kh, kw), (ph, pw) = pair(kernel_size), pair(padding)
        (sh, sw) = pair(kernel_size if stride is None else stride)
        oh, ow = dy.shape[2:]
        i32 = np.int32
        launch(kernel("maxpool.cu", "max_pool_backward", scalar_name(dy.dtype)), dx.size,
               (dy, argmax, i32(n), i32(c), i32(h), i32(w), i32(kh), i32(kw), i32(sh), i32(sw),
                i32(ph), i32(pw), i32(oh), i32(ow), np.int64(dx.size), dx))
    return dx


def max_pool_reference(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """The forward in plain NumPy: pad with -inf (beyond the right edge too, for ceil mode)
    and compare the kh*kw strided taps; a later tap wins only if strictly larger (or NaN)."""
    (kh, kw, sh, sw, ph, pw), (oh, ow) = _geometry(x.shape, kernel_size, stride, padding, ceil_mode)
    n, c, h, w = x.shape
    rows, cols = (oh - 1) * sh + kh, (ow - 1) * sw + kw
    xpad = np.full((n, c, rows, cols), -np.inf, dtype=x.dtype)
    xpad[:, :, ph:ph + h, pw:pw + w] = x[:, :, :rows - ph, :cols - pw]
    index = np.full((rows, cols), -1, dtype=np.int64)
    index[ph:ph + h, pw:pw + w] = np.arange(h * w).reshape(h, w)[:rows - ph, :cols - pw]
    y = np.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
    argmax = np.full((n, c, oh, ow), -1, dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            tap = xpad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
            tap_index = index[i:i + sh * oh:sh, j:j + sw * ow:sw]
            wins = ((tap > y) | np.isnan(tap)) & (tap_index >= 0) | (argmax < 0) & (tap_index >= 0)
            y = np.where(wins, tap, y)
            argmax = np.where(wins, tap_index, argmax)
    return y, argmax.astype(np.int32)
