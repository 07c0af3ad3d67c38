"""Where arrays live: NumPy on the CPU, CuPy on the GPU.

This is the only module that knows about devices. Everything else asks
`get_array_module(x)` for the module that owns an array and calls the same
functions on it, so one line of layer code serves both devices. CuPy is
imported lazily: minidet imports and runs without it.
"""
import numpy as np

_cupy = None


def cupy_or_none():
    """The cupy module if it is installed and sees a GPU, else None."""
    global _cupy
    if _cupy is None:
        try:
            import cupy

            cupy.cuda.runtime.getDeviceCount()
            _cupy = cupy
        except Exception:  # not installed, no driver, or no device
            _cupy = False
    return _cupy or None


def gpu_available():
    return cupy_or_none() is not None


def require_cupy():
    """cupy, or a RuntimeError that says what is missing."""
    cp = cupy_or_none()
    if cp is None:
        raise RuntimeError(
            "device 'gpu' needs CuPy and a CUDA GPU: install the gpu extra "
            "(pip install -e '.[gpu]' for CUDA 12, '.[gpu13]' for CUDA 13) on a machine with an NVIDIA GPU"
        )
    return cp


def get_array_module(*arrays):
    """numpy or cupy, whichever owns the arrays (numpy for non-arrays)."""
    for x in arrays:
        if type(x).__module__.split(".")[0] == "cupy":
            return require_cupy()
    return np


def is_gpu_array(x):
    return type(x).__module__.split(".")[0] == "cupy"


def to_device(x, device):
    """Copy an array (or leave it) onto 'cpu' or 'gpu'."""
    if device == "cpu":
        return asnumpy(x)
    if device == "gpu":
        return require_cupy().asarray(x)
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")


def asnumpy(x):
    """A NumPy array holding x's values, wherever x lives."""
    if is_gpu_array(x):
        return x.get()
    return np.asarray(x)
