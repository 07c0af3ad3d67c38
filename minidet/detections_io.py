"""Detections as files, and back: COCO's results format (JSON) and a CSV with one line per box.

Detections are lists with one entry per image: boxes (D, 4) minidet boxes (x1, y1, x2, y2,
pixel-inclusive), labels (D,) in 1..K, scores (D,).

- COCO results (.json): a list of {"image_id", "category_id", "bbox": [x, y, w, h], "score"}, what
  pycocotools' COCO.loadRes reads and COCO's evaluation server takes. Boxes go through
  minidet.data.coco.box_to_coco; image and category ids are those of minidet.data.coco.coco_ids
  (a COCODataset's own; 1..N and 1..K for a VOC-layout folder, as `minidet convert voc2coco` numbers them).
- CSV (.csv): the header `image_id,class,score,x1,y1,x2,y2`, then one line per box, with the data
  set's own image ids (VOC ids, COCO image ids) and class names, and minidet's boxes as they are.

Numbers are written in full (Python's repr of the float), so that reading a file back gives the
same float32 boxes and scores. Files are written to a temporary file and renamed.
"""
import csv
import io
import json
import math
import os

import numpy as np

from minidet.atomic import atomic_write
from minidet.data.coco import box_to_coco, coco_ids, coco_to_box, is_finite_number, read_json

CSV_HEADER = ("image_id", "class", "score", "x1", "y1", "x2", "y2")


class DetectionsError(ValueError):
    """A detections file that cannot be used; the message names the file and the entry."""


def _per_image(boxes, labels, scores):
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(f"{len(boxes)} box arrays, {len(labels)} label arrays and {len(scores)} score arrays: "
                         f"one of each per image")
    for b, l, s in zip(boxes, labels, scores):
        b, l, s = np.asarray(b, np.float64).reshape(-1, 4), np.asarray(l, np.int64), np.asarray(s, np.float64)
        if not len(b) == len(l) == len(s):
            raise ValueError(f"an image has {len(b)} boxes, {len(l)} labels and {len(s)} scores")
        yield b, l, s


def coco_results(boxes, labels, scores, image_ids, category_ids):
    """COCO result dicts of per-image detections; image_ids (N,), category_ids (K,) (label k -> category_ids[k - 1])."""
    if len(image_ids) != len(boxes):
        raise ValueError(f"{len(image_ids)} image ids for {len(boxes)} images")
    out = []
    for image_id, (b, l, s) in zip(image_ids, _per_image(boxes, labels, scores)):
        for bbox, label, score in zip(box_to_coco(b), l, s):
            out.append(dict(image_id=_plain(image_id), category_id=_plain(category_ids[int(label) - 1]),
                            bbox=[float(v) for v in bbox], score=float(score)))
    return out


def _plain(value):
    """numpy integers as Python ints, for JSON."""
    return int(value) if isinstance(value, (int, np.integer)) else value


def _write_text(path, text):
    """Write text as UTF-8, newlines as they are, atomically (minidet.atomic); returns path."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


def write_coco_results(path, boxes, labels, scores, image_ids, category_ids):
    """Write COCO results JSON (see coco_results); returns path."""
    return _write_text(path, json.dumps(coco_results(boxes, labels, scores, image_ids, category_ids)))


def write_csv(path, boxes, labels, scores, image_names, class_names):
    """Write the CSV: one line per box, image_names (N,) the images' ids, label k -> class_names[k - 1]."""
    if len(image_names) != len(boxes):
        raise ValueError(f"{len(image_names)} image ids for {len(boxes)} images")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for name, (b, l, s) in zip(image_names, _per_image(boxes, labels, scores)):
        for box, label, score in zip(b, l, s):
            writer.writerow([name, class_names[int(label) - 1], repr(float(score))] + [repr(float(v)) for v in box])
    return _write_text(path, text.getvalue())


def write_detections(path, dataset, boxes, labels, scores):
    """Write a data set's detections (lists in dataset order) as COCO results (.json) or CSV (.csv)."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        image_ids, category_ids = coco_ids(dataset)
        return write_coco_results(path, boxes, labels, scores, image_ids, category_ids)
    if ext == ".csv":
        return write_csv(path, boxes, labels, scores, list(dataset.ids), dataset.class_names)
    raise ValueError(f"{path}: detections are written as .json (COCO results) or .csv, not {ext or 'no extension'}")


def read_coco_results(path):
    """A COCO results file as a list of dicts, each checked for image_id, category_id, bbox (4 numbers), score."""
    results = read_json(path, "detections", DetectionsError)
    check_result_entries(results, path)
    return results


def check_result_entries(results, source):
    """Raise DetectionsError (naming `source` and the entry) unless results is a list of dicts with
    image_id, category_id, bbox (four finite numbers) and a finite score."""
    if not isinstance(results, list):
        raise DetectionsError(f"{source}: COCO results are a list of detections, not a {type(results).__name__}")
    for k, r in enumerate(results):
        where = f"{source}: detection {k}"
        if not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(r):
            raise DetectionsError(f"{where} is {r!r}, not an object with image_id, category_id, bbox and score")
        bbox = r["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_finite_number(v) for v in bbox)):
            raise DetectionsError(f"{where}: bbox {bbox!r} is not four finite numbers [x, y, w, h]")
        if not is_finite_number(r["score"]):
            raise DetectionsError(f"{where}: score {r['score']!r} is not a finite number")


def check_coco_results(results, image_ids, category_ids, source):
    """check_result_entries, and DetectionsError (naming `source` and the entry) for a result of an image
    or category that image_ids / category_ids do not hold."""
    check_result_entries(results, source)
    _check_references(source, [(f"detection {k}", r["image_id"], r["category_id"]) for k, r in enumerate(results)],
                      set(image_ids), set(category_ids), ("image_id", "category_id"),
                      f"the categories are {sorted(set(category_ids))}")


def _check_references(source, entries, images, classes, fields, listing):
    """DetectionsError naming `source` and the entry for the first entry (where, image, class) whose
    image is not among `images` or whose class is not among `classes`; `fields` name the entries'
    image and class for the message, `listing` says what the classes are."""
    for where, image, cls in entries:
        if image not in images:
            raise DetectionsError(f"{source}: {where} is of {fields[0]} {image!r}, "
                                  f"which is not among the data set's {len(images)} images")
        if cls not in classes:
            raise DetectionsError(f"{source}: {where} has {fields[1]} {cls!r}; {listing}")


def _read_csv(path):
    """(image id, class name, score, box) rows of a detections CSV."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            lines = list(csv.reader(f))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: detections file is missing") from None
    except UnicodeDecodeError as e:
        raise DetectionsError(f"{path}: not a text file ({e})") from None
    if not lines or tuple(c.strip() for c in lines[0]) != CSV_HEADER:
        raise DetectionsError(f"{path}: the first line must be the header {','.join(CSV_HEADER)}")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        if len(line) != len(CSV_HEADER):
            raise DetectionsError(f"{path}: line {n} has {len(line)} fields, not {len(CSV_HEADER)}")
        try:
            numbers = [float(v) for v in line[2:]]
        except ValueError:
            raise DetectionsError(f"{path}: line {n}: score and box are not numbers: {line[2:]}") from None
        if not all(math.isfinite(v) for v in numbers):
            raise DetectionsError(f"{path}: line {n}: score and box must be finite: {line[2:]}")
        rows.append((n, line[0], line[1], numbers[0], numbers[1:]))
    return rows


def load_detections(path, dataset):
    """Detections from a COCO results file (.json) or a CSV (.csv) -> (boxes, labels, scores) lists in
    dataset order: (D_i, 4) float32 minidet boxes, (D_i,) int64 in 1..K, (D_i,) float32; images without
    detections get empty arrays. A detection of an unknown image or class raises DetectionsError."""
    ext = os.path.splitext(path)[1].lower()
    per_image = [[] for _ in range(len(dataset))]            # (box, label, score)
    if ext == ".json":
        image_ids, category_ids = coco_ids(dataset)
        results = read_coco_results(path)
        check_coco_results(results, image_ids, category_ids, path)
        index = {image_id: i for i, image_id in enumerate(image_ids)}
        label = {c: k + 1 for k, c in enumerate(category_ids)}
        boxes = coco_to_box([r["bbox"] for r in results])
        for r, box in zip(results, boxes):
            per_image[index[r["image_id"]]].append((box, label[r["category_id"]], r["score"]))
    elif ext == ".csv":
        index = {str(image_id): i for i, image_id in enumerate(dataset.ids)}
        label = {name: k + 1 for k, name in enumerate(dataset.class_names)}
        rows = _read_csv(path)
        _check_references(path, [(f"line {n}", image_id, name) for n, image_id, name, _, _ in rows], index, label,
                          ("image", "class"), f"the classes are {', '.join(dataset.class_names)}")
        for _, image_id, name, score, box in rows:
            per_image[index[image_id]].append((box, label[name], score))
    else:
        raise DetectionsError(f"{path}: detections are read from .json (COCO results) or .csv, "
                              f"not {ext or 'no extension'}")
    boxes = [np.array([d[0] for d in dets], np.float32).reshape(-1, 4) for dets in per_image]
    labels = [np.array([d[1] for d in dets], np.int64) for dets in per_image]
    scores = [np.array([d[2] for d in dets], np.float32) for dets in per_image]
    return boxes, labels, scores
