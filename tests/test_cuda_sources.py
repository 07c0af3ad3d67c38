"""The CUDA sources, checked without a GPU.

- every minidet/ops/cuda/*.cu compiles with nvcc -ptx for float and double (when nvcc is found);
- every one also compiles with NVRTC as CuPy's RawKernel compiles it, with no header included
  (when libnvrtc is found): nvcc includes the CUDA runtime headers by itself, NVRTC does not,
  so a name such as INFINITY passes the first check and fails on the GPU.

What the kernels compute, and the arguments the ops pass them, are checked by tests/gpu, which
also runs without a GPU on the CPU stand-in for CuPy (tests/test_gpu_paths_on_standin.py).
"""
import ctypes
import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

CUDA_DIR = os.path.join(os.path.dirname(__file__), "..", "minidet", "ops", "cuda")
SOURCES = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))
DTYPES = {"float": np.float32, "double": np.float64}


def find_nvcc():
    return shutil.which("nvcc") or next(iter(sorted(glob.glob("/usr/local/cuda*/bin/nvcc"))), None)


@pytest.mark.parametrize("scalar", sorted(DTYPES))
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_cuda_source_compiles_with_nvcc(source, scalar, tmp_path):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    result = subprocess.run([nvcc, "-ptx", "-std=c++14", f"-Dscalar_t={scalar}", source,
                             "-o", str(tmp_path / "out.ptx")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def load_nvrtc():
    """libnvrtc (with its builtins library loaded first, which it opens by name), or None."""
    patterns = [os.path.join(p, "nvidia", "*", "lib", "libnvrtc.so*") for p in sys.path if p]
    patterns += ["/usr/local/cuda*/lib64/libnvrtc.so*", "/usr/lib/x86_64-linux-gnu/libnvrtc.so*"]
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            if ".alt." in path:
                continue
            folder = os.path.dirname(path)
            try:
                for builtins in sorted(glob.glob(os.path.join(folder, "libnvrtc-builtins.so*"))):
                    if ".alt." not in builtins:
                        ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
                return ctypes.CDLL(path)
            except OSError:
                continue
    return None


def nvrtc_compile(nvrtc, source, options):
    """(status, log) of compiling `source` with NVRTC; status 0 is success."""
    program = ctypes.c_void_p()
    status = nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"source.cu", 0, None, None)
    if status != 0:
        return status, f"nvrtcCreateProgram failed with status {status}"
    try:
        args = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        status = nvrtc.nvrtcCompileProgram(program, len(options), args)
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        return status, log.value.decode(errors="replace")
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


@pytest.mark.parametrize("scalar", sorted(DTYPES))
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_cuda_source_compiles_with_nvrtc_as_cupy_does(source, scalar):
    nvrtc = load_nvrtc()
    if nvrtc is None:
        pytest.skip("libnvrtc not found")
    with open(source) as f:
        text = f.read()
    # the options of minidet.ops.cuda.kernel
    status, log = nvrtc_compile(nvrtc, text, ["-std=c++14", f"-Dscalar_t={scalar}"])
    if status != 0 and "libnvrtc-builtins" in log:
        pytest.skip(f"libnvrtc is incomplete here: {log.strip()}")
    assert status == 0, log
