"""ImageNet VGG16 weights for minidet, read without torch, and minidet's own weights file.

Two sources are understood:

- torchvision's VGG16 checkpoint (`vgg16-397923af.pth`, or any `torch.save(vgg16().state_dict())`),
  in either of torch's formats, read without torch by minidet.torch_pickle.
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
import sys
import zipfile

import numpy as np

from minidet.atomic import atomic_write
from minidet.convention import CAFFE, TORCHVISION, InputConvention
from minidet.torch_pickle import read_torch_checkpoint
from minidet.errors import WeightsError

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
    arrays = {k: np.asarray(v) for k, v in state_dict.items()}
    arrays[CONVENTION_KEY] = np.array(json.dumps(convention.to_dict()))
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return os.fspath(path)


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
