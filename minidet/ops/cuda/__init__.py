"""CUDA sources of minidet's GPU kernels, loaded as cupy.RawKernel.

Each `*.cu` file beside this one holds `extern "C" __global__` kernels. A kernel
is compiled the first time it is asked for and cached for the process (CuPy
also caches the compiled binary on disk), so no iteration pays for NVRTC.
"""
import functools
import os

from minidet.backend import require_cupy

_HERE = os.path.dirname(os.path.abspath(__file__))


def source(filename):
    with open(os.path.join(_HERE, filename)) as f:
        return f.read()


def compile_options(dtype_name=None):
    """The NVRTC options minidet gives CuPy for a kernel (CuPy adds its own: see tests/test_cuda_sources.py).

    With dtype_name ("float" or "double") the source is compiled with `-Dscalar_t=<type>` so that
    one source serves both precisions.
    """
    options = ("-std=c++14",)
    if dtype_name is not None:
        options += (f"-Dscalar_t={dtype_name}",)
    return options


@functools.lru_cache(maxsize=None)
def kernel(filename, name, dtype_name=None):
    """The kernel `name` of `filename`, compiled once with `compile_options(dtype_name)`."""
    cp = require_cupy()
    return cp.RawKernel(source(filename), name, options=compile_options(dtype_name))


def scalar_name(dtype):
    """'float' or 'double' for a float32 or float64 dtype."""
    import numpy as np

    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return "float"
    if dtype == np.float64:
        return "double"
    raise TypeError(f"GPU kernels take float32 or float64, got {dtype}")


def launch(kern, n, args, block=256):
    """Run `kern` with one thread per item for n items (n may be 0)."""
    if n <= 0:
        return
    kern(((n + block - 1) // block,), (block,), args)
