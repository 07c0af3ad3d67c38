"""Proposals that another tool computed: the .mat files of the original, and .npz and .pkl files.

Fast R-CNN does not care where its boxes come from (SPEC.md "Proposals"): selective search, EdgeBoxes,
MCG or a region proposal network all give a ranked list of boxes per image. These readers turn such
a file into minidet's proposals for every image of a split, one (P_i, 4) float32 array of
(x1, y1, x2, y2) 0-based pixel-inclusive boxes per data-set index, in the file's order (its ranking):

    .npz  one (P, 4) array per image, keyed by image id (np.savez(path, **{image_id: boxes}))
    .pkl  a dict {image id: (P, 4) array}, or a list of them in the split's order (what pickle-based
          tools write); read by minidet.data.safe_pickle, which runs no code from the file
    .mat  the original's per-split files: a cell array `boxes` with one array per image, in the
          order of its `images` cell array when there is one, else in the split's order

How the file writes its boxes is the `layout`: "xyxy0" (x1, y1, x2, y2), 0-based, as minidet and
Python tools write them; "xyxy1" the same 1-based, as MATLAB tools do; "ss_original" (y1, x1, y2, x2)
1-based, the original's selective-search files. .npz and .pkl files are taken as "xyxy0" and .mat
files as "ss_original" unless told otherwise. Boxes that reach past the image are clipped to it; a
box that lies wholly outside the image, has x2 < x1 or y2 < y1, or is not finite is an error that
names the file, the image and the box, for it means the layout or the image is not the one assumed.
"""
import os

import numpy as np

from minidet.data.proposals import clean_boxes
from minidet.data.safe_pickle import load_numpy_pickle

LAYOUTS = ("xyxy0", "xyxy1", "ss_original")
FORMATS = (".npz", ".pkl", ".mat")


class ProposalsFileError(ValueError):
    """A proposals file that cannot be read or does not fit the data set; the message names the file."""


def to_xyxy0(raw, layout):
    """(P, 4) boxes in `layout` -> (P, 4) float64 (x1, y1, x2, y2) 0-based."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    boxes = np.asarray(raw, np.float64).reshape(-1, 4)
    if layout == "ss_original":
        boxes = boxes[:, [1, 0, 3, 2]]
    return boxes if layout == "xyxy0" else boxes - 1


def _read_mat(path):
    import scipy.io

    try:
        return scipy.io.loadmat(path)
    except (OSError, ValueError, NotImplementedError) as e:
        raise ProposalsFileError(f"{path}: cannot read as a MATLAB file ({e})") from None


def _mat_variable(data, path, key):
    if key not in data:
        keys = [k for k in data if not k.startswith("__")]
        raise KeyError(f"{path}: no variable {key!r}; it holds {keys}")
    return data[key]


def load_mat_proposals(path, layout="ss_original", key="boxes", clean=False, min_size=2):
    """Proposals from a MATLAB file, in the file's order.

    A cell array `key` with one (P, 4) array per image -> a list of (P, 4) float32 (x1, y1, x2, y2)
    0-based; with layout "xyxy0" or "xyxy1", a plain (P, 4) array (one image: the demo files) ->
    (P, 4) float32. clean=True drops duplicates and boxes under min_size pixels, as training on them did.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    value = _mat_variable(_read_mat(path), path, key)

    def convert(raw):
        boxes = to_xyxy0(raw, layout).astype(np.float32)
        return clean_boxes(boxes, min_size) if clean else boxes

    if value.dtype == object:
        return [convert(cell) for cell in value.ravel()]
    if layout == "ss_original":
        raise ValueError(f"{path}: {key!r} is one {value.shape} array, not a cell array per image; "
                         f"is it a single image's boxes (layout='xyxy0')?")
    return convert(value)


def _mat_image_ids(data):
    """The ids in the original's `images` cell array (MATLAB strings), or None when there is none."""
    if "images" not in data or data["images"].dtype != object:
        return None
    return [str(np.asarray(cell).ravel()[0]) if np.asarray(cell).size else "" for cell in data["images"].ravel()]


def _by_split_order(sets, path, dataset):
    if len(sets) != len(dataset):
        raise ProposalsFileError(f"{path}: holds {len(sets)} proposal sets in a list, but the split has "
                                 f"{len(dataset)} images; a list must follow the split's order")
    return list(sets)


def _by_image_id(table, path, dataset):
    """{id: boxes} -> boxes per ds index; ids match as given or as strings (a file's keys often are)."""
    text = {str(k): v for k, v in table.items()}
    missing = [i for i in dataset.ids if i not in table and str(i) not in text]
    if missing:
        raise ProposalsFileError(f"{path}: no proposals for image {missing[0]!r}"
                                 + (f" (nor for {len(missing) - 1} more of the split)" if len(missing) > 1 else "")
                                 + f"; the file has {len(table)} images")
    return [table[i] if i in table else text[str(i)] for i in dataset.ids]


def _raw_sets(path, dataset, key):
    """The file's boxes per ds index, as written."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return _by_image_id({name: npz[name] for name in npz.files}, path, dataset)
        except (OSError, ValueError) as e:
            raise ProposalsFileError(f"{path}: cannot read as a .npz file of arrays ({e})") from None
    if ext == ".pkl":
        obj = load_numpy_pickle(path)
        if isinstance(obj, dict):
            return _by_image_id(obj, path, dataset)
        if isinstance(obj, (list, tuple)):
            return _by_split_order(obj, path, dataset)
        raise ProposalsFileError(f"{path}: holds a {type(obj).__name__}, not a dict {{image id: boxes}} "
                                 f"or a list of boxes per image")
    if ext == ".mat":
        data = _read_mat(path)
        value = _mat_variable(data, path, key)
        if value.dtype != object:
            raise ProposalsFileError(f"{path}: {key!r} is one {value.shape} array, not a cell array with "
                                     f"one array per image")
        cells, ids = list(value.ravel()), _mat_image_ids(data)
        if ids is None:
            return _by_split_order(cells, path, dataset)
        if len(ids) != len(cells):
            raise ProposalsFileError(f"{path}: {len(ids)} names in 'images' but {len(cells)} cells in {key!r}")
        return _by_image_id(dict(zip(ids, cells)), path, dataset)
    raise ProposalsFileError(f"{path}: unknown proposals format {ext!r}; minidet reads {', '.join(FORMATS)}")


def checked_boxes(raw, layout, image_size, where):
    """One image's boxes from a file -> (P, 4) float32 0-based, clipped to the image.

    raw (P, 4) (or empty) in `layout`; image_size (H, W); where: "FILE, image ID" for the errors.
    """
    array = np.asarray(raw)
    if array.dtype.kind not in "biuf":
        raise ProposalsFileError(f"{where}: boxes of type {array.dtype}, not numbers")
    if array.size == 0:
        return np.zeros((0, 4), np.float32)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ProposalsFileError(f"{where}: boxes of shape {array.shape}, not (P, 4)")
    boxes = to_xyxy0(array, layout)
    height, width = image_size
    problems = [("is not finite", ~np.isfinite(boxes).all(axis=1)),
                ("has x2 < x1 or y2 < y1", (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])),
                (f"lies outside the {width}x{height} image",
                 (boxes[:, 0] > width - 1) | (boxes[:, 1] > height - 1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0))]
    for problem, bad in problems:
        if bad.any():
            n = int(np.argmax(bad))
            raise ProposalsFileError(f"{where}: box {n} {array[n].tolist()} (read as {layout}) {problem}"
                                     f"{'' if bad.sum() == 1 else f', and {int(bad.sum()) - 1} more'}; "
                                     f"is the layout (xyxy0, xyxy1, ss_original) or the image the right one?")
    np.clip(boxes[:, 0::2], 0, width - 1, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height - 1, out=boxes[:, 1::2])
    return boxes.astype(np.float32)


def load_external_proposals(path, dataset, layout=None, key="boxes", clean=True, min_size=2, max_boxes=None):
    """Proposals for every image of a data set, from a .npz, .pkl or .mat file (module docstring).

    dataset: a VOCDataset or COCODataset (ids and image_size(i) are used). layout: how the file writes
    its boxes (LAYOUTS; default "ss_original" for .mat, else "xyxy0"); key: the .mat variable.
    clean=True drops duplicates and boxes under min_size pixels, as selective_search does;
    max_boxes keeps the first ones. Returns a list of (P_i, 4) float32, one per ds index.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: proposals file is missing")
    if layout is None:
        layout = "ss_original" if path.lower().endswith(".mat") else "xyxy0"
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    proposals = []
    for i, raw in enumerate(_raw_sets(path, dataset, key)):
        boxes = checked_boxes(raw, layout, dataset.image_size(i), f"{path}, image {dataset.ids[i]!r}")
        proposals.append(clean_boxes(boxes, min_size, max_boxes) if clean else boxes[:max_boxes])
    return proposals


def save_npz_proposals(path, dataset, proposals):
    """Write proposals (one (P_i, 4) array per ds index) as a .npz file keyed by image id."""
    from minidet.atomic import atomic_write

    if len(proposals) != len(dataset):
        raise ValueError(f"{len(proposals)} proposal sets for {len(dataset)} images")
    with atomic_write(os.fspath(path)) as f:
        np.savez(f, **{str(i): np.asarray(b, np.float32).reshape(-1, 4) for i, b in zip(dataset.ids, proposals)})
