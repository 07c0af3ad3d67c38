"""cupy.ElementwiseKernel for the stand-in: the operation compiled as C++ with g++, one loop over the elements.

As CuPy does:
- in_params and out_params are "TYPE name" lists; TYPE is a dtype name (float32, uint32, ...) or a
  placeholder (T) that the arrays bound to it decide; `raw` params are whole arrays that the
  operation indexes itself (x[k]); `i` is the element's index in C order;
- the non-raw arrays broadcast together; outputs not given are allocated, holding garbage;
- outputs may be read in the operation; a scalar argument takes its parameter's type;
- float32 kernels flush subnormals (-ftz=true), and the builds of CUPY_STANDIN_BUILD apply.
The arrays are copied into contiguous buffers for the loop (outputs copied back), so the loop sees
C-order data whatever the views' strides; a kernel's results do not depend on that.
"""
import ctypes
import re

import numpy

from ._array import empty, host_array, ndarray
from ._raw_kernel import build_modes, compiler_flags, shared_library

_C_NAMES = {"bool": "bool", "int8": "signed char", "uint8": "unsigned char", "int16": "short",
            "uint16": "unsigned short", "int32": "int", "uint32": "unsigned int", "int64": "long long",
            "uint64": "unsigned long long", "float32": "float", "float64": "double"}
_CTYPES = {"bool": ctypes.c_bool, "int8": ctypes.c_int8, "uint8": ctypes.c_uint8, "int16": ctypes.c_int16,
           "uint16": ctypes.c_uint16, "int32": ctypes.c_int32, "uint32": ctypes.c_uint32,
           "int64": ctypes.c_int64, "uint64": ctypes.c_uint64, "float32": ctypes.c_float,
           "float64": ctypes.c_double}


class Param:
    def __init__(self, text):
        words = text.split()
        self.raw = words[0] == "raw"
        if self.raw:
            words = words[1:]
        if len(words) != 2:
            raise ValueError(f"cupy stand-in: cannot read the parameter {text!r}")
        self.type, self.name = words
        self.placeholder = self.type not in _C_NAMES


def parse(params):
    return [Param(p) for p in params.split(",") if p.strip()]


class ElementwiseKernel:
    """An elementwise kernel: `operation` (C++) run for every element of the broadcast shape."""

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True, preamble="",
                 no_return=False, return_tuple=False, loop_prep="", after_loop="", options=()):
        self.in_params, self.out_params = parse(in_params), parse(out_params)
        self.operation, self.name, self.preamble = operation, name, preamble
        self.loop_prep, self.after_loop, self.options = loop_prep, after_loop, tuple(options)
        self.no_return, self.return_tuple = no_return, return_tuple
        self._libraries = {}

    def __call__(self, *args, size=None, stream=None):
        params = self.in_params + self.out_params
        if len(args) not in (len(self.in_params), len(params)):
            raise TypeError(f"cupy stand-in: {self.name} takes {len(self.in_params)} or {len(params)} "
                            f"arguments, got {len(args)}")
        for param, value in zip(params, args):
            if isinstance(value, numpy.ndarray) and value.ndim > 0:
                raise TypeError(f"cupy stand-in: {self.name} argument {param.name} is a numpy array")
        types = self._resolve_types(args)
        arrays = [a for p, a in zip(params, args) if isinstance(a, ndarray) and not p.raw]
        shape = numpy.broadcast_shapes(*(a.shape for a in arrays)) if arrays else ()
        if size is not None:
            shape = (int(size),)
        outputs = list(args[len(self.in_params):])
        for k, param in enumerate(self.out_params[len(outputs):]):
            outputs.append(empty(shape, dtype=types[param.type]))
        for param, out in zip(self.out_params, outputs):
            if not param.raw and tuple(out.shape) != tuple(shape):
                raise ValueError(f"cupy stand-in: {self.name} output {param.name} has shape {out.shape}, "
                                 f"the arguments broadcast to {shape}")
        kinds, values, buffers = [], [], []
        for param, value in zip(params, list(args[:len(self.in_params)]) + outputs):
            dtype = numpy.dtype(types[param.type])
            if isinstance(value, ndarray):
                if value.dtype != dtype:
                    raise TypeError(f"cupy stand-in: {self.name} argument {param.name} is {value.dtype}, "
                                    f"its parameter {param.type} is {dtype}")
                data = host_array(value)
                buffer = numpy.ascontiguousarray(data if param.raw else numpy.broadcast_to(data, shape))
                buffers.append((param, value, buffer))
                kinds.append("raw" if param.raw else "array")
                values.append(buffer.ctypes.data)
            elif param.raw:
                raise TypeError(f"cupy stand-in: raw parameter {param.name} needs a cupy array")
            else:
                kinds.append("scalar")
                values.append(_CTYPES[dtype.name](numpy.asarray(value).astype(dtype).item()))
        count = int(numpy.prod(shape, dtype=numpy.int64))
        self._library(types, tuple(kinds))(ctypes.c_longlong(count), *values)
        for param, value, buffer in buffers:
            if param in self.out_params and buffer is not host_array(value):
                host_array(value)[...] = buffer if param.raw else buffer.reshape(shape)
        if self.no_return:
            return None
        if len(outputs) == 1 and not self.return_tuple:
            return outputs[0]
        return tuple(outputs)

    def _resolve_types(self, args):
        """{type name: numpy dtype}: dtype names as they are, placeholders from their first array."""
        types = {name: numpy.dtype(name) for name in _C_NAMES}
        for param, value in zip(self.in_params + self.out_params, args):
            if param.placeholder and param.type not in types and isinstance(value, ndarray):
                types[param.type] = value.dtype
        missing = sorted({p.type for p in self.in_params + self.out_params if p.type not in types})
        if missing:
            raise TypeError(f"cupy stand-in: {self.name} cannot decide the types {missing} from its arrays")
        return types

    def _library(self, types, kinds):
        """The compiled loop for these placeholder types and kinds of argument (array, raw, scalar)."""
        key = (tuple(sorted((k, str(v)) for k, v in types.items() if k not in _C_NAMES)), kinds)
        if key not in self._libraries:
            source, float_kernel = self._source(types, kinds)
            library = shared_library(source, compiler_flags(source, self.options, build_modes(), float_kernel))
            function = getattr(library, f"elementwise_{self.name}")
            function.argtypes = [ctypes.c_longlong] + [
                _CTYPES[numpy.dtype(types[p.type]).name] if kind == "scalar" else ctypes.c_void_p
                for p, kind in zip(self.in_params + self.out_params, kinds)]
            function.restype = None
            self._libraries[key] = function
        return self._libraries[key]

    def _source(self, types, kinds):
        """The C++ of the loop, and whether every floating type in it is float32 (-ftz=true applies)."""
        params = self.in_params + self.out_params
        typedefs = "".join(f"typedef {_C_NAMES[numpy.dtype(types[t]).name]} {t};\n"
                           for t in sorted({p.type for p in params if p.placeholder}))
        arguments, bindings = [], []
        for p, kind in zip(params, kinds):
            c_type = _C_NAMES[numpy.dtype(types[p.type]).name]
            const = "" if p in self.out_params else "const "
            if kind == "raw":
                arguments.append(f"{const}{c_type}* {p.name}")
            elif kind == "scalar":
                arguments.append(f"const {c_type} {p.name}")
            else:
                arguments.append(f"{const}{c_type}* _raw_{p.name}")
                bindings.append(f"{const}{c_type}{'&' if not const else ''} {p.name} = _raw_{p.name}[i];")
        floats = {numpy.dtype(types[p.type]).name for p in params if numpy.dtype(types[p.type]).kind == "f"}
        source = (f"{typedefs}{self.preamble}\n"
                  f'extern "C" void elementwise_{self.name}(long long _n, {", ".join(arguments)}) {{\n'
                  f"    host_cuda::FlushToZero flush_to_zero;\n"
                  f"    {self.loop_prep}\n"
                  f"    for (long long i = 0; i < _n; ++i) {{\n"
                  f"        {' '.join(bindings)}\n"
                  f"        {self.operation};\n"
                  f"    }}\n"
                  f"    {self.after_loop}\n"
                  f"}}\n")
        return source, floats <= {"float32"}
