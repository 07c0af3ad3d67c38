"""How many threads numpy's BLAS may use for one matrix product.

The layers wrap their GEMMs in `blas_threads(flops, xp)`: small products run on the calling
thread, large ones keep numpy's BLAS threads.
"""
import contextlib

import numpy as np

# A GEMM runs on one BLAS thread below this many flops (for a convolution 2 * F * C*kh*kw *
# N*OH*OW; 1 GFLOP is 15-20 ms of one core): on a busy machine a short call split over two
# threads waits longer for the second than it gains (docs/PERFORMANCE.md, "Threads").
BLAS_PARALLEL_MIN_FLOPS = 1e9

_blas_pools = None


def blas_threads(flops, xp=np):
    """A context in which numpy's BLAS calls run on the calling thread only, if flops is
    below BLAS_PARALLEL_MIN_FLOPS (no change for larger work, for CuPy, or without
    threadpoolctl, which finds numpy's BLAS and sets its thread count)."""
    global _blas_pools
    if xp is not np or flops >= BLAS_PARALLEL_MIN_FLOPS:
        return contextlib.nullcontext()
    if _blas_pools is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas_pools = False
        else:
            _blas_pools = ThreadpoolController().select(user_api="blas")
    return _blas_pools.limit(limits=1) if _blas_pools else contextlib.nullcontext()


def kernel_threads():
    """How many threads the Cython kernels' parallel loops would use now (1 without OpenMP)."""
    from minidet._ext.im2col import openmp_threads

    return openmp_threads()
