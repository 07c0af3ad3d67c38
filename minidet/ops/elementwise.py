"""The elementwise work of ReLU, a bias add and dropout, each as one pass over the data.

    relu(x)                 y = x * (x > 0)             NaN stays NaN, as in the CPU layer
    relu_backward(y, dy)    dx = dy * (y > 0)           y > 0 exactly where x > 0: no mask is kept
    bias_relu(x, b)         y = relu(x + b)             a convolution's bias and its ReLU together
    dropout(x, p, seed, k)  y = x * keep * scale        scale = 1 / (1 - p) in x's float type
    dropout_backward(dy, p, seed, k)   dx = dy * keep * scale, the same keep, recomputed

Dropout keeps element i of the k-th draw of a layer seeded `seed` when

    h = fmix32(fmix32(i ^ k0) + k1) >= threshold,    (k0, k1) = SeedSequence([seed, k]) words,
    threshold = round(p * 2^32)

with fmix32 MurmurHash3's finaliser on 32-bit words, i the index in C order. The decision is a
function of (seed, k, i) alone, so masks are the same on the CPU and on every GPU model (a
generator's stream on the GPU is not: CuPy sizes its state by the number of multiprocessors), a
resumed run draws exactly the masks of an uninterrupted one, and the backward recomputes the mask
instead of keeping it. Element counts must stay below 2^32.

On the GPU each function is one cupy.ElementwiseKernel (no temporary arrays); on the CPU NumPy ufuncs
write into `out` (a comparison makes a boolean temporary of a quarter of x's float32 size). Both
devices compute the same roundings; float32 kernels on the GPU flush subnormals (-ftz=true).
"""
import functools

import numpy as np

from minidet.backend import get_array_module

_FMIX32 = """
__device__ __forceinline__ unsigned int minidet_fmix32(unsigned int h) {
    h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
    return h;
}
"""


# The GPU kernels, as cupy.ElementwiseKernel's (in_params, out_params, operation); all share _FMIX32.
GPU_KERNELS = {
    "relu": ("T x", "T y", "y = x * (T)(x > (T)0)"),
    "relu_backward": ("T y, T dy", "T dx", "dx = dy * (T)(y > (T)0)"),
    "bias_relu": ("T x, T b", "T y", "const T s = x + b; y = s * (T)(s > (T)0)"),
    "dropout": ("T x, uint32 k0, uint32 k1, uint32 threshold, T scale", "T y",
                "const unsigned int h = minidet_fmix32(minidet_fmix32((unsigned int)i ^ k0) + k1);"
                "y = x * (h >= threshold ? scale : (T)0)"),
}
PREAMBLE = _FMIX32


@functools.lru_cache(maxsize=None)
def _gpu_kernel(name):
    """The ElementwiseKernel `name`, made once (CuPy compiles it per dtype on first use)."""
    from minidet.backend import require_cupy

    in_params, out_params, operation = GPU_KERNELS[name]
    return require_cupy().ElementwiseKernel(in_params, out_params, operation, f"minidet_{name}", preamble=PREAMBLE)


def _out(xp, like, out):
    return xp.empty_like(like) if out is None else out


def relu(x, out=None):
    """y = x * (x > 0), same shape and dtype as x; `out` may be x itself."""
    xp = get_array_module(x)
    if xp is not np:
        return _gpu_kernel("relu")(x, _out(xp, x, out))
    return np.multiply(x, x > 0, out=_out(np, x, out))


def relu_backward(y, dy, out=None):
    """dx = dy * (y > 0) from ReLU's output y; `out` may be dy itself."""
    xp = get_array_module(y, dy)
    if xp is not np:
        return _gpu_kernel("relu_backward")(y, dy, _out(xp, dy, out))
    return np.multiply(dy, y > 0, out=_out(np, dy, out))


def bias_relu(x, b, out=None):
    """y = relu(x + b), b broadcast against x (a (F, 1, 1) bias over (N, F, H, W), say)."""
    xp = get_array_module(x, b)
    if xp is not np:
        return _gpu_kernel("bias_relu")(x, b.astype(x.dtype, copy=False), _out(xp, x, out))
    out = np.add(x, b.astype(x.dtype, copy=False), out=_out(np, x, out))
    return np.multiply(out, out > 0, out=out)


def dropout_keys(p, seed, draw):
    """(k0, k1, threshold) as numpy uint32 for draw `draw` of a layer seeded `seed`, dropping with probability p."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    k0, k1 = np.random.SeedSequence([int(seed), int(draw)]).generate_state(2, dtype=np.uint32)
    return k0, k1, np.uint32(min(round(p * 2.0**32), 2**32 - 1))


def dropout_keep(shape, p, seed, draw):
    """The keep decisions (shape,) bool of the formula above, in NumPy: the reference of both devices."""
    k0, k1, threshold = dropout_keys(p, seed, draw)
    count = int(np.prod(shape))
    if count >= 2**32:
        raise ValueError(f"dropout indexes elements with 32-bit integers; {count} elements are too many")
    h = np.arange(count, dtype=np.uint32)
    h ^= k0
    _fmix32(h)
    h += k1
    _fmix32(h)
    return (h >= threshold).reshape(shape)


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser, in place on a uint32 array (products wrap modulo 2^32)."""
    h ^= h >> 16
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> 13
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> 16


def dropout(x, p, seed, draw, out=None):
    """y = x * keep / (1 - p) for draw `draw` of the layer seeded `seed`; x any shape, float."""
    return _dropout(x, p, seed, draw, out)


def dropout_backward(dy, p, seed, draw, out=None):
    """dx = dy * keep / (1 - p), with the keep of the forward of the same (seed, draw)."""
    return _dropout(dy, p, seed, draw, out)


def _dropout(x, p, seed, draw, out):
    xp = get_array_module(x)
    scale = x.dtype.type(1) / x.dtype.type(1 - p)
    if xp is not np:
        k0, k1, threshold = dropout_keys(p, seed, draw)
        if x.size >= 2**32:
            raise ValueError(f"dropout indexes elements with 32-bit integers; {x.size} elements are too many")
        return _gpu_kernel("dropout")(x, k0, k1, threshold, scale, _out(xp, x, out))
    factor = np.where(dropout_keep(x.shape, p, seed, draw), scale, x.dtype.type(0))
    return np.multiply(x, factor, out=_out(np, x, out))
