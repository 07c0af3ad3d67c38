"""cupy.RawKernel for the stand-in: the CUDA source compiled as C++ with g++ and run on the CPU.

A source is compiled once per set of options into a shared library that holds, for each of its
`extern "C" __global__` kernels, a launcher running the kernel over a grid (host_cuda.h). Before a
launch the arguments are checked as CuPy would marshal them into the kernel's parameters:
- a pointer parameter takes a C-contiguous cupy array whose dtype is the pointed-to C type;
- a by-value parameter takes a numpy scalar or a size-1 numpy array of exactly the C type's size
  and kind, a Python int (passed as a 64-bit integer, bool included) or a Python float (a double).
CuPy copies those bytes into the parameter without converting them: a double read as a float, or
4 bytes read as 8, is garbage on the GPU, and 8 bytes read as 4 work only while the value is small.
Here every mismatch is a TypeError.

The build follows CuPy's: float kernels (those whose parameters and macros name no double) flush
subnormals, as -ftz=true does on the GPU (host_cuda.h). CUPY_STANDIN_BUILD adds, comma-separated:
- "fma": -ffp-contract=fast (and -mfma where the CPU has it), as NVRTC contracts a * b + c into
  one fused multiply-add by default; a result that holds only without contraction fails there;
- "shuffle": blocks and threads run in a new pseudo-random order at every launch (host_cuda.h),
  from the launch count and CUPY_STANDIN_SHUFFLE_SEED (default 0): set it to try other orders;
- "sanitize": -fsanitize=address,undefined, every error fatal; the Python process must have
  libasan preloaded (LD_PRELOAD), which `sanitizer_environment()` gives.
"""
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

import numpy

from ._array import host_array, ndarray

_HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "host_cuda.h")
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')
# Object-like macros (a name, then a body, possibly continued with backslashes): a kernel's parameter
# list may name one, and the preprocessor would expand it before nvcc saw the list.
_DEFINE = re.compile(r"^#define[ \t]+(\w+)[ \t]+((?:[^\n]*\\\n)*[^\n]*)", re.M)


def kernel_parameters(code):
    """{kernel name: its parameter list as text, object-like macros expanded} of a CUDA source."""
    defines = {name: body.replace("\\\n", " ") for name, body in _DEFINE.findall(code)}
    expand = lambda text: re.sub(r"\b\w+\b", lambda m: defines.get(m.group(0), m.group(0)), text)
    return {kernel: expand(params) for kernel, params in _KERNEL.findall(code)}


_QUALIFIERS = {"const", "volatile", "__restrict__"}
_C_TYPES = {  # C type of a parameter (or of a pointer's elements) -> its numpy dtype and ctypes type
    "bool": (numpy.bool_, ctypes.c_bool),
    "int": (numpy.int32, ctypes.c_int32),
    "unsigned int": (numpy.uint32, ctypes.c_uint32),
    "long long": (numpy.int64, ctypes.c_int64),
    "unsigned long long": (numpy.uint64, ctypes.c_uint64),
    "float": (numpy.float32, ctypes.c_float),
    "double": (numpy.float64, ctypes.c_double),
}
_LIMITS = {"block threads": 1024, "grid x": 2**31 - 1, "grid y": 65535, "grid z": 65535}
BUILDS = ("fma", "shuffle", "sanitize")


def build_modes():
    """The extra builds CUPY_STANDIN_BUILD asks for, as a sorted tuple (unknown names are an error)."""
    modes = tuple(sorted(m.strip() for m in os.environ.get("CUPY_STANDIN_BUILD", "").split(",") if m.strip()))
    unknown = [m for m in modes if m not in BUILDS]
    if unknown:
        raise ValueError(f"cupy stand-in: CUPY_STANDIN_BUILD names unknown builds {unknown}; known: {BUILDS}")
    return modes


def cpu_has_fma():
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"^flags\s*:.*\bfma\b", f.read(), re.M) is not None
    except OSError:
        return False


def sanitizer_environment(environ=None):
    """A copy of `environ` (os.environ) in which a Python process can load the "sanitize" build:
    libasan preloaded, and libstdc++ after it (else ASan cannot find the C++ runtime's __cxa_throw
    when a later module, such as OpenCV, throws); leaks not reported (Python's own allocations are
    never freed); every error fatal."""
    env = dict(os.environ if environ is None else environ)
    compiler = shutil.which("g++")
    if compiler is None:
        raise RuntimeError("cupy stand-in: g++ is needed for the sanitize build")
    libraries = [subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
                 for name in ("libasan.so", "libstdc++.so.6")]
    if not all(os.path.isabs(path) for path in libraries):
        raise RuntimeError("cupy stand-in: g++ has no libasan.so (install libasan for the sanitize build)")
    env["LD_PRELOAD"] = " ".join(p for p in (*libraries, env.get("LD_PRELOAD")) if p)
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1:halt_on_error=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    env["CUPY_STANDIN_BUILD"] = ",".join(sorted(set(build_modes_of(env)) | {"sanitize"}))
    return env


def build_modes_of(env):
    return [m.strip() for m in env.get("CUPY_STANDIN_BUILD", "").split(",") if m.strip()]


class Parameter:
    """One kernel parameter: its declaration, name, C base type (macros applied) and whether it is a pointer."""

    def __init__(self, declaration, macros):
        self.declaration = " ".join(declaration.split())
        self.name = re.findall(r"\w+", self.declaration)[-1]
        words = self.declaration[: self.declaration.rindex(self.name)].replace("*", " ").split()
        base = " ".join(macros.get(word, word) for word in words if word not in _QUALIFIERS)
        if base not in _C_TYPES:
            raise TypeError(f"cupy stand-in: parameter '{self.declaration}' has a C type it does not know")
        self.base, self.pointer = base, "*" in self.declaration
        self.dtype, self.ctype = numpy.dtype(_C_TYPES[base][0]), _C_TYPES[base][1]

    def check(self, value, where):
        """The value CuPy would pass for `value`, or a TypeError that says why it does not fit."""
        where = f"{where} parameter '{self.declaration}'"
        if self.pointer:
            if not isinstance(value, ndarray):
                raise TypeError(f"{where} needs a cupy array, got {type(value).__name__}")
            if value.dtype != self.dtype:
                raise TypeError(f"{where} points to {self.base} but gets a {value.dtype} array")
            if not value.flags.c_contiguous:
                raise ValueError(f"{where} gets a non-contiguous array (strides {value.strides})")
            return host_array(value).ctypes.data
        scalar = as_kernel_scalar(value, where)
        if scalar.dtype != self.dtype:
            raise TypeError(f"{where} is a {self.base} ({self.dtype}) but CuPy would pass a {scalar.dtype} "
                            f"({scalar.dtype.itemsize} bytes)")
        return scalar.item()


def as_kernel_scalar(value, where):
    """The numpy scalar whose bytes CuPy passes for a by-value argument."""
    if isinstance(value, ndarray):
        raise TypeError(f"{where} is passed by value but gets a cupy array (a pointer)")
    if isinstance(value, numpy.ndarray):
        if value.size != 1:
            raise TypeError(f"{where} gets a numpy array of size {value.size}")
        return value.reshape(())[()]
    if isinstance(value, numpy.generic):
        return value
    if isinstance(value, int):      # bool too: CuPy tests for int first
        return numpy.int64(value)
    if isinstance(value, float):
        return numpy.float64(value)
    raise TypeError(f"{where} gets an unsupported {type(value).__name__}")


def cache_dir():
    """Where compiled kernels are kept: CuPy's own CUPY_CACHE_DIR if set, else a folder in the temp dir."""
    default = os.path.join(tempfile.gettempdir(), f"cupy-standin-{os.getuid()}")
    return os.environ.get("CUPY_CACHE_DIR", default)


def launcher_source(name, parameters):
    """C++ for `host_launch_<name>(seed, grid, block, arguments...)`: the arguments packed for host_cuda::launch."""
    fields = "".join(f"{p.declaration}; " for p in parameters)
    names = ", ".join(p.name for p in parameters)
    unpacked = ", ".join(f"a.{p.name}" for p in parameters)
    arguments = "".join(f", {p.declaration}" for p in parameters)
    return (f'extern "C" void host_launch_{name}(unsigned long long seed, unsigned gx, unsigned gy, unsigned gz, '
            f'unsigned bx, unsigned by, unsigned bz{arguments}) {{\n'
            f"    struct Arguments {{ {fields}}} arguments{{{names}}};\n"
            f"    host_cuda::launch({{gx, gy, gz}}, {{bx, by, bz}}, [](void* packed) {{\n"
            f"        Arguments& a = *static_cast<Arguments*>(packed);\n"
            f"        {name}({unpacked});\n"
            f"    }}, &arguments, seed);\n}}\n")


def compiler_flags(code, options, modes, float_kernel):
    """g++'s flags for `code`: CuPy's -D and -std options, then the stand-in's emulation and builds."""
    flags = ["-O1", "-shared", "-fPIC", "-include", _HEADER,
             *[o for o in options if o.startswith(("-D", "-std="))]]
    if not any(o.startswith("-std=") for o in options):
        flags.append("-std=c++17")                   # CuPy's default
    if "fma" in modes:                               # GCC contracts from -O2 on
        flags += ["-O2", "-ffp-contract=fast"] + (["-mfma"] if cpu_has_fma() else [])
    else:
        flags.append("-ffp-contract=off")
    if "shuffle" in modes:
        flags.append("-DHOST_CUDA_SHUFFLE")
    if "sanitize" in modes:
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
    if "__syncthreads" in code:
        flags.append("-DHOST_CUDA_BARRIERS")
    if float_kernel:
        flags.append("-DHOST_CUDA_FTZ")              # CuPy's -ftz=true: float arithmetic flushes subnormals
    return flags


def is_float_kernel(code, options, kernels):
    """Whether -ftz=true governs the arithmetic: compiled with -Dscalar_t=float, or (without scalar_t)
    naming no double. x86 flushes doubles too, so a kernel mixing the two is run without flushing."""
    macros = dict(o[2:].split("=", 1) for o in options if o.startswith("-D") and "=" in o)
    if "scalar_t" in macros:
        return macros["scalar_t"] == "float"
    uses_double = any(p.base == "double" for parameters in kernels.values() for p in parameters)
    return not uses_double and re.search(r"\bdouble\b", code) is None


def compile_library(code, options, kernels):
    """A ctypes library of `code` compiled with g++ under `options` (-D, -std), with a launcher per kernel."""
    flags = compiler_flags(code, options, build_modes(), is_float_kernel(code, options, kernels))
    source = code + "\n" + "".join(launcher_source(name, parameters) for name, parameters in kernels.items())
    return shared_library(source, flags)


def shared_library(source, flags):
    """A ctypes library of the C++ `source` compiled with g++ `flags` (host_cuda.h included by them).

    Cached on disk by content; the generated .cpp stays beside the library, for reading g++'s errors."""
    if "-fsanitize=address,undefined" in flags and "libasan" not in os.environ.get("LD_PRELOAD", ""):
        raise RuntimeError("cupy stand-in: the sanitize build needs libasan preloaded; run the process "
                           "with the environment of cupy._raw_kernel.sanitizer_environment()")
    with open(_HEADER) as f:
        header = f.read()
    key = hashlib.sha256("\0".join([header, source, *flags]).encode()).hexdigest()[:20]
    stem = os.path.join(cache_dir(), key)
    if not os.path.exists(f"{stem}.so"):
        compiler = shutil.which("g++")
        if compiler is None:
            raise RuntimeError("cupy stand-in: g++ is needed to compile CUDA kernels for the CPU")
        os.makedirs(cache_dir(), exist_ok=True)
        partial = f"{stem}.{os.getpid()}"          # this process's own files until they are complete
        with open(f"{partial}.cpp", "w") as f:
            f.write(source)
        result = subprocess.run([compiler, f"{partial}.cpp", *flags, "-o", f"{partial}.so"],
                                capture_output=True, text=True)
        os.replace(f"{partial}.cpp", f"{stem}.cpp")
        if result.returncode != 0:
            raise RuntimeError(f"cupy stand-in: g++ could not compile {stem}.cpp:\n{result.stderr}")
        if result.stderr.strip():                    # a warning of g++ on a kernel is a fault to fix
            raise RuntimeError(f"cupy stand-in: g++ warned on {stem}.cpp:\n{result.stderr}")
        os.replace(f"{partial}.so", f"{stem}.so")   # atomic: another process sees the whole library or none
    return ctypes.CDLL(f"{stem}.so")


def check_launch(grid, block):
    """grid and block as 3-tuples of ints, within CUDA's limits."""
    grid, block = tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (3 - len(block))
    for size in grid + block:
        if isinstance(size, bool) or not isinstance(size, (int, numpy.integer)) or size < 1:
            raise ValueError(f"cupy stand-in: invalid launch grid {grid} block {block}")
    extents = {"block threads": block[0] * block[1] * block[2], "grid x": grid[0], "grid y": grid[1],
               "grid z": grid[2]}
    for what, extent in extents.items():
        if extent > _LIMITS[what]:
            raise ValueError(f"cupy stand-in: {what} {extent} exceeds CUDA's {_LIMITS[what]}")
    return tuple(int(s) for s in grid), tuple(int(s) for s in block)


_launches = 0          # the launch count seeds the shuffled orders: a new order at every launch


class RawKernel:
    """The kernel `name` of the CUDA source `code`, compiled with `options` (-D macros are applied)."""

    def __init__(self, code, name, options=()):
        self.code, self.name, self.options = code, name, tuple(options)
        macros = dict(o[2:].split("=", 1) for o in self.options if o.startswith("-D") and "=" in o)
        self.kernels = {kernel: [Parameter(p, macros) for p in params.split(",") if p.strip()]
                        for kernel, params in kernel_parameters(code).items()}
        if name not in self.kernels:
            raise ValueError(f'cupy stand-in: no extern "C" __global__ kernel {name} in the source')
        self.parameters = self.kernels[name]
        self._launcher = None

    def __call__(self, grid, block, args):
        grid, block = check_launch(grid, block)
        if len(args) != len(self.parameters):
            raise TypeError(f"cupy stand-in: {self.name} takes {len(self.parameters)} arguments, got {len(args)}")
        where = f"cupy stand-in: {self.name}"
        values = [p.check(value, f"{where} argument {k}") for k, (p, value) in enumerate(zip(self.parameters, args))]
        global _launches
        _launches += 1
        seed = _launches + (int(os.environ.get("CUPY_STANDIN_SHUFFLE_SEED", "0")) << 32)
        self.launcher()(seed, *grid, *block, *values)

    def launcher(self):
        if self._launcher is None:
            library = compile_library(self.code, self.options, self.kernels)
            launcher = getattr(library, f"host_launch_{self.name}")
            launcher.argtypes = [ctypes.c_ulonglong] + [ctypes.c_uint] * 6 + [ctypes.c_void_p if p.pointer else p.ctype
                                                       for p in self.parameters]
            launcher.restype = None
            self._launcher = launcher
        return self._launcher
