"""minidet's GPU code paths on a machine without a GPU, through the CuPy stand-in in tests/cupy_standin.

- the whole of tests/gpu passes with the stand-in on PYTHONPATH (a subprocess, so that `cupy`
  is the stand-in there and nowhere else);
- the stand-in itself refuses what CuPy refuses and honours __syncthreads, so a pass means something.
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


@pytest.mark.slow
def test_gpu_test_suite_passes_on_the_cupy_standin():
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)            # the run below is exactly the command shown
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(STANDIN), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu", "-k", LEFT_OUT]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = f"$ PYTHONPATH={env['PYTHONPATH']} {shlex.join(command)}\n{result.stdout}{result.stderr}"
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
