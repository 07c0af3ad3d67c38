"""Array-in, array-out kernels that the layers call.

Each op dispatches on the array's module: NumPy arrays go to the Cython kernels
in minidet/_ext, CuPy arrays to the RawKernels in minidet/ops/cuda.
"""
# The functions of the public surface; they shadow their modules' names as attributes of
# minidet.ops, so import a module itself with `from minidet.ops.roi_pool import ...`.
from minidet.ops.nms import nms
from minidet.ops.roi_align import roi_align, roi_align_backward
from minidet.ops.roi_pool import roi_pool, roi_pool_backward

__all__ = ["nms", "roi_align", "roi_align_backward", "roi_pool", "roi_pool_backward"]
