"""A CPU stand-in for the part of CuPy's API that minidet and its tests use.

With tests/cupy_standin on PYTHONPATH, `import cupy` finds this package, minidet.backend sees one
GPU, and minidet takes its GPU code paths: arrays are cupy arrays and the CUDA kernels of
minidet/ops/cuda are compiled as C++ with g++ and run on the CPU (host_cuda.h). So CI, which has
no GPU, runs tests/gpu on every change (tests/test_gpu_paths_on_standin.py).

What it checks, as CuPy on a GPU would:
- every kernel argument against the kernel's C signature as CuPy marshals it: pointers get
  C-contiguous cupy arrays of the pointed-to type, by-value parameters get scalars of exactly the
  parameter's type (a Python int is a 64-bit integer, a Python float a double); the argument count;
  the grid and block sizes against CUDA's limits (_raw_kernel.py); ElementwiseKernel's parameter
  types, broadcasting and outputs (_elementwise.py);
- what the kernels compute, which tests/gpu compares with the CPU's: their index arithmetic, edge
  cases and the phases between __syncthreads barriers, with the GPU's own arithmetic where it is not
  the CPU's (host_cuda.h): float kernels flush subnormals as CuPy's -ftz=true makes them, float
  atomicAdd flushes always, min/max of floats are fminf/fmaxf (a NaN operand is dropped);
- that new memory is not read before it is written: cupy.empty and friends hold NaN or 0xFF bytes,
  as a block reused from CuPy's memory pool holds an earlier array's values;
- with CUPY_STANDIN_BUILD (comma-separated): "fma" contracts multiply-adds as NVRTC does by
  default, "shuffle" runs blocks and threads in a new pseudo-random order at every launch (a race or
  a missing atomic changes the result), "sanitize" builds the kernels with AddressSanitizer and
  UBSan (an out-of-bounds access or a signed overflow stops the process);
- that numpy and cupy arrays are not mixed: a numpy array among cupy operands, or a cupy array
  read by numpy, raises; copies between host and device are explicit calls that a test can
  intercept, and ndarray.set records whether its source was pinned (asynchronous) (_array.py).

What it cannot check:
- real GPU timing and memory: arrays live in host memory, with no device limit and no pool;
- races that need true concurrency: threads run one at a time on one OS thread, so a read-modify-
  write that two threads interleave on a GPU cannot tear here (the shuffle build shows only those
  races whose outcome depends on the order of whole threads);
- warp semantics: no warps, no shuffles or votes (a kernel using them does not compile here);
- flush-to-zero in CuPy's own elementwise functions and reductions that the stand-in forwards to
  NumPy (cupy.add, x * y, x.sum()): those keep subnormals here and flush them on a GPU;
- NVRTC's compiler itself (tests/test_cuda_sources.py compiles each .cu with CuPy's NVRTC path),
  TF32 and cuBLAS's summation order, and CuPy's own random streams (cupy.random is numpy's).
"""
import numpy as _numpy

from . import cuda, random
from ._array import array, asarray, ascontiguousarray, asnumpy, empty, empty_like, ndarray
from ._array import apply as _apply
from ._elementwise import ElementwiseKernel
from ._raw_kernel import RawKernel

__version__ = "0+standin"


def argsort(a, axis=-1, kind=None):
    """Indices that sort a along axis by a stable sort: CuPy sorts stably and accepts no other kind."""
    if kind not in (None, "stable"):
        raise ValueError(f"cupy stand-in: CuPy sorts stably only, not with kind={kind!r}")
    return _apply(_numpy.argsort, (a,), dict(axis=axis, kind="stable"))


def sort(a, axis=-1, kind=None):
    """A sorted copy of a, by a stable sort, as cupy.sort."""
    if kind not in (None, "stable"):
        raise ValueError(f"cupy stand-in: CuPy sorts stably only, not with kind={kind!r}")
    return _apply(_numpy.sort, (a,), dict(axis=axis, kind="stable"))


def __getattr__(name):
    """Every other name is numpy's: types and constants as they are, functions returning cupy arrays."""
    attribute = getattr(_numpy, name)
    if isinstance(attribute, type) or not callable(attribute):
        return attribute
    return lambda *args, **kwargs: _apply(attribute, args, kwargs)
