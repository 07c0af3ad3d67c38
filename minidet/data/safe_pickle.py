"""Pickles of NumPy arrays in dicts, lists and tuples, read without running any code.

Proposal tools (py-faster-rcnn's among them) save their boxes with pickle, and unpickling an
arbitrary file can call any function it names. This unpickler resolves only the few names that
NumPy's own arrays pickle with (the array and dtype rebuilders of NumPy 1 and 2, and `_codecs.encode`
and `bytes()`, with which protocol-2 pickles write an array's bytes) and refuses every other one, as
minidet.torch_pickle does for checkpoints. Object arrays are refused too: their elements would be
unpickled objects of any kind. Python 2 pickles are read with encoding="latin1", NumPy's advice,
so their arrays' bytes come through unchanged.
"""
import codecs
import collections
import pickle

import numpy as np


class UnsafePickleError(ValueError):
    """A pickle that names something other than NumPy arrays, dicts, lists and tuples."""


def _numpy_rebuilders():
    """The functions NumPy's arrays and scalars pickle with, whatever NumPy's module layout."""
    reconstruct = np.zeros(0).__reduce__()[0]          # numpy(._)core.multiarray._reconstruct
    frombuffer = np.zeros(0).__reduce_ex__(5)[0]       # numpy(._)core.numeric._frombuffer (protocol 5)
    scalar = np.float32(0).__reduce__()[0]             # numpy(._)core.multiarray.scalar

    def array_from_parts(subtype, shape, dtype):
        if subtype is not np.ndarray:
            raise UnsafePickleError(f"an array of type {subtype!r}, not numpy.ndarray")
        return reconstruct(subtype, shape, dtype)

    def dtype(spec, *flags):
        d = np.dtype(spec, *flags)
        if d.hasobject:
            raise UnsafePickleError("an array of Python objects (dtype object)")
        return d

    def encode(text, encoding="utf-8"):
        if codecs.lookup(encoding).name != "iso8859-1":
            raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r}")
        return codecs.encode(text, encoding)

    def empty_bytes(*args):
        if args:
            raise UnsafePickleError(f"bytes{args!r}")
        return b""

    names = {"_reconstruct": array_from_parts, "_frombuffer": frombuffer, "scalar": scalar}
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): dtype, ("_codecs", "encode"): encode,
               ("collections", "OrderedDict"): collections.OrderedDict,
               ("__builtin__", "bytes"): empty_bytes, ("builtins", "bytes"): empty_bytes}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric"):
        for name, function in names.items():
            allowed[(module, name)] = function
    return allowed


class NumpyUnpickler(pickle.Unpickler):
    """pickle.Unpickler that can build NumPy arrays, dicts, lists, tuples and plain values, and nothing else."""

    def __init__(self, file):
        super().__init__(file, encoding="latin1")
        self.allowed = _numpy_rebuilders()

    def find_class(self, module, name):
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise UnsafePickleError(f"the pickle names {module}.{name}; only NumPy arrays in dicts and lists are read")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"the pickle refers to an outside object ({pid!r})")


def load_numpy_pickle(path):
    """The object pickled in the file at path, made of NumPy arrays, dicts, lists and tuples only.

    Raises UnsafePickleError (naming the file) for anything else, ValueError for an unreadable file.
    """
    with open(path, "rb") as f:
        try:
            return NumpyUnpickler(f).load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: refused: {e}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
                AttributeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a readable pickle or truncated ({type(e).__name__}: {e})") from None
