"""CUDA sources of minidet's GPU kernels, loaded as cupy.RawKernel.

Each `*.cu` file beside this one holds `extern "C" __global__` kernels; device code that several
of them share sits in a `*.cuh` file beside them, which a source names with `#include "x.cuh"`.
A kernel is compiled the first time it is asked for and cached for the process (CuPy also caches
the compiled binary on disk), so no iteration pays for NVRTC.
"""
import functools
import os
import re

from minidet.backend import require_cupy

_HERE = os.path.dirname(os.path.abspath(__file__))
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([\w.]+\.cuh)"[ \t]*$', re.MULTILINE)


def source(filename, _included=None):
    """The text of `filename` with each `#include "x.cuh"` of a file beside it replaced by that file's
    text (once per source): CuPy keys its on-disk cache by the source text, so a header that the
    compiler read from disk could change without the cached kernels being rebuilt."""
    included = set() if _included is None else _included
    with open(os.path.join(_HERE, filename)) as f:
        text = f.read()

    def inline(match):
        name = match.group(1)
        if name in included:
            return ""
        included.add(name)
        return source(name, included).rstrip("\n")

    return _INCLUDE.sub(inline, text)


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
