"""minidet: Fast R-CNN rebuilt from first principles.

Every layer's forward and backward is written by hand (NumPy and Cython on the
CPU, CuPy RawKernels on the GPU); see README.md for a tour.
"""
__version__ = "0.1.0"
