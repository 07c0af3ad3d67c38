"""minidet.backend's GPU probe: one line that names the missing part, for each way a GPU can be missing.

The machines are simulated: a fake `cupy` module for CuPy without a GPU, and the CPU stand-in for
CuPy (tests/cupy_standin) with its compiler made to fail as CuPy fails without NVRTC or headers.
"""
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from minidet import backend

STANDIN = Path(__file__).resolve().parent / "cupy_standin" / "cupy"


@pytest.fixture(autouse=True)
def fresh_probe():
    backend.reset_gpu_probe()
    yield
    backend.reset_gpu_probe()


def install_cupy(monkeypatch, module):
    """`module` as the `cupy` that `import cupy` finds, for this test only."""
    for name in [n for n in sys.modules if n == "cupy" or n.startswith("cupy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cupy", module)


def assert_one_line_naming(reason, *words):
    assert reason is not None and "\n" not in reason, reason
    assert reason.startswith("GPU unavailable to CuPy: "), reason
    for word in words:
        assert word in reason, reason
    with pytest.raises(RuntimeError) as raised:
        backend.require_cupy()
    assert str(raised.value) == reason
    assert not backend.gpu_available()


class CUDARuntimeError(RuntimeError):
    """Named as CuPy's own (cupy_backends.cuda.api.runtime.CUDARuntimeError)."""


def cupy_without_gpu(message):
    """A cupy module that imports but whose runtime cannot count devices, as on a machine without a GPU."""
    def device_count():
        raise CUDARuntimeError(message)

    module = types.ModuleType("cupy")
    module.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=device_count))
    return module


@pytest.fixture
def standin(monkeypatch):
    """The CPU stand-in for CuPy, imported as `cupy` for this test."""
    spec = importlib.util.spec_from_file_location("cupy", STANDIN / "__init__.py",
                                                  submodule_search_locations=[str(STANDIN)])
    module = importlib.util.module_from_spec(spec)
    install_cupy(monkeypatch, module)
    spec.loader.exec_module(module)
    yield module
    for name in [n for n in sys.modules if n.startswith("cupy.")]:
        del sys.modules[name]


def test_without_cupy_the_reason_says_how_to_install_it(monkeypatch):
    install_cupy(monkeypatch, None)                     # `import cupy` raises ModuleNotFoundError
    assert_one_line_naming(backend.gpu_unavailable_reason(), "CuPy is not installed", "cupy-cuda13x[ctk]")


def test_cupy_on_a_machine_without_a_driver_names_the_driver(monkeypatch):
    install_cupy(monkeypatch, cupy_without_gpu(
        "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"))
    monkeypatch.setattr(backend, "_libcuda_loads", lambda: False)
    assert_one_line_naming(backend.gpu_unavailable_reason(), "no NVIDIA driver", "libcuda.so.1")


def test_cupy_with_an_old_driver_says_the_driver_is_too_old(monkeypatch):
    install_cupy(monkeypatch, cupy_without_gpu(
        "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"))
    monkeypatch.setattr(backend, "_libcuda_loads", lambda: True)
    assert_one_line_naming(backend.gpu_unavailable_reason(), "driver is older", "update the driver")


def test_cupy_with_a_driver_but_no_gpu_says_no_gpu_is_seen(monkeypatch):
    install_cupy(monkeypatch, cupy_without_gpu("cudaErrorNoDevice: no CUDA-capable device is detected"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert_one_line_naming(backend.gpu_unavailable_reason(), "sees no CUDA GPU", "CUDA_VISIBLE_DEVICES=''")


class DynamicLibNotFoundError(RuntimeError):
    """Named as cuda.pathfinder's, which CuPy 14 raises when it finds no libnvrtc."""


@pytest.mark.parametrize("failure, words", [
    (DynamicLibNotFoundError('Failure finding "libnvrtc.so.13 or libnvrtc.so.12": No such file'),
     ("NVRTC", "is missing", "[ctk]")),
    (RuntimeError("Failed to find CUDA headers. Please install CUDA toolkit headers (e.g., pip install "
                  "cupy-cuda12x[ctk]) or specify CUDA_PATH environment variable."),
     ("no CUDA headers", "CUDA_PATH")),
], ids=["no-nvrtc", "no-headers"])
def test_a_gpu_that_cannot_compile_kernels_names_what_the_compiler_lacks(monkeypatch, standin, failure, words):
    def compile_and_launch(self, grid, block, args):
        raise failure                                   # CuPy compiles a RawKernel at its first launch

    monkeypatch.setattr(standin.RawKernel, "__call__", compile_and_launch)
    assert_one_line_naming(backend.gpu_unavailable_reason(), *words)


def test_a_gpu_whose_kernel_computes_wrong_values_is_refused(monkeypatch, standin):
    monkeypatch.setattr(standin.RawKernel, "__call__", lambda self, grid, block, args: args[2].fill(0))
    assert_one_line_naming(backend.gpu_unavailable_reason(), "wrong values")


def test_a_gpu_that_compiles_and_runs_the_test_kernel_is_available(standin):
    assert backend.gpu_unavailable_reason() is None
    assert backend.require_cupy() is standin and backend.gpu_available()
    x = backend.to_device(np.arange(3.0), "gpu")
    assert backend.is_gpu_array(x) and backend.get_array_module(x) is standin


def test_the_probe_runs_once_per_process(monkeypatch, standin):
    calls = []
    original = standin.RawKernel.__call__
    monkeypatch.setattr(standin.RawKernel, "__call__", lambda self, *a: (calls.append(1), original(self, *a)))
    for _ in range(3):
        backend.require_cupy()
    assert calls == [1]
