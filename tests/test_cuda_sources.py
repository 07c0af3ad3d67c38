"""The CUDA sources, compiled without a GPU as CuPy will compile them on one.

- every minidet/ops/cuda/*.cu compiles with NVRTC through CuPy's own compiler module, for float
  and double, for sm_80 and sm_90, with the options CuPy gives a RawKernel: minidet's own
  (minidet.ops.cuda.compile_options), then CuPy's (its bundled CCCL and its headers first, the
  CUDA headers found by cuda.pathfinder, -ftz=true, -arch=sm_XX, --device-as-default-execution-space,
  --pch). Any warning fails the test; float builds also ask ptxas to warn on double-precision
  arithmetic (a float kernel that computes in double is slow on every GPU and rounds unlike the
  CPU), and every build to warn on register spills. Runs where CuPy and NVRTC are installed:
  `pip install -e '.[nvrtc]'` (no GPU or driver needed); with MINIDET_REQUIRE_NVRTC=1, as CI sets
  it, a missing NVRTC fails instead of skipping.
- every one also compiles with nvcc -ptx (when nvcc is found).

What the kernels compute, and the arguments the ops pass them, are checked by tests/gpu, which
also runs without a GPU on the CPU stand-in for CuPy (tests/test_gpu_paths_on_standin.py).
"""
import glob
import io
import os
import shutil
import subprocess

import pytest

from minidet.ops.cuda import compile_options
from minidet.ops.cuda import source as cuda_source

CUDA_DIR = os.path.join(os.path.dirname(__file__), "..", "minidet", "ops", "cuda")
SOURCES = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))
SCALARS = ("float", "double")
ARCHS = ("80", "90")            # A100, H100/H200
PTXAS_WARNINGS = {"float": ("-Xptxas=--warn-on-double-precision-use", "-Xptxas=--warn-on-spills"),
                  "double": ("-Xptxas=--warn-on-spills",)}


def find_nvcc():
    return shutil.which("nvcc") or next(iter(sorted(glob.glob("/usr/local/cuda*/bin/nvcc"))), None)


@pytest.mark.parametrize("scalar", SCALARS)
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_cuda_source_compiles_with_nvcc(source, scalar, tmp_path):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    result = subprocess.run([nvcc, "-ptx", "-ftz=true", *compile_options(scalar), source,
                             "-o", str(tmp_path / "out.ptx")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


class CupyNvrtc:
    """CuPy's NVRTC path with the device taken out: what RawKernel.compile does, for a given arch."""

    def __init__(self):
        import cupy

        if "standin" in getattr(cupy, "__version__", ""):
            raise ImportError("cupy is the CPU stand-in here")
        from cupy._core import core
        from cupy.cuda import compiler

        self.core, self.compiler = core, compiler
        self.version = compiler._get_nvrtc_version()          # loads libnvrtc: fails here if absent

    def options(self, user_options):
        """CuPy's option list for a RawKernel compiled with `user_options`, less the arch."""
        return self.core.assemble_cupy_compiler_options(tuple(user_options)) + ("-ftz=true",)

    def compile(self, source, options, arch, monkeypatch):
        """(binary, log) of NVRTC on `source`; CuPy adds -arch, --device-as-default-execution-space, --pch."""
        compiler = self.compiler

        def arch_option(arch=None):
            # compiler._get_arch_for_options_for_nvrtc, without the per-device cache that needs a GPU
            if not compiler._use_ptx and int(arch) <= int(compiler._get_max_compute_capability()):
                return f"-arch=sm_{arch}", "cubin"
            return f"-arch=compute_{arch}", "ptx"

        monkeypatch.setattr(compiler, "_get_arch_for_options_for_nvrtc", arch_option)
        log = io.StringIO()
        binary, _ = compiler._compile_using_nvrtc_no_warning(source, options, arch, log_stream=log)
        return binary, log.getvalue().replace("\x00", "").strip()


@pytest.fixture(scope="module")
def cupy_nvrtc():
    try:
        return CupyNvrtc()
    except Exception as err:  # CuPy absent, the stand-in, or no libnvrtc / headers
        reason = f"CuPy with NVRTC is not installed ({type(err).__name__}: {err}); pip install -e '.[nvrtc]'"
        if os.environ.get("MINIDET_REQUIRE_NVRTC", "0") not in ("", "0"):
            pytest.fail(f"MINIDET_REQUIRE_NVRTC is set but {reason}")
        pytest.skip(reason)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("scalar", SCALARS)
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_cuda_source_compiles_with_nvrtc_as_cupy_compiles_it(cupy_nvrtc, source, scalar, arch, monkeypatch):
    text = cuda_source(os.path.basename(source))           # with its headers inlined, as RawKernel gets it
    options = cupy_nvrtc.options(compile_options(scalar) + PTXAS_WARNINGS[scalar])
    binary, log = cupy_nvrtc.compile(text, options, arch, monkeypatch)
    assert len(binary) > 0
    assert log == "", f"NVRTC {cupy_nvrtc.version} warned on {os.path.basename(source)} ({scalar}, sm_{arch}):\n{log}"


def test_nvrtc_check_fails_on_a_warning_and_on_double_arithmetic_in_a_float_kernel(cupy_nvrtc, monkeypatch):
    # The check above means something: an unused variable and a double constant are both reported.
    source = r"""
extern "C" __global__ void scale(const scalar_t* x, int n, scalar_t* y) {
    int unused = 0;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] * 0.1;
}
"""
    options = cupy_nvrtc.options(compile_options("float") + PTXAS_WARNINGS["float"])
    _, log = cupy_nvrtc.compile(source, options, "80", monkeypatch)
    assert "declared but never referenced" in log
    assert "double precision" in log
    assert any(o.startswith("-arch=") for o in options) is False and "-ftz=true" in options


# ---- the cupy.ElementwiseKernel operations, wrapped in a kernel as CuPy wraps them -------------

def elementwise_kernels():
    from minidet.ops import elementwise
    from minidet.optim import GPU_STEP_KERNEL

    kernels = {f"elementwise.{name}": (*spec, elementwise.PREAMBLE) for name, spec in elementwise.GPU_KERNELS.items()}
    kernels["optim.sgd_step"] = GPU_STEP_KERNEL
    return kernels


C_TYPES = {"uint32": "unsigned int", "int32": "int", "float32": "float", "float64": "double"}


def elementwise_source(in_params, out_params, operation, preamble, scalar):
    """A __global__ kernel running `operation` for element i, its parameters bound as CuPy binds them."""
    arguments, bindings = [], []
    for params, output in ((in_params, False), (out_params, True)):
        for param in (p.split() for p in params.split(",")):
            raw = param[0] == "raw"
            c_type, name = param[-2], param[-1]
            c_type = C_TYPES.get(c_type, c_type)
            if raw:
                arguments.append(f"{'' if output else 'const '}{c_type}* {name}")
            else:
                arguments.append(f"{'' if output else 'const '}{c_type}* _raw_{name}")
                bindings.append(f"{c_type}& {name} = _raw_{name}[i];" if output else f"const {c_type} {name} = _raw_{name}[i];")
    return (f"typedef {scalar} T;\ntypedef {scalar} L;\n{preamble}\n"
            f'extern "C" __global__ void elementwise({", ".join(arguments)}, long long n) {{\n'
            f"    const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;\n"
            f"    if (i >= n) return;\n    {' '.join(bindings)}\n    {operation};\n}}\n")


@pytest.mark.parametrize("scalar", SCALARS)
@pytest.mark.parametrize("name", sorted(elementwise_kernels()))
def test_elementwise_operations_compile_with_nvrtc_without_warnings(cupy_nvrtc, name, scalar, monkeypatch):
    source = elementwise_source(*elementwise_kernels()[name], scalar)
    options = cupy_nvrtc.options(("-std=c++17",) + PTXAS_WARNINGS[scalar])
    binary, log = cupy_nvrtc.compile(source, options, "80", monkeypatch)
    assert len(binary) > 0
    assert log == "", f"NVRTC warned on {name} ({scalar}):\n{log}\n{source}"


def test_the_backends_test_kernel_compiles_with_nvrtc_without_warnings(cupy_nvrtc, monkeypatch):
    from minidet.backend import _PROBE_SOURCE

    options = cupy_nvrtc.options(compile_options() + PTXAS_WARNINGS["float"])
    binary, log = cupy_nvrtc.compile(_PROBE_SOURCE, options, "80", monkeypatch)
    assert len(binary) > 0 and log == "", log
