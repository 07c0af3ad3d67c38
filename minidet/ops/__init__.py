"""Array-in, array-out kernels that the layers call.

Each op dispatches on the array's module: NumPy arrays go to the Cython kernels
in minidet/_ext, CuPy arrays to the RawKernels in minidet/ops/cuda.
"""
