"""cupy.ndarray for the stand-in: a numpy array that host code may only reach through explicit copies.

As in CuPy:
- operators, methods and cupy functions take cupy arrays and Python or numpy scalars; a numpy
  array among the operands is a TypeError (numpy functions and ufuncs given a cupy array defer
  to it through __array_function__ and __array_ufunc__, and meet the same check);
- numpy cannot read a cupy array implicitly (np.asarray raises); its values reach the host only
  through the copies named in ndarray's "copies to the host" section and cupy.asnumpy;
- host data reaches the device through cupy.asarray, array and ascontiguousarray, or as indices;
- a reduction returns a 0-d cupy array, never a numpy scalar;
- new memory (ndarray(shape), empty, empty_like) holds garbage, as CuPy's memory pool hands back
  what an earlier array left: here floats are NaN and every other type is all-ones bytes (0xFF),
  so a kernel or an op that leaves part of a new array unwritten gives itself away.
"""
import numpy

copies = []     # what each ndarray.set() was: "async" (pinned source, a stream) or "pageable"

_UNARY = ("neg", "pos", "abs", "invert")
_BINARY = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift")
_COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")


class ndarray:
    """A device array of the given shape and dtype (uninitialised), as cupy.ndarray(shape, dtype)."""

    def __init__(self, shape, dtype=float, order="C"):
        self._array = poisoned(numpy.empty(shape, dtype, order=order))

    # ---- copies to the host: the only ways host code reads the values (a test may intercept them)

    def get(self):
        return self._array.copy()

    def item(self):
        return self._array.item()

    # ---- a copy from the host: asynchronous when the source is pinned and a stream is given (CuPy's rule)

    def set(self, arr, stream=None):
        """Copy the numpy array `arr` (same shape and dtype) into this array."""
        from .cuda import is_pinned

        if not isinstance(arr, numpy.ndarray):
            raise TypeError(f"cupy stand-in: set() takes a numpy array, got {type(arr).__name__}")
        if arr.shape != self._array.shape or arr.dtype != self._array.dtype:
            raise ValueError(f"cupy stand-in: set() of a {arr.dtype} {arr.shape} array into a "
                             f"{self._array.dtype} {self._array.shape} one")
        copies.append("async" if is_pinned(arr) and stream is not None else "pageable")
        self._array[...] = arr

    def tolist(self):
        return self._array.tolist()

    def __float__(self):
        return float(self._array)

    def __int__(self):
        return int(self._array)

    def __index__(self):
        return self._array.__index__()

    def __bool__(self):
        return bool(self._array)

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    # ---- everything else runs "on the device" and returns cupy arrays

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return apply(getattr(ufunc, method), inputs, kwargs)

    def __array_function__(self, function, types, args, kwargs):
        return apply(function, args, kwargs)

    def __getattr__(self, name):
        # Dunder lookups (__array_interface__, __buffer__, ...) would hand numpy the data: refuse them.
        if name == "_array" or name.startswith("__"):
            raise AttributeError(name)
        attribute = getattr(self._array, name)
        if callable(attribute):
            return lambda *args, **kwargs: apply(attribute, args, kwargs)
        return on_device(attribute)

    def __getitem__(self, key):
        return on_device(self._array[host_index(key)])

    def __setitem__(self, key, value):
        if isinstance(value, numpy.ndarray) and value.ndim > 0:
            raise TypeError("cupy stand-in: assigning a numpy array into a cupy array (copy it with cupy.asarray)")
        self._array[host_index(key)] = operand(value)

    def __len__(self):
        return len(self._array)

    def __iter__(self):
        return (on_device(row) for row in self._array)

    def __repr__(self):
        return repr(self._array)

    __hash__ = None


def _operator(name):
    """numpy's operator `name` on the arrays behind the operands, which must not include a numpy array."""
    method = getattr(numpy.ndarray, name)
    return lambda self, *other: apply(method, (self, *other), {})


def _inplace_operator(name):
    """numpy's in-place operator `name` on the array behind self; returns self, as `x += y` needs."""
    def update(self, other):
        getattr(self._array, name)(operand(other))
        return self
    return update


for _name in _UNARY + _COMPARISONS:
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__"))
for _name in _BINARY:
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__"))
    setattr(ndarray, f"__r{_name}__", _operator(f"__r{_name}__"))
    setattr(ndarray, f"__i{_name}__", _inplace_operator(f"__i{_name}__"))


def on_device(value):
    """numpy results as cupy arrays (numpy scalars as 0-d arrays, as CuPy returns them); others as they are."""
    if isinstance(value, numpy.ndarray):
        array = ndarray.__new__(ndarray)
        array._array = value
        return array
    if isinstance(value, numpy.generic):
        return on_device(numpy.asarray(value))
    if isinstance(value, (tuple, list)):
        return type(value)(on_device(v) for v in value)
    return value


def operand(value):
    """The numpy value behind a cupy operand; a numpy array is refused, as CuPy refuses it."""
    if isinstance(value, ndarray):
        return value._array
    if isinstance(value, numpy.ndarray):
        raise TypeError(f"Unsupported type {type(value)}: a numpy array {value.shape} among cupy operands "
                        "(copy it to the device with cupy.asarray)")
    if isinstance(value, (tuple, list)):
        return type(value)(operand(v) for v in value)
    if isinstance(value, dict):
        return {k: operand(v) for k, v in value.items()}
    return value


def host_index(key):
    """An index with its cupy arrays unwrapped; numpy arrays and lists are allowed (CuPy copies them over)."""
    if isinstance(key, ndarray):
        return key._array
    if isinstance(key, tuple):
        return tuple(host_index(k) for k in key)
    return key


def host_array(array):
    """The numpy array behind a cupy array: its memory is the "device" memory a kernel reads and writes."""
    return array._array


def apply(function, args, kwargs):
    """function(*args, **kwargs) on the arrays behind the cupy operands, the results back as cupy arrays.

    A result that is the array behind an `out=` argument comes back as that very cupy array."""
    result = function(*operand(args), **operand(kwargs))
    out = kwargs.get("out")
    for target in out if isinstance(out, tuple) else (out,):
        if isinstance(target, ndarray) and result is target._array:
            return target
    return on_device(result)


def poisoned(array):
    """array filled with what fresh device memory may hold: NaN for floats, 0xFF bytes otherwise."""
    if array.dtype.kind in "fc":
        array.fill(numpy.nan)
    elif array.dtype.itemsize in (1, 2, 4, 8):
        unsigned = array.view(f"u{array.dtype.itemsize}")   # same item size: a view of any layout
        unsigned.fill(numpy.iinfo(unsigned.dtype).max)
    return array


def empty(shape, dtype=float, order="C"):
    """A new device array whose values are garbage (see `poisoned`)."""
    return on_device(poisoned(numpy.empty(shape, dtype, order=order)))


def empty_like(a, dtype=None, order="K", shape=None):
    """A new device array shaped as `a`, holding garbage."""
    return on_device(poisoned(numpy.empty_like(a._array if isinstance(a, ndarray) else a, dtype=dtype,
                                               order=order, shape=shape)))


# ---- host <-> device copies ------------------------------------------------------------------------

def asarray(a, dtype=None):
    """a on the device: a cupy array as it is (or cast to dtype), host data copied over."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == numpy.dtype(dtype) else a.astype(dtype)
    return on_device(numpy.array(a, dtype=dtype))


def array(obj, dtype=None):
    """A new device array holding a copy of obj's values."""
    return on_device(numpy.array(obj._array if isinstance(obj, ndarray) else obj, dtype=dtype))


def ascontiguousarray(a, dtype=None):
    """a as a C-contiguous device array: a itself when it already is one of that dtype."""
    if not isinstance(a, ndarray):
        return on_device(numpy.ascontiguousarray(a, dtype=dtype))
    contiguous = numpy.ascontiguousarray(a._array, dtype=dtype)
    return a if contiguous is a._array else on_device(contiguous)


def asnumpy(a):
    """a on the host: a copy of a cupy array's values, other data as numpy.asarray gives it."""
    return a.get() if isinstance(a, ndarray) else numpy.asarray(a)
