"""The CUDA sources, checked without a GPU.

- every minidet/ops/cuda/*.cu compiles with nvcc -ptx for float and double (when nvcc is found);
- every one also compiles with NVRTC as CuPy's RawKernel compiles it, with no header included
  (when libnvrtc is found): nvcc includes the CUDA runtime headers by itself, NVRTC does not,
  so a name such as INFINITY passes the first check and fails on the GPU;
- the im2col and max-pool kernels, compiled for the host with g++ and run one thread at a time,
  give exactly what the Cython kernels give.
"""
import ctypes
import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from minidet.ops.im2col import conv_output_size, pair
from minidet.ops.maxpool import pooled_size

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


# ---- host emulation: the kernels' index arithmetic, checked against the Cython kernels ----

HOST_SHIM = """
#include <cmath>
struct minidet_dim3 { unsigned int x, y, z; };
extern "C" { minidet_dim3 blockIdx, blockDim, threadIdx; }
#define __global__
"""


class Dim3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    """{(source, scalar): ctypes library} of im2col.cu and maxpool.cu compiled with g++."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ not found")
    folder = tmp_path_factory.mktemp("host_kernels")
    shim = folder / "shim.h"
    shim.write_text(HOST_SHIM)
    libraries = {}
    for name in ("im2col.cu", "maxpool.cu"):
        for scalar in DTYPES:
            library = folder / f"{name}.{scalar}.so"
            subprocess.run([compiler, "-x", "c++", "-std=c++14", "-O1", "-shared", "-fPIC", "-include", str(shim),
                            f"-Dscalar_t={scalar}", os.path.join(CUDA_DIR, name), "-o", str(library)],
                           check=True, timeout=300)
            libraries[name, scalar] = ctypes.CDLL(str(library))
    return libraries


def run_on_host(library, kernel, total, *args):
    """Call `kernel` once per thread index 0..total-1, as a launch of one-thread blocks would."""
    Dim3.in_dll(library, "blockDim").x = 1
    Dim3.in_dll(library, "threadIdx").x = 0
    block = Dim3.in_dll(library, "blockIdx")
    c_args = []
    for a in args:
        if isinstance(a, np.ndarray):
            c_args.append(ctypes.c_void_p(a.ctypes.data))
        elif isinstance(a, np.int64):
            c_args.append(ctypes.c_longlong(int(a)))
        else:
            c_args.append(ctypes.c_int(int(a)))
    function = getattr(library, kernel)
    for index in range(total):
        block.x = index
        function(*c_args)


GEOMETRIES = [  # x shape, kernel, stride, padding
    ((2, 3, 5, 6), 3, 1, 1), ((1, 2, 7, 5), (3, 2), (2, 1), (1, 0)), ((2, 1, 6, 6), 2, 2, 0),
    ((1, 2, 5, 7), (1, 3), (3, 2), (0, 1)),
]


@pytest.mark.parametrize("scalar", sorted(DTYPES))
@pytest.mark.parametrize("x_shape, kernel_size, stride, padding", GEOMETRIES)
def test_im2col_cuda_kernels_run_on_the_host_equal_the_cython_kernels(host_kernels, scalar, x_shape,
                                                                       kernel_size, stride, padding):
    from minidet.ops.im2col import col2im, im2col

    library = host_kernels["im2col.cu", scalar]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(DTYPES[scalar])
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    n, c, h, w = x_shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    geometry = (n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow)
    expected = im2col(x, kernel_size, stride, padding)
    cols = np.full_like(expected, np.nan)
    run_on_host(library, "im2col", cols.size, x, *geometry, np.int64(cols.size), cols)
    np.testing.assert_array_equal(cols, expected)
    d = rng.standard_normal(cols.shape).astype(x.dtype)
    dx = np.full_like(x, np.nan)
    run_on_host(library, "col2im", dx.size, d, *geometry, np.int64(dx.size), dx)
    np.testing.assert_allclose(dx, col2im(d, x_shape, kernel_size, stride, padding), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scalar", sorted(DTYPES))
@pytest.mark.parametrize("x_shape, kernel_size, stride, padding, ceil_mode", [
    ((2, 2, 7, 9), 2, 2, 0, True), ((1, 3, 6, 5), 3, 1, 1, False), ((1, 2, 7, 8), (3, 2), (2, 3), (1, 1), True),
])
def test_max_pool_cuda_kernels_run_on_the_host_equal_the_cython_kernels(host_kernels, scalar, x_shape,
                                                                        kernel_size, stride, padding, ceil_mode):
    from minidet.ops.maxpool import max_pool_backward, max_pool_forward

    library = host_kernels["maxpool.cu", scalar]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, x_shape).astype(DTYPES[scalar])          # many ties: the first must win
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    n, c, h, w = x_shape
    oh, ow = pooled_size(h, kh, sh, ph, ceil_mode), pooled_size(w, kw, sw, pw, ceil_mode)
    geometry = (n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow)
    expected_y, expected_argmax = max_pool_forward(x, kernel_size, stride, padding, ceil_mode)
    y = np.full_like(expected_y, np.nan)
    argmax = np.full(expected_argmax.shape, -7, np.int32)
    run_on_host(library, "max_pool_forward", y.size, x, *geometry, np.int64(y.size), y, argmax)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(argmax, expected_argmax)
    dy = rng.standard_normal(y.shape).astype(x.dtype)
    dx = np.full_like(x, np.nan)
    run_on_host(library, "max_pool_backward", dx.size, dy, argmax, *geometry, np.int64(dx.size), dx)
    np.testing.assert_allclose(dx, max_pool_backward(dy, argmax, x_shape, kernel_size, stride, padding),
                               rtol=1e-6, atol=1e-6)


class NumpyAsGpu:
    """numpy under another name: the ops take their GPU branch while the arrays stay on the host."""

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.mark.parametrize("scalar", sorted(DTYPES))
def test_gpu_branch_of_the_ops_passes_the_kernel_arguments_in_order(host_kernels, scalar, monkeypatch):
    import minidet.ops.im2col as im2col_ops
    import minidet.ops.maxpool as maxpool_ops

    for module in (im2col_ops, maxpool_ops):
        monkeypatch.setattr(module, "get_array_module", lambda *arrays: NumpyAsGpu())
        monkeypatch.setattr(module, "kernel", lambda source, name, dtype_name: (host_kernels[source, dtype_name], name))
        monkeypatch.setattr(module, "launch", lambda kern, n, args: run_on_host(kern[0], kern[1], n, *args))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 8)).astype(DTYPES[scalar])
    geometry = ((3, 2), (2, 1), (1, 0))
    cols = im2col_ops.im2col(x, *geometry)
    np.testing.assert_array_equal(cols, im2col_ops.im2col_reference(x, *geometry))
    np.testing.assert_allclose(im2col_ops.col2im(cols, x.shape, *geometry),
                               im2col_ops.col2im_reference(cols, x.shape, *geometry), rtol=1e-6, atol=1e-6)
    pooling = ((3, 2), (2, 3), (1, 1))
    y, argmax = maxpool_ops.max_pool_forward(x, *pooling, True)
    expected_y, expected_argmax = maxpool_ops.max_pool_reference(x, *pooling, True)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(argmax, expected_argmax)
    dx = maxpool_ops.max_pool_backward(y, argmax, x.shape, *pooling)
    expected_dx = np.zeros((6, 7 * 8), x.dtype)                    # y scattered onto its argmax
    np.add.at(expected_dx, (np.arange(6)[:, None], argmax.reshape(6, -1)), y.reshape(6, -1))
    np.testing.assert_allclose(dx, expected_dx.reshape(x.shape), rtol=1e-6)
