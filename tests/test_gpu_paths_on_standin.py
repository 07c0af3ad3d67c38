"""minidet's GPU code paths on a machine without a GPU, through the CuPy stand-in in tests/cupy_standin.

- the whole of tests/gpu passes with the stand-in on PYTHONPATH (a subprocess, so that `cupy`
  is the stand-in there and nowhere else), once as built by default and once with fused
  multiply-adds, shuffled block and thread orders and AddressSanitizer + UBSan all together
  (CUPY_STANDIN_BUILD=fma,shuffle,sanitize): results called identical must survive contraction
  and any thread order, and no kernel may read or write outside its arrays;
- the stand-in itself refuses what CuPy refuses, honours __syncthreads, and behaves as the GPU
  where the GPU differs from the CPU (garbage in new memory, flush-to-zero, fminf, contraction,
  thread order), so a pass means something.
"""
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "tests" / "cupy_standin"
# The one test left out compares with torchvision on a CUDA device, which the stand-in does not
# give torch: it would import torch (seconds) only to skip.
LEFT_OUT = "not torchvision"

pytestmark = pytest.mark.skipif(shutil.which("g++") is None,
                                reason="g++ not found: the stand-in compiles the CUDA kernels with it")


@pytest.fixture(scope="module")
def standin():
    """The stand-in imported as `cupy_standin`, so that `cupy` stays unimportable in this process."""
    folder = STANDIN / "cupy"
    spec = importlib.util.spec_from_file_location("cupy_standin", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        for name in [n for n in sys.modules if n == spec.name or n.startswith(spec.name + ".")]:
            del sys.modules[name]


def standin_environment(standin, build=""):
    """os.environ with the stand-in first on PYTHONPATH and CUPY_STANDIN_BUILD=build (sanitizers preloaded)."""
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)            # the run below is exactly the command shown
    env.pop("MINIDET_REQUIRE_GPU", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(STANDIN), env.get("PYTHONPATH")) if p)
    env["CUPY_STANDIN_BUILD"] = build
    if "sanitize" in build:
        try:
            env = standin._raw_kernel.sanitizer_environment(env)
        except RuntimeError as err:
            pytest.skip(str(err))
    return env


@pytest.mark.slow
@pytest.mark.parametrize("build", ["", "fma,shuffle,sanitize"], ids=["default", "fma-shuffle-sanitize"])
def test_gpu_test_suite_passes_on_the_cupy_standin(standin, build):
    env = standin_environment(standin, build)
    env["MINIDET_REQUIRE_GPU"] = "1"           # the stand-in is the GPU here: a skip would be a fault
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu", "-k", LEFT_OUT]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    shown = " ".join(f"{k}={shlex.quote(env[k])}" for k in ("PYTHONPATH", "CUPY_STANDIN_BUILD", "LD_PRELOAD")
                     if env.get(k))
    output = f"$ {shown} {shlex.join(command)}\n{result.stdout[-20000:]}{result.stderr[-20000:]}"
    returncode, summary = result.returncode, (result.stdout.strip().splitlines() or [""])[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert returncode == 0, output
    assert passed and int(passed.group(1)) > 0, f"tests/gpu ran no test on the stand-in:\n{output}"


# ---- the stand-in's own checks ------------------------------------------------------------------

SCALE = r"""
extern "C" __global__ void scale(const scalar_t* __restrict__ x, int n, scalar_t factor, scalar_t* __restrict__ y) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = factor * x[i];
}
"""

REVERSE_IN_BLOCK = r"""
extern "C" __global__ void reverse_in_block(const float* x, float* y) {
    __shared__ float tile[64];
    const int offset = blockIdx.x * blockDim.x;
    tile[threadIdx.x] = x[offset + threadIdx.x];
    __syncthreads();  // thread t reads what thread blockDim.x - 1 - t wrote
    y[offset + threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}
"""


def test_standin_kernel_runs_with_arguments_of_the_exact_c_types(standin):
    x = np.arange(300, dtype=np.float32)
    y = standin.zeros(300, dtype=np.float32)
    standin.RawKernel(SCALE, "scale", options=("-Dscalar_t=float",))((3,), (128,),
                                                                     (standin.asarray(x), np.int32(300), np.float32(2), y))
    np.testing.assert_array_equal(y.get(), 2 * x)


@pytest.mark.parametrize("wrong, error", [
    pytest.param(lambda cp: dict(n=300), r"int \(int32\) but CuPy would pass a int64", id="python-int-for-int"),
    pytest.param(lambda cp: dict(factor=2.0), r"float \(float32\) but CuPy would pass a float64",
                 id="python-float-for-float"),
    pytest.param(lambda cp: dict(x=np.zeros(300, np.float32)), "needs a cupy array", id="host-array"),
    pytest.param(lambda cp: dict(x=cp.zeros(300, np.float64)), "points to float but gets a float64",
                 id="double-array-for-float-pointer"),
    pytest.param(lambda cp: dict(x=cp.zeros(600, np.float32)[::2]), "non-contiguous", id="strided-array"),
])
def test_standin_refuses_kernel_arguments_that_do_not_fit_their_c_parameters(standin, wrong, error):
    arguments = dict(x=standin.zeros(300, np.float32), n=np.int32(300), factor=np.float32(2),
                     y=standin.zeros(300, np.float32))
    arguments.update(wrong(standin))
    kernel = standin.RawKernel(SCALE, "scale", options=("-Dscalar_t=float",))
    with pytest.raises((TypeError, ValueError), match=error):
        kernel((3,), (128,), tuple(arguments.values()))


def test_standin_syncthreads_lets_every_thread_of_the_block_write_before_any_reads(standin):
    x = np.arange(128, dtype=np.float32)
    y = standin.zeros(128, dtype=np.float32)
    standin.RawKernel(REVERSE_IN_BLOCK, "reverse_in_block")((2,), (64,), (standin.asarray(x), y))
    np.testing.assert_array_equal(y.get(), np.concatenate([x[63::-1], x[:63:-1]]))


def test_standin_refuses_to_mix_numpy_and_cupy_arrays(standin):
    device, host = standin.ones(3), np.ones(3)
    for mixed in (lambda: device + host, lambda: host * device, lambda: standin.maximum(device, host),
                  lambda: np.asarray(device), lambda: device.__setitem__(slice(None), host)):
        with pytest.raises(TypeError):
            mixed()
    assert isinstance(device.sum(), standin.ndarray) and float(device.sum()) == 3.0


# ---- where the stand-in behaves as a GPU rather than as the CPU -----------------------------------

UNARY = r"""
extern "C" __global__ void unary(const scalar_t* x, int n, scalar_t* y) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = OPERATION;
}
"""


def run_unary(standin, operation, x, dtype):
    kernel = standin.RawKernel(UNARY.replace("OPERATION", operation), "unary",
                               options=(f"-Dscalar_t={'float' if dtype == np.float32 else 'double'}",))
    y = standin.zeros(len(x), dtype=dtype)
    kernel((1,), (len(x),), (standin.asarray(np.asarray(x, dtype)), np.int32(len(x)), y))
    return y.get()


def test_standin_new_memory_holds_garbage_as_a_reused_pool_block_does(standin):
    assert np.isnan(standin.empty((2, 3), np.float32).get()).all()
    assert np.isnan(standin.ndarray((4,), np.float64).get()).all()
    assert (standin.empty(5, np.int32).get() == -1).all()
    assert (standin.empty_like(standin.zeros(3, np.uint64)).get() == np.iinfo(np.uint64).max).all()


def test_standin_float_kernels_flush_subnormals_and_double_kernels_do_not(standin):
    tiny = np.finfo(np.float32).tiny
    x = [tiny / 4, -tiny / 2, tiny, 1.0]
    np.testing.assert_array_equal(run_unary(standin, "x[i] * (scalar_t)3", x, np.float32), [0, -0.0, 3 * tiny, 3])
    np.testing.assert_array_equal(run_unary(standin, "(scalar_t)(x[i] > 0)", x, np.float32), [0, 0, 1, 1])
    np.testing.assert_array_equal(run_unary(standin, "x[i]", x, np.float32), np.float32(x))   # a copy keeps them
    np.testing.assert_array_equal(run_unary(standin, "x[i] * (scalar_t)3", x, np.float64), np.multiply(x, 3))
    assert np.float32(tiny / 4) * np.float32(3) != 0           # the host's own arithmetic is left alone


def test_standin_min_and_max_of_floats_drop_a_nan_as_cuda_fminf_does(standin):
    x = [np.nan, 2.0, -1.0]
    np.testing.assert_array_equal(run_unary(standin, "min(x[i], (scalar_t)0)", x, np.float32), [0, 0, -1])
    np.testing.assert_array_equal(run_unary(standin, "max(x[i], (scalar_t)0)", x, np.float64), [0, 2, 0])
    np.testing.assert_array_equal(run_unary(standin, "(scalar_t)max(3, (int)x[1])", x, np.float32), [3, 3, 3])


ATOMIC_SUM = r"""
extern "C" __global__ void atomic_sum(const float* x, int n, float* total) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(total, x[i]);
}
"""


def test_standin_float_atomic_add_flushes_subnormals(standin):
    tiny = np.finfo(np.float32).tiny
    total = standin.zeros(1, np.float32)
    standin.RawKernel(ATOMIC_SUM, "atomic_sum")((1,), (8,), (standin.asarray(np.full(8, tiny / 4, np.float32)),
                                                             np.int32(8), total))
    assert total.get()[0] == 0


CONTRACTION = r"""
extern "C" __global__ void contraction(const float* a, float* y) {
    y[0] = a[0] * a[1] + a[2];                 // NVRTC fuses this into one multiply-add
    y[1] = __fmul_rn(a[0], a[1]) + a[2];       // never fused
}
"""


def test_standin_fma_build_contracts_a_multiply_add_and_keeps_rn_products_apart(standin, monkeypatch):
    a = standin.asarray(np.float32([1 + 2**-12, 1 + 2**-12, -1]))  # a*b = 1 + 2^-11 + 2^-24 exactly
    separate, fused = np.float32(2**-11), np.float32(2**-11 + 2**-24)
    for build, first in (("", separate), ("fma", fused)):
        if build == "fma" and not standin._raw_kernel.cpu_has_fma():
            pytest.skip("this CPU has no fused multiply-add")
        monkeypatch.setenv("CUPY_STANDIN_BUILD", build)
        y = standin.zeros(2, np.float32)
        standin.RawKernel(CONTRACTION, "contraction")((1,), (1,), (a, y))
        np.testing.assert_array_equal(y.get(), [first, separate])


LAST_WRITER = r"""
extern "C" __global__ void last_writer(int* winner) { *winner = blockIdx.x * blockDim.x + threadIdx.x; }
"""


def test_standin_shuffle_build_runs_threads_in_a_new_order_at_each_launch(standin, monkeypatch):
    def winners():
        kernel = standin.RawKernel(LAST_WRITER, "last_writer")
        out = standin.zeros(1, np.int32)
        results = set()
        for _ in range(6):
            kernel((4,), (32,), (out,))
            results.add(int(out.get()[0]))
        return results

    assert winners() == {127}                      # in order, the last thread writes last
    monkeypatch.setenv("CUPY_STANDIN_BUILD", "shuffle")
    assert len(winners()) > 1                      # a race shows as a changing result


OUT_OF_BOUNDS = r"""
extern "C" __global__ void past_the_end(const float* x, int n, float* y) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = x[i];                   // one element too many
}
"""

OVERFLOW = r"""
extern "C" __global__ void overflow(int n, int* y) { y[0] = n * n; }
"""


@pytest.mark.parametrize("source, call, report", [
    (OUT_OF_BOUNDS, "k((1,), (64,), (cp.zeros(37, np.float32), np.int32(37), cp.zeros(37, np.float32)))",
     "heap-buffer-overflow"),
    (OVERFLOW, "k((1,), (1,), (np.int32(1 << 20), cp.zeros(1, np.int32)))", "signed integer overflow"),
], ids=["out-of-bounds", "signed-overflow"])
def test_standin_sanitize_build_stops_at_a_fault(standin, source, call, report):
    env = standin_environment(standin, "sanitize")
    name = re.search(r"void (\w+)", source).group(1)
    script = (f"import numpy as np, cupy as cp\nk = cp.RawKernel({source!r}, {name!r})\n{call}\n"
              f"print('no fault')\n")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "no fault" not in result.stdout, result.stdout + result.stderr
    assert report in result.stderr, result.stderr[-3000:]


def test_standin_elementwise_kernel_broadcasts_binds_types_and_refuses_mismatches(standin):
    kernel = standin.ElementwiseKernel("T x, T b, float32 scale, raw T table", "T y",
                                       "y = (x + b) * (T)scale + table[i % 2]", "affine")
    x = standin.asarray(np.arange(6, dtype=np.float64).reshape(2, 3))
    table = standin.asarray(np.array([0.0, 100.0]))
    y = kernel(x, standin.asarray(np.array([1.0, 2.0, 3.0])), np.float32(0.5), table)
    expected = (np.arange(6).reshape(2, 3) + [1, 2, 3]) * 0.5 + np.tile([0.0, 100.0], 3).reshape(2, 3)
    np.testing.assert_array_equal(y.get(), expected)
    out = standin.empty((2, 3), np.float64)
    assert kernel(x, 1.0, 2.0, table, out) is out
    with pytest.raises(TypeError, match="float32"):
        kernel(x, standin.ones(3, np.float32), 1.0, table)
    with pytest.raises(TypeError, match="numpy array"):
        kernel(x, np.ones(3), 1.0, table)
