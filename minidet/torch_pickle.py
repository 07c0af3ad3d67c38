"""torch.save files read without torch: a restricted unpickler that maps tensors to NumPy arrays.

Either of torch's two formats: the zip archive of torch >= 1.6 (`<name>/data.pkl` plus one file
`<name>/data/<key>` of raw little-endian bytes per storage) and the older "sequential pickles" format
that the 2017 torchvision files use (magic number, protocol, system info, the pickled object, the
list of storage keys, then each storage as an int64 element count and its bytes). Both pickle with
persistent ids `('storage', StorageType, key, location, numel, ...)` for the storages and
`torch._utils._rebuild_tensor[_v2](storage, offset, size, stride, ...)` for the tensors. The
unpickler maps exactly those names (and `collections.OrderedDict`) to NumPy and refuses every other
class, so a checkpoint cannot run code. The tar format of torch < 0.4 is not read.
"""
import collections
import os
import pickle
import zipfile

import numpy as np

from minidet.errors import WeightsError

TORCH_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
TORCH_PROTOCOL_VERSION = 1001

# torch storage class -> element type; bfloat16 has no NumPy type and is widened to float32
STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "b1",
}




class _StorageType:
    """Stands for a torch storage class (torch.FloatStorage, ...) met in the pickle."""

    def __init__(self, name):
        self.name = name
        code = STORAGE_DTYPES[name]
        self.dtype = np.dtype("<u2") if code == "bf16" else np.dtype(code).newbyteorder("<")
        self.is_bfloat16 = code == "bf16"


class _Storage:
    """One flat storage: its element type and count; `data` (1-D array) once its bytes are read."""

    def __init__(self, storage_type, numel):
        self.type, self.numel, self.data = storage_type, int(numel), None

    def array(self):
        return self.data


class _StorageView:
    """A slice [offset, offset + numel) of another storage (legacy format only)."""

    def __init__(self, base, offset, numel):
        self.base, self.offset, self.numel = base, int(offset), int(numel)
        self.type = base.type

    def array(self):
        return self.base.data[self.offset:self.offset + self.numel]


class _PendingTensor:
    """A tensor as the pickle describes it; made into a NumPy array once its storage is read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    # torch._utils._rebuild_tensor(storage, offset, size, stride) and _v2, which adds
    # requires_grad, backward_hooks and metadata (irrelevant to the values)
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    # an nn.Parameter saved as such: its tensor is all we need
    return data


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): tuple,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict into placeholders; any class but the few above is refused."""

    def __init__(self, file, path, load_storage):
        super().__init__(file, encoding="utf-8")
        self.path, self.load_storage = path, load_storage

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightsError(
            f"{self.path}: the checkpoint pickles {module}.{name}; minidet reads only state dicts of "
            f"float tensors (save model.state_dict(), not the model or other objects)")

    def persistent_load(self, saved_id):
        if not isinstance(saved_id, tuple) or not saved_id:
            raise WeightsError(f"{self.path}: unexpected persistent id {saved_id!r} in the pickle")
        kind = saved_id[0].decode("ascii") if isinstance(saved_id[0], bytes) else saved_id[0]
        if kind != "storage":
            raise WeightsError(f"{self.path}: the checkpoint holds a pickled {kind!r} (a whole model?); "
                               "minidet reads only state dicts (save model.state_dict())")
        storage_type = saved_id[1]
        if not isinstance(storage_type, _StorageType):
            raise WeightsError(f"{self.path}: unknown storage type {storage_type!r}")
        key = saved_id[2].decode("ascii") if isinstance(saved_id[2], bytes) else str(saved_id[2])
        return self.load_storage(key, storage_type, int(saved_id[4]), saved_id[5:])


def _unpickle(file, path, load_storage):
    try:
        return _RestrictedUnpickler(file, path, load_storage).load()
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, UnicodeDecodeError) as err:
        raise WeightsError(f"{path}: not a readable torch checkpoint or truncated "
                           f"({type(err).__name__}: {err})") from None


def _storage_from_bytes(raw, storage_type, numel, path, what):
    nbytes = numel * storage_type.dtype.itemsize
    if len(raw) < nbytes:
        raise WeightsError(f"{path}: {what} holds {len(raw)} bytes but needs {nbytes} "
                           f"({numel} x {storage_type.name}): the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=storage_type.dtype, count=numel)


def _to_array(pending, name, path):
    """The NumPy array (native byte order, C-contiguous, its own memory) of one pending tensor."""
    storage = pending.storage.array()
    size, stride = pending.size, pending.stride
    if len(size) != len(stride):
        raise WeightsError(f"{path}: tensor {name}: size {size} and stride {stride} disagree")
    if 0 in size:
        values = np.zeros(size, dtype=storage.dtype)
    else:
        last = pending.offset + sum((n - 1) * s for n, s in zip(size, stride))
        if pending.offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
            raise WeightsError(f"{path}: tensor {name} (size {size}, stride {stride}, offset "
                               f"{pending.offset}) reaches past its storage of {storage.size} elements: "
                               "the file is corrupt")
        itemsize = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(storage[pending.offset:], shape=size,
                                               strides=tuple(s * itemsize for s in stride))
        values = np.array(view, order="C", copy=True)
    if pending.storage.type.is_bfloat16:  # bfloat16 is the upper half of a float32
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(values.dtype.newbyteorder("="), copy=False)


def _materialise(obj, path, name=""):
    """Replace every pending tensor inside dicts, lists and tuples by its array."""
    if isinstance(obj, _PendingTensor):
        return _to_array(obj, name, path)
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialise(v, path, k)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, path, name) for v in obj)
    return obj


def _read_torch_zip(path):
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if not pickles:
                raise WeightsError(f"{path}: a zip archive without <name>/data.pkl: not a torch checkpoint")
            prefix = pickles[0][:-len("data.pkl")]
            byteorder = archive.read(prefix + "byteorder") if prefix + "byteorder" in names else b"little"
            if byteorder != b"little":
                raise WeightsError(f"{path}: a {byteorder.decode(errors='replace')}-endian checkpoint; "
                                   "minidet reads little-endian ones")
            storages = {}

            def load_storage(key, storage_type, numel, unused):
                if key not in storages:
                    member = f"{prefix}data/{key}"
                    if member not in names:
                        raise WeightsError(f"{path}: storage {member} is missing from the archive: "
                                           "the file is truncated or corrupt")
                    storage = _Storage(storage_type, numel)
                    storage.data = _storage_from_bytes(archive.read(member), storage_type, numel, path, member)
                    storages[key] = storage
                return storages[key]

            with archive.open(pickles[0]) as f:
                obj = _unpickle(f, path, load_storage)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise WeightsError(f"{path}: the zip archive is corrupt or truncated ({err})") from None
    return _materialise(obj, path)


def _read_torch_legacy(path):
    with open(path, "rb") as f:
        def no_storage(*unused):
            raise WeightsError(f"{path}: a storage in the header pickles: not a torch checkpoint")

        magic = _unpickle(f, path, no_storage)
        if magic != TORCH_MAGIC_NUMBER:
            raise WeightsError(f"{path}: not a torch checkpoint (neither a zip archive nor torch's legacy "
                               "format, whose first pickle is its magic number)")
        protocol = _unpickle(f, path, no_storage)
        if protocol != TORCH_PROTOCOL_VERSION:
            raise WeightsError(f"{path}: torch legacy format with protocol {protocol}; minidet reads "
                               f"{TORCH_PROTOCOL_VERSION}")
        _unpickle(f, path, no_storage)  # system info: byte order and type sizes of the writer
        storages = {}

        def load_storage(key, storage_type, numel, rest):
            if key not in storages:
                storages[key] = _Storage(storage_type, numel)
            view = rest[0] if rest else None   # legacy ids end with view_metadata
            if view is not None:
                view_key, offset, view_numel = view
                return _StorageView(storages[key], offset, view_numel)
            return storages[key]

        obj = _unpickle(f, path, load_storage)
        keys = _unpickle(f, path, no_storage)
        for key in keys:
            key = key.decode("ascii") if isinstance(key, bytes) else str(key)
            if key not in storages:
                raise WeightsError(f"{path}: storage {key} is listed but no tensor uses it: corrupt file")
            storage = storages[key]
            header = f.read(8)
            if len(header) < 8:
                raise WeightsError(f"{path}: the file ends before storage {key}: it is truncated")
            numel = int(np.frombuffer(header, dtype="<i8")[0])
            if numel != storage.numel:
                raise WeightsError(f"{path}: storage {key} has {numel} elements, the pickle says "
                                   f"{storage.numel}: the file is corrupt")
            raw = f.read(numel * storage.type.dtype.itemsize)
            storage.data = _storage_from_bytes(raw, storage.type, numel, path, f"storage {key}")
        missing = [key for key, storage in storages.items() if storage.data is None]
        if missing:
            raise WeightsError(f"{path}: storages {missing[:5]} have no data: the file is corrupt")
    return _materialise(obj, path)


def read_torch_checkpoint(path):
    """The object a torch.save(...) file holds, with every tensor as a NumPy array; no torch needed.

    Reads the zip format (torch >= 1.6) and the legacy sequential-pickle format (torchvision's
    2017 ImageNet files). Returns what was saved, typically an OrderedDict {name: array}.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        return _read_torch_zip(path)
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        raise WeightsError(f"{path}: a zip archive without its central directory: the file is truncated "
                           "(an interrupted download?)")
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise WeightsError(f"{path}: the tar format of torch < 0.4 is not read by minidet; load it with torch "
                           "and save it again (torch.save(torch.load(path), path))")
    if not head.startswith(b"\x80"):
        raise WeightsError(f"{path}: not a torch checkpoint (neither a zip archive nor a pickle)")
    return _read_torch_legacy(path)
