"""How many threads numpy's BLAS may use for one matrix product.

The layers wrap their GEMMs in `blas_threads(flops, xp)`: small products run on the calling
thread, large ones keep numpy's BLAS threads. A batch of small products (a Winograd layer's 16 or
36) goes through `batched_matmul`, which shares the batch out between the BLAS threads' count of
Python threads, each product on one BLAS thread, when the batch as a whole is large work.
"""
import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# A GEMM runs on one BLAS thread below this many flops (for a convolution 2 * F * C*kh*kw *
# N*OH*OW; 1 GFLOP is 15-20 ms of one core): on a busy machine a short call split over two
# threads waits longer for the second than it gains (docs/PERFORMANCE.md, "Threads").
BLAS_PARALLEL_MIN_FLOPS = 1e9

_blas_pools = None
_workers = None


def blas_threads(flops, xp=np):
    """A context in which numpy's BLAS calls run on the calling thread only, if flops is
    below BLAS_PARALLEL_MIN_FLOPS (no change for larger work, for CuPy, or without
    threadpoolctl, which finds numpy's BLAS and sets its thread count)."""
    if xp is not np or flops >= BLAS_PARALLEL_MIN_FLOPS:
        return contextlib.nullcontext()
    pools = _blas()
    return pools.limit(limits=1) if pools else contextlib.nullcontext()


def batched_matmul(a, b, out):
    """out[k] = a[k] @ b[k] for NumPy arrays a (B, M, K), b (B, K, N), out (B, M, N), as np.matmul.

    Each product runs on one BLAS thread. When the B products together reach
    BLAS_PARALLEL_MIN_FLOPS they are shared out, in contiguous runs of k, between as many Python
    threads as numpy's BLAS would use (matmul releases the GIL): products this small are split badly
    by BLAS itself, and one at a time they would leave the other cores idle. Every out[k] is the
    same single-threaded product either way, so the result does not depend on the thread count.
    """
    batch = a.shape[0]
    flops = 2 * batch * a.shape[1] * a.shape[2] * b.shape[2]
    workers = min(_blas_thread_count(), batch) if flops >= BLAS_PARALLEL_MIN_FLOPS else 1
    with blas_threads(0):
        if workers == 1:
            return np.matmul(a, b, out=out)
        bounds = [batch * w // workers for w in range(workers + 1)]
        runs = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
        list(_pool().map(lambda run: np.matmul(a[run], b[run], out=out[run]), runs))
    return out


def _blas():
    global _blas_pools
    if _blas_pools is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas_pools = False
        else:
            _blas_pools = ThreadpoolController().select(user_api="blas")
    return _blas_pools


def _blas_thread_count():
    """The threads numpy's BLAS uses for a large product (its setting, e.g. OPENBLAS_NUM_THREADS)."""
    pools = _blas()
    return max([1] + [int(p["num_threads"]) for p in pools.info()]) if pools else 1


def _pool():
    global _workers
    if _workers is None:
        _workers = ThreadPoolExecutor(max_workers=max(2, _blas_thread_count()), thread_name_prefix="minidet-gemm")
    return _workers


def kernel_threads():
    """How many threads the Cython kernels' parallel loops would use now (1 without OpenMP)."""
    from minidet._ext.im2col import openmp_threads

    return openmp_threads()
