"""How many threads numpy's BLAS may use for one matrix product.

The layers wrap their GEMMs in `blas_threads(flops, xp)`: small products run on the calling
thread, large ones keep numpy's BLAS threads. A batch of small products (a Winograd layer's 16 or
36) goes through `batched_matmul`, which shares the batch out between the BLAS threads' count of
Python threads, each product on one BLAS thread, when the batch as a whole is large work; the
Winograd transforms are shared out between the same threads (`share_out`).
"""
import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# A GEMM runs on one BLAS thread below this many flops (for a convolution 2 * F * C*kh*kw *
# N*OH*OW; 1 GFLOP is 15-20 ms of one core): on a busy machine a short call split over two
# threads waits longer for the second than it gains (docs/PERFORMANCE.md, "Threads").
BLAS_PARALLEL_MIN_FLOPS = 1e9
# A batch of small products is shared out between Python threads from this many flops in all: each
# thread runs single-threaded GEMMs, which do not spin while they wait for a core as BLAS's own
# threads do, so the batch gains from a second core from a few ms of work (docs/PERFORMANCE.md).
BATCH_PARALLEL_MIN_FLOPS = 2.5e8

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


def batched_matmul(a, b, out, accumulate=False):
    """out[k] = a[k] @ b[k] (accumulate: out[k] += a[k] @ b[k]) for NumPy arrays a (B, M, K),
    b (B, K, N), out (B, M, N), as np.matmul.

    Each product runs on one BLAS thread. When the B products together reach
    BATCH_PARALLEL_MIN_FLOPS they are shared out (share_out), in contiguous runs of k: products this
    small are split badly by BLAS itself, and one at a time they would leave the other cores idle.
    Every out[k] is the same single-threaded product either way, so the result does not depend on
    the thread count. To accumulate, each run computes its products into one (M, N) scratch of its own.
    """
    batch = a.shape[0]
    parts = parts_for(2 * batch * a.shape[1] * a.shape[2] * b.shape[2], BATCH_PARALLEL_MIN_FLOPS)

    def products(part, parts):
        run = slice(batch * part // parts, batch * (part + 1) // parts)
        if not accumulate:
            np.matmul(a[run], b[run], out=out[run])
            return
        scratch = np.empty(out.shape[1:], dtype=out.dtype)
        for k in range(run.start, run.stop):
            out[k] += np.matmul(a[k], b[k], out=scratch)

    with blas_threads(0):
        share_out(products, parts)
    return out


def parts_for(work, min_work):
    """How many parts share_out should cut `work` into: as many as numpy's BLAS has threads from
    min_work on (the machine's cores, or what OPENBLAS_NUM_THREADS and threadpoolctl allow), else 1."""
    return _blas_thread_count() if work >= min_work else 1


def share_out(task, parts):
    """task(part, parts) for part = 0 .. parts - 1, on as many Python threads (one part: on the
    calling thread). The parts must write disjoint outputs and release the GIL while they work, as
    NumPy's matmul and minidet's Cython kernels do. Python threads wait for work asleep, where
    OpenMP's and BLAS's own threads spin for a while after each call and take the core from whatever
    runs next (docs/PERFORMANCE.md, "Threads"); a Winograd layer's transforms and GEMMs all run here."""
    if parts == 1:
        task(0, 1)
    else:
        list(_pool(parts).map(lambda part: task(part, parts), range(parts)))


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


def _pool(parts):
    """The Python threads of share_out, at least `parts` of them."""
    global _workers
    if _workers is None or _workers[0] < parts:
        count = max(2, parts)
        _workers = (count, ThreadPoolExecutor(max_workers=count, thread_name_prefix="minidet-worker"))
    return _workers[1]


def kernel_threads():
    """How many threads the Cython kernels' parallel loops would use now (1 without OpenMP)."""
    from minidet._ext.im2col import openmp_threads

    return openmp_threads()
