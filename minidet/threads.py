"""How many threads numpy's BLAS may use for one matrix product.

The layers wrap their GEMMs in `blas_threads(flops, xp)`: small products run on the calling
thread, large ones keep numpy's BLAS threads.
"""
import contextlib

import numpy as np

# A GEMM runs on one BLAS thread below this many flops (for a convolution 2 * F * C*kh*kw *
# N*OH*OW; 1 GFLOP is 15-20 ms of one core for VGG16's shapes, more for thin ones).
# The reason is that of minidet.ops.im2col.PARALLEL_MIN_SIZE: on a busy machine a call
# split over 2 threads waits tens of ms for the second one, more than a short GEMM can
# win back. FastRCNN.small's convolutions are all ~0.2 GFLOP; with its copies on one
# thread but these GEMMs on numpy's 2 BLAS threads, its train step still took 3.2-3.7 s
# against 0.4-0.6 s on one thread (2 cores, load average 6-7). VGG16's (2.6-11 GFLOP at
# 224x320, and more at 600x1000) keep numpy's threads: on an idle machine the second
# nearly halves them, and on a busy one it costs them less than 2x.
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
