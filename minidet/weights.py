"""ImageNet VGG16 weights for minidet, read without torch, and minidet's own weights file.

Two sources are understood:

- torchvision's VGG16 checkpoint (`vgg16-397923af.pth`, or any `torch.save(vgg16().state_dict())`),
  in either of torch's two formats: the zip archive of torch >= 1.6 (`<name>/data.pkl` plus one file
  `<name>/data/<key>` of raw little-endian bytes per storage) and the older "sequential pickles"
  format that the 2017 torchvision files use (magic number, protocol, system info, the pickled
  state dict, the list of storage keys, then each storage as an int64 element count and its bytes).
  Both pickle the state dict with persistent ids `('storage', StorageType, key, location, numel, ...)`
  for the storages and `torch._utils._rebuild_tensor[_v2](storage, offset, size, stride, ...)` for
  the tensors. A restricted unpickler maps exactly those names (and `collections.OrderedDict`) to
  NumPy and refuses every other class, so a checkpoint cannot run code. The tar format of torch < 0.4
  is not read (load it with torch and save it again).
  torchvision's names become Caffe's: `features.N` (N = 0, 2, 5, ..., 28) -> `conv1_1` .. `conv5_3`,
  `classifier.0` / `classifier.3` -> `fc6` / `fc7`; `classifier.6`, the 1000-way ImageNet
  classifier, is dropped.
- minidet's `.npz`: arrays under minidet's names (`conv1_1.weight`, ..., `fc7.bias`, possibly
  `cls_score.*` and `bbox_pred.*`), e.g. converted from the Caffe VGG16, plus the entry
  `__convention__`: a JSON string of the `InputConvention` the weights expect. An `.npz` without it
  is taken to be in Caffe's convention (BGR, 0..255, minus the pixel means).

    state_dict, convention = load_weights("vgg16-397923af.pth")   # {name: array}, TORCHVISION
    convert_weights("vgg16-397923af.pth", "vgg16.npz")           # same arrays + convention, one file
"""
import argparse
import collections
import json
import os
import pickle
import sys
import tempfile
import zipfile

import numpy as np

from minidet.convention import CAFFE, TORCHVISION, InputConvention

CONVENTION_KEY = "__convention__"

# torchvision vgg16().features: the index of each 3x3 convolution -> its Caffe name
TORCHVISION_VGG16_CONVS = {0: "conv1_1", 2: "conv1_2", 5: "conv2_1", 7: "conv2_2",
                           10: "conv3_1", 12: "conv3_2", 14: "conv3_3",
                           17: "conv4_1", 19: "conv4_2", 21: "conv4_3",
                           24: "conv5_1", 26: "conv5_2", 28: "conv5_3"}
# torchvision vgg16().classifier: index -> Caffe name; classifier.6 (ImageNet's 1000 classes) is dropped
TORCHVISION_VGG16_FCS = {0: "fc6", 3: "fc7"}
TORCHVISION_DROPPED = ("classifier.6.weight", "classifier.6.bias")

VGG16_CONVS = tuple(TORCHVISION_VGG16_CONVS.values())
ROI_POOL_CELLS = 7 * 7   # fc6 reads the 7x7 RoI-pooled conv5_3 map, flattened C-major

TORCH_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
TORCH_PROTOCOL_VERSION = 1001

# torch storage class -> element type; bfloat16 has no NumPy type and is widened to float32
STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "b1",
}


class WeightsError(ValueError):
    """A weights file that cannot be read or does not hold what it should; the message names the file."""


# ---------------------------------------------------------------------------------------------
# torch checkpoints, without torch


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


# ---------------------------------------------------------------------------------------------
# VGG16 names and shapes


def _unwrap_state_dict(obj, path):
    """The state dict inside a checkpoint: the object itself, or its 'state_dict' / 'model' entry."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict {{name: tensor}}")
    if obj and all(k.startswith("module.") for k in obj):   # saved from a DataParallel wrapper
        obj = collections.OrderedDict((k[len("module."):], v) for k, v in obj.items())
    return obj


def torchvision_vgg16_names():
    """{torchvision name: minidet name} of the VGG16 parameters minidet uses."""
    names = {}
    for index, name in TORCHVISION_VGG16_CONVS.items():
        for kind in ("weight", "bias"):
            names[f"features.{index}.{kind}"] = f"{name}.{kind}"
    for index, name in TORCHVISION_VGG16_FCS.items():
        for kind in ("weight", "bias"):
            names[f"classifier.{index}.{kind}"] = f"{name}.{kind}"
    return names


def _describe_keys(keys, limit=6):
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def vgg16_from_torchvision(state_dict, path="<state dict>"):
    """torchvision VGG16 names -> minidet names (Caffe's); the ImageNet classifier is dropped.

    state_dict: {"features.0.weight": (64, 3, 3, 3), ..., "classifier.6.bias": (1000,)}.
    Returns {"conv1_1.weight": ..., "fc7.bias": ...} (26 arrays), float32 unless saved otherwise.
    The shapes are checked as a chain (each layer's input is the previous one's output), so a
    width-scaled VGG16 converts too, while a wrong-shaped tensor or another network is refused.
    """
    state_dict = _unwrap_state_dict(state_dict, path)
    names = torchvision_vgg16_names()
    missing = [k for k in names if k not in state_dict]
    extra = [k for k in state_dict if k not in names and k not in TORCHVISION_DROPPED]
    if missing:
        raise WeightsError(
            f"{path}: not a torchvision VGG16 checkpoint: {len(missing)} of its {len(names)} tensors are "
            f"missing ({_describe_keys(missing)}); the file holds {_describe_keys(state_dict)}")
    if extra:
        raise WeightsError(f"{path}: not a plain torchvision VGG16 checkpoint: unexpected entries "
                           f"{_describe_keys(extra)} (minidet converts vgg16, without batch norm)")
    converted = collections.OrderedDict()
    for torch_name, name in names.items():
        value = state_dict[torch_name]
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            raise WeightsError(f"{path}: {torch_name} is not a float tensor ({type(value).__name__})")
        converted[name] = value
    check_vgg16_shapes(converted, path, origin={v: k for k, v in names.items()})
    return converted


def check_vgg16_shapes(state_dict, path="<state dict>", origin=None):
    """Raise WeightsError unless the VGG16 layers present chain up: 3 input channels, 3x3 kernels,
    each layer's input = the previous layer's output, fc6's input = conv5_3's channels x 7 x 7,
    bbox_pred's outputs = 4 x cls_score's. Layers absent from the dict are not checked.
    origin: {minidet name: name in the file}, for the messages.
    """
    origin = origin or {}

    def fail(key, expected):
        shown = f"{origin[key]} ({key})" if key in origin else key
        raise WeightsError(f"{path}: {shown} has shape {tuple(state_dict[key].shape)}, expected {expected}: "
                           "not a VGG16 of this structure, or a corrupt file")

    def check(name, fan_in, kernel):
        """Check name.weight / name.bias; return the layer's output count (None when absent)."""
        weight, bias = f"{name}.weight", f"{name}.bias"
        if weight not in state_dict:
            return None
        w = state_dict[weight]
        expected_rank = 2 + len(kernel)
        if w.ndim != expected_rank or tuple(w.shape[2:]) != kernel or (fan_in is not None and w.shape[1] != fan_in):
            fan = "C_in" if fan_in is None else fan_in
            fail(weight, "(C_out, " + ", ".join(str(d) for d in (fan,) + kernel) + ")")
        if bias in state_dict and tuple(state_dict[bias].shape) != (w.shape[0],):
            fail(bias, f"({w.shape[0]},)")
        return int(w.shape[0])

    channels = 3
    for name in VGG16_CONVS:
        channels = check(name, channels, (3, 3))
    fc6 = check("fc6", None if channels is None else channels * ROI_POOL_CELLS, ())
    fc7 = check("fc7", fc6, ())
    classes = check("cls_score", fc7, ())
    boxes = check("bbox_pred", fc7, ())
    if classes is not None and boxes is not None and boxes != 4 * classes:
        fail("bbox_pred.weight", f"({4 * classes}, {fc7}): four deltas for each of the {classes} classes")


# ---------------------------------------------------------------------------------------------
# minidet's .npz


def _is_npz(path):
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return not any(n.endswith("/data.pkl") for n in archive.namelist())


def read_npz(path):
    """(state_dict, convention) of a minidet .npz; the convention defaults to CAFFE when unrecorded."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise WeightsError(f"{path}: not a readable .npz, or truncated ({err})") from None
    convention = CAFFE
    if CONVENTION_KEY in arrays:
        try:
            convention = InputConvention.from_dict(json.loads(str(arrays.pop(CONVENTION_KEY))))
        except (ValueError, KeyError, TypeError) as err:
            raise WeightsError(f"{path}: its {CONVENTION_KEY} entry is not a valid input convention ({err})") from None
    arrays = collections.OrderedDict((k, v) for k, v in arrays.items() if not k.startswith("__"))
    if any(k.startswith(("features.", "classifier.")) for k in arrays):
        raise WeightsError(f"{path}: holds torchvision names ({_describe_keys(arrays)}); convert the "
                           "torchvision .pth itself: minidet convert-weights vgg16.pth vgg16.npz")
    known = VGG16_CONVS + ("fc6", "fc7", "cls_score", "bbox_pred")
    if not any(k.split(".")[0] in known for k in arrays):
        raise WeightsError(f"{path}: holds no minidet layer (conv1_1.weight ... fc7.bias); it holds "
                           f"{_describe_keys(arrays)}")
    check_vgg16_shapes(arrays, path)
    return arrays, convention


def load_weights(path):
    """(state_dict {minidet name: numpy array}, InputConvention) of a weights file.

    path: a torchvision VGG16 checkpoint (.pth, either torch format; convention TORCHVISION) or a
    minidet .npz (convention as recorded, else CAFFE). The format is told from the content.
    Raises WeightsError, naming the file and the fault, for a truncated or corrupt file, a
    wrong-shaped tensor or a checkpoint of another network; FileNotFoundError when absent.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if _is_npz(path):
        return read_npz(path)
    return vgg16_from_torchvision(read_torch_checkpoint(path), path), TORCHVISION


def save_weights(path, state_dict, convention):
    """Write {name: array} and the convention to an .npz, atomically (a temporary file, then rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in state_dict.items()}
    arrays[CONVENTION_KEY] = np.array(json.dumps(convention.to_dict()))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def convert_weights(src, dst):
    """Read src (torchvision .pth or minidet .npz) and write dst, a minidet .npz with its convention.

    Returns (state_dict, convention) as written.
    """
    state_dict, convention = load_weights(src)
    save_weights(dst, state_dict, convention)
    return state_dict, convention


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="minidet convert-weights",
        description="Convert ImageNet VGG16 weights to minidet's .npz: a torchvision checkpoint "
                    "(e.g. vgg16-397923af.pth, read without torch) or a minidet .npz. The output holds "
                    "conv1_1 .. conv5_3, fc6 and fc7 under Caffe's names (the 1000-way ImageNet "
                    "classifier is dropped) and records the input convention the weights expect.")
    parser.add_argument("src", help="torchvision VGG16 .pth, or a minidet .npz")
    parser.add_argument("dst", help="output .npz (written atomically)")
    args = parser.parse_args(argv)
    try:
        state_dict, convention = convert_weights(args.src, args.dst)
    except (WeightsError, FileNotFoundError) as err:
        print(f"minidet convert-weights: error: {err}", file=sys.stderr)
        return 1
    count = sum(int(np.prod(v.shape)) for v in state_dict.values())
    print(f"wrote {args.dst}: {len(state_dict)} arrays, {count:,} parameters, input convention "
          f"{convention.channel_order} x{convention.pixel_range:g} mean {list(convention.mean)} "
          f"std {list(convention.std)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
