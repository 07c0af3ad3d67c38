"""Where arrays live: NumPy on the CPU, CuPy on the GPU.

This is the only module that knows about devices. Everything else asks
`get_array_module(x)` for the module that owns an array and calls the same
functions on it, so one line of layer code serves both devices. CuPy is
imported lazily: minidet imports and runs without it.

The GPU counts as available only once it has compiled and run a kernel: CuPy imports on a
machine without a driver, counts devices without NVRTC, and compiles nothing without the CUDA
headers, so counting devices says little. The first call of `cupy_or_none` (or anything that
needs the GPU) imports CuPy, counts devices, compiles a tiny RawKernel with minidet's options and
checks what it computes; `gpu_unavailable_reason()` is then None, or one line naming the part
that is missing (CuPy, the driver, a GPU, NVRTC, the CUDA headers) and how to install it.
"""
import ctypes
import importlib
import os

import numpy as np

_probe = None  # (cupy or None, reason or None) once probed

_PROBE_SOURCE = r"""
extern "C" __global__ void minidet_probe(const float* x, int n, float* y) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = 2.0f * x[i] + 1.0f;
}
"""


def cupy_or_none():
    """The cupy module if it is installed and has compiled and run a kernel on a GPU, else None."""
    return _probed()[0]


def gpu_available():
    return cupy_or_none() is not None


def gpu_unavailable_reason():
    """None when the GPU works, else one line: which part is missing and how to install it."""
    return _probed()[1]


def require_cupy():
    """cupy, or a RuntimeError whose one-line message says what is missing and how to install it."""
    cp, reason = _probed()
    if cp is None:
        raise RuntimeError(reason)
    return cp


def reset_gpu_probe():
    """Forget the probe's result, so that the next call probes again (for tests)."""
    global _probe
    _probe = None


def _probed():
    global _probe
    if _probe is None:
        _probe = probe_gpu()
    return _probe


def probe_gpu():
    """(cupy, None) when CuPy compiles and runs a kernel on GPU 0; (None, one-line reason) otherwise."""
    try:
        cp = importlib.import_module("cupy")
    except Exception as err:  # ImportError, or a broken install failing inside CuPy's import
        return None, _diagnose("import", err, None)
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as err:
        return None, _diagnose("device", err, cp)
    if count < 1:
        return None, _diagnose("device", RuntimeError("cudaErrorNoDevice: 0 devices"), cp)
    try:
        from minidet.ops.cuda import compile_options

        kernel = cp.RawKernel(_PROBE_SOURCE, "minidet_probe", options=compile_options())
        x = cp.asarray(np.arange(64, dtype=np.float32))
        y = cp.empty(64, dtype=cp.float32)
        kernel((1,), (64,), (x, np.int32(64), y))       # CuPy compiles on the first launch
        values = cp.asnumpy(y)
    except Exception as err:
        return None, _diagnose("compile", err, cp)
    if not np.array_equal(values, 2 * np.arange(64, dtype=np.float32) + 1):
        return None, (f"GPU unavailable to CuPy: minidet's test kernel ran on {_device_name(cp)} but returned wrong "
                      "values; check the driver installation (nvidia-smi) and CUDA_VISIBLE_DEVICES")
    return cp, None


def _diagnose(stage, err, cp):
    """The one-line reason for a failure of the probe at `stage` ("import", "device", "compile")."""
    text = f"{type(err).__name__}: {err}".replace("\n", " ").strip()
    package = _cupy_package(cp)
    ctk = f"pip install '{package}[ctk]'"
    if stage == "import":
        if isinstance(err, ModuleNotFoundError) and err.name == "cupy":
            return ("GPU unavailable to CuPy: CuPy is not installed; install minidet's gpu13 extra "
                    "(pip install 'cupy-cuda13x[ctk]', for a CUDA 13 driver) or gpu extra ('cupy-cuda12x[ctk]')")
        return f"GPU unavailable to CuPy: CuPy failed to import ({text}); reinstall it: {ctk}"
    if stage == "device":
        if "NoDevice" in text or "0 devices" in text:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
            return f"GPU unavailable to CuPy: the NVIDIA driver sees no CUDA GPU{hint}"
        if "InsufficientDriver" in text or "driver" in text.lower():
            if not _libcuda_loads():
                return ("GPU unavailable to CuPy: no NVIDIA driver (libcuda.so.1 not found); install the NVIDIA "
                        "driver for your GPU")
            return (f"GPU unavailable to CuPy: the NVIDIA driver is older than the CUDA runtime of {package} "
                    f"({text}); update the driver, or install the CuPy of its CUDA version (cupy-cuda12x[ctk])")
        if "libcudart" in text or "cudart" in text.lower():
            return f"GPU unavailable to CuPy: the CUDA runtime library is missing ({text}); {ctk}"
        return f"GPU unavailable to CuPy: CUDA could not start ({text})"
    if "nvrtc" in text.lower():
        return f"GPU unavailable to CuPy: NVRTC, CuPy's kernel compiler, is missing ({text}); {ctk}"
    if "header" in text.lower():
        return f"GPU unavailable to CuPy: CuPy finds no CUDA headers to compile kernels with ({text}); {ctk} or set CUDA_PATH"
    if "Compile" in type(err).__name__:
        return f"GPU unavailable to CuPy: NVRTC could not compile minidet's test kernel ({text})"
    return f"GPU unavailable to CuPy: minidet's test kernel failed on {_device_name(cp)} ({text})"


def _cupy_package(cp):
    """The pip name of the installed CuPy wheel (cupy-cuda13x when it cannot tell)."""
    from importlib import metadata

    for name in ("cupy-cuda13x", "cupy-cuda12x", "cupy"):
        try:
            metadata.distribution(name)
            return name
        except metadata.PackageNotFoundError:
            continue
    return "cupy-cuda13x"


def _libcuda_loads():
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def _device_name(cp):
    try:
        return str(cp.cuda.runtime.getDeviceProperties(0)["name"].decode())
    except Exception:
        return "GPU 0"


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
