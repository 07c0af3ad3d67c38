"""Builds the Cython kernels in minidet/_ext during `pip install -e .`.

Every minidet/_ext/*.pyx becomes the extension minidet._ext.<name>. OpenMP is
used where the compiler accepts -fopenmp (prange then runs in parallel); without
it the same code builds and runs on one thread.
"""
import glob
import os
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def compiler_has_openmp(compiler):
    """Try to compile and link a tiny OpenMP program with this compiler."""
    source = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "check_openmp.c")
        with open(path, "w") as f:
            f.write(source)
        try:
            objects = compiler.compile([path], output_dir=tmp, extra_postargs=["-fopenmp"])
            compiler.link_executable(objects, os.path.join(tmp, "check_openmp"),
                                     extra_postargs=["-fopenmp"])
        except Exception:
            return False
    return True


class BuildExtWithOptionalOpenMP(build_ext):
    def build_extensions(self):
        openmp = self.compiler.compiler_type == "unix" and compiler_has_openmp(self.compiler)
        if not openmp:
            print("minidet: compiler has no OpenMP; the Cython kernels will run on one thread")
        for ext in self.extensions:
            if self.compiler.compiler_type == "unix":
                ext.extra_compile_args += ["-O3", "-fno-math-errno"]
            if openmp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        super().build_extensions()


extensions = [
    Extension(
        "minidet._ext." + os.path.splitext(os.path.basename(path))[0],
        [path],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for path in sorted(glob.glob(os.path.join("minidet", "_ext", "*.pyx")))
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
    cmdclass={"build_ext": BuildExtWithOptionalOpenMP},
)
