"""Array-in, array-out kernels that the layers call.

Each op dispatches on the array's module: NumPy arrays go to the Cython kernels
in minidet/_ext, CuPy arrays to the RawKernels in minidet/ops/cuda.
"""
from minidet.ops.im2col import col2im, im2col
from minidet.ops.maxpool import max_pool_backward, max_pool_forward
from minidet.ops.nms import nms
from minidet.ops.roi_pool import roi_pool, roi_pool_backward

__all__ = ["im2col", "col2im", "max_pool_forward", "max_pool_backward", "nms", "roi_pool", "roi_pool_backward"]
