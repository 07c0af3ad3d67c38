"""A data set in COCO's JSON format (an instances_*.json file and a folder of images), read like VOCDataset.

The file holds `images` (id, file_name, width, height), `annotations` (id, image_id, category_id,
bbox [x, y, w, h], area, iscrowd) and `categories` (id, name). The categories, in the order of
their ids, are the classes: label k means class_names[k - 1], 0 is background, and
category_ids[k - 1] is the file's id of class k. With `class_names` the labels follow that order
instead (each name must be a category; annotations of other categories are an error), so that a
model's labels and a file's categories can be matched by name.

Boxes. minidet's boxes are (x1, y1, x2, y2), 0-based and pixel-inclusive: they cover the pixels
x1..x2, so their width is x2 - x1 + 1. COCO's bbox lives in continuous coordinates, where pixel i
spans [i, i + 1): the same box is [x1, y1, x2 - x1 + 1, y2 - y1 + 1]. box_to_coco and coco_to_box
are the one place where this is written. Boxes under a pixel wide (0 < w < 1, seen in COCO) come
out with x2 < x1; minidet's +1 areas and IoUs still treat them as w wide.

Crowd regions (iscrowd=1) and objects flagged `difficult` or `ignore` are kept, with
`difficult` set: training and the VOC evaluation ignore them as they ignore VOC's difficult
objects. `crowd` says which of them are crowds, the regions COCO's evaluation matches by its own
rule (minidet.coco_eval hands iscrowd to pycocotools as written).

Bad input raises AnnotationError (a missing image file FileNotFoundError), with one message that
names the file and the entry: malformed JSON, missing keys, wrong types, repeated ids or category
names, unknown image or category ids, boxes with no size or outside their image.
"""
import json
import math
import os
import warnings

import numpy as np

from minidet.data.dataset import AnnotationError, ImageDataset
from minidet.data.voc import BORDER_TOLERANCE


def box_to_coco(boxes):
    """minidet boxes (N, 4) (x1, y1, x2, y2) pixel-inclusive -> COCO bboxes (N, 4) float64 [x, y, w, h]."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2] + 1], axis=1)


def coco_to_box(bboxes):
    """COCO bboxes (N, 4) [x, y, w, h] -> minidet boxes (N, 4) float64 (x1, y1, x2, y2) pixel-inclusive."""
    bboxes = np.asarray(bboxes, np.float64).reshape(-1, 4)
    return np.concatenate([bboxes[:, :2], bboxes[:, :2] + bboxes[:, 2:] - 1], axis=1)


def coco_ids(dataset):
    """(image ids (N,), category ids (K,)): the ids under which a data set's images and labels appear in
    COCO files. A COCODataset's own; for any other data set (a VOC-layout folder), 1..N in dataset order
    and 1..K in label order, as minidet.convert.voc_to_coco_dict numbers them."""
    if isinstance(dataset, COCODataset):
        return list(dataset.ids), list(dataset.category_ids)
    return list(range(1, len(dataset) + 1)), list(range(1, len(dataset.class_names) + 1))


def read_json(path, kind="annotation", error=AnnotationError):
    """The parsed JSON of a file; FileNotFoundError when it is missing ("PATH: KIND file is missing"),
    `error` naming the file when it is not JSON."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: {kind} file is missing")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: malformed JSON ({e})") from None


def is_finite_number(value):
    """True for an int or a finite float as JSON gives them (not a bool, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _get(entry, key, kind, where, required=True, default=None):
    """entry[key] checked to be of `kind` ("int", "number", "str", "flag", "list"); `where` names the entry."""
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where} is a {type(entry).__name__}, not an object")
    if key not in entry:
        if required:
            raise AnnotationError(f"{where} has no {key!r}")
        return default
    value = entry[key]
    ok = {"int": is_finite_number(value) and float(value).is_integer(),
          "number": is_finite_number(value),
          "str": isinstance(value, str) and value.strip() != "",
          "flag": value in (0, 1) and not isinstance(value, float),
          "list": isinstance(value, list)}[kind]
    if not ok:
        wanted = {"int": "an integer", "number": "a finite number", "str": "a non-empty string",
                  "flag": "0 or 1", "list": "a list"}[kind]
        raise AnnotationError(f"{where}: {key!r} is {value!r}, not {wanted}")
    return int(value) if kind in ("int", "flag") else value


def _section(data, key, path):
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: the file holds a {type(data).__name__}, not a COCO object "
                              f"with images, annotations and categories")
    return _get(data, key, "list", f"{path}")


def _entries(data, key, path, noun):
    """(where, id, entry) for each entry of data[key] in the file's order, its id checked to be an
    integer that no earlier entry has; `where` names the entry (and its id) for messages."""
    seen = set()
    for k, entry in enumerate(_section(data, key, path)):
        where = f"{path}: {key}[{k}]"
        entry_id = _get(entry, "id", "int", where)
        where = f"{where} (id {entry_id})"
        if entry_id in seen:
            raise AnnotationError(f"{where}: {noun} id {entry_id} is repeated")
        seen.add(entry_id)
        yield where, entry_id, entry


def _categories(data, path, class_names):
    """{category id: label} and the class names and category ids in label order."""
    names_by_id = {}
    for k, cat in enumerate(_section(data, "categories", path)):
        where = f"{path}: categories[{k}]"
        cat_id, name = _get(cat, "id", "int", where), _get(cat, "name", "str", where).strip()
        if cat_id in names_by_id:
            raise AnnotationError(f"{where}: category id {cat_id} is repeated")
        if name in names_by_id.values():
            raise AnnotationError(f"{where}: category name {name!r} is repeated")
        names_by_id[cat_id] = name
    if not names_by_id:
        raise AnnotationError(f"{path}: no categories")
    if class_names is None:
        order = sorted(names_by_id)
    else:
        ids_by_name = {name: cat_id for cat_id, name in names_by_id.items()}
        missing = [n for n in class_names if str(n).strip() not in ids_by_name]
        if missing:
            raise AnnotationError(f"{path}: class names {missing} are not among the file's categories "
                                  f"{sorted(ids_by_name)}")
        if len(set(class_names)) != len(class_names):
            raise AnnotationError(f"class_names: duplicate class names {list(class_names)}")
        order = [ids_by_name[str(n).strip()] for n in class_names]
    labels = {cat_id: k + 1 for k, cat_id in enumerate(order)}
    return labels, tuple(names_by_id[c] for c in order), tuple(order), names_by_id


def _images(data, path):
    """The image entries, checked, in the file's order: list of dict(id, file_name, height, width)."""
    images = []
    for where, image_id, image in _entries(data, "images", path, "image"):
        entry = dict(id=image_id, file_name=_get(image, "file_name", "str", where),
                     width=_get(image, "width", "int", where), height=_get(image, "height", "int", where))
        if entry["width"] < 1 or entry["height"] < 1:
            raise AnnotationError(f"{where}: image size {entry['width']}x{entry['height']} is empty")
        images.append(entry)
    return images


def parse_coco(data, path, class_names=None):
    """Check a parsed COCO instances file and gather each image's objects.

    data: the file's JSON; path: its name, for messages. Returns dict(images: list of dict(id,
    file_name, height, width), class_names, category_ids, objects: per image dict(boxes (G, 4)
    float32 minidet boxes clipped to the image, labels (G,) int64, difficult (G,) bool, crowd (G,)
    bool, written (G, 4): the boxes as the file gives them, unclipped, trained (G,) bool: the ones
    training uses), ground_truth: the annotations as pycocotools reads them (bbox as written, area, iscrowd)).
    """
    labels_by_cat, names, cat_ids, cat_names = _categories(data, path, class_names)
    images = _images(data, path)
    index = {image["id"]: n for n, image in enumerate(images)}
    rows = [[] for _ in images]               # per image: (box, label, difficult, crowd)
    ground_truth = []
    for where, ann_id, ann in _entries(data, "annotations", path, "annotation"):
        image_id, cat_id = _get(ann, "image_id", "int", where), _get(ann, "category_id", "int", where)
        if image_id not in index:
            raise AnnotationError(f"{where}: image_id {image_id} is not among the images")
        if cat_id not in cat_names:
            raise AnnotationError(f"{where}: category_id {cat_id} is not among the categories "
                                  f"{sorted(cat_names)}")
        if cat_id not in labels_by_cat:
            raise AnnotationError(f"{where}: category {cat_names[cat_id]!r} (id {cat_id}) is not among "
                                  f"the classes {list(names)}")
        bbox = _get(ann, "bbox", "list", where)
        if len(bbox) != 4 or not all(is_finite_number(v) for v in bbox):
            raise AnnotationError(f"{where}: 'bbox' is {bbox!r}, not four finite numbers [x, y, w, h]")
        x, y, w, h = (float(v) for v in bbox)
        image = images[index[image_id]]
        if w <= 0 or h <= 0:
            raise AnnotationError(f"{where}: bbox {bbox} has no size (w and h must be > 0)")
        width, height = image["width"], image["height"]
        tol = BORDER_TOLERANCE
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            raise AnnotationError(f"{where}: bbox {bbox} lies outside the {width}x{height} image "
                                  f"{image_id} ({image['file_name']})")
        crowd = _get(ann, "iscrowd", "flag", where, required=False, default=0)
        flagged = any(_get(ann, key, "flag", where, required=False, default=0) for key in ("difficult", "ignore"))
        area = _get(ann, "area", "number", where, required=False, default=w * h)
        (x1, y1, x2, y2), = coco_to_box([[x, y, w, h]])
        box = (min(max(x1, 0), width - 1), min(max(y1, 0), height - 1),
               min(max(x2, 0), width - 1), min(max(y2, 0), height - 1))
        trained = x2 > x1 and y2 > y1          # the training rule of VOCDataset: a point or a line is left out
        if not trained:
            warnings.warn(f"{where}: bbox {bbox} ({cat_names[cat_id]}) is a pixel wide or high (no extent, a "
                          f"point or a line); left out of training (evaluation counts it as written)", stacklevel=3)
        rows[index[image_id]].append((box, labels_by_cat[cat_id], bool(crowd or flagged), bool(crowd),
                                      (x1, y1, x2, y2), trained))
        ground_truth.append(dict(id=ann_id, image_id=image_id, category_id=cat_id, bbox=[x, y, w, h],
                                 area=float(area), iscrowd=crowd))
    objects = [dict(boxes=np.array([r[0] for r in per], np.float32).reshape(-1, 4),
                    labels=np.array([r[1] for r in per], np.int64),
                    difficult=np.array([r[2] for r in per], bool),
                    crowd=np.array([r[3] for r in per], bool),
                    written=np.array([r[4] for r in per], np.float32).reshape(-1, 4),
                    trained=np.array([r[5] for r in per], bool)) for per in rows]
    categories = [dict(id=c, name=cat_names[c]) for c in sorted(cat_names)]
    return dict(images=images, class_names=names, category_ids=cat_ids, objects=objects,
                ground_truth=dict(images=images, categories=categories, annotations=ground_truth))


class COCODataset(ImageDataset):
    """The images of a COCO instances file, with their annotations; the interface of VOCDataset.

    ds[i] -> dict(id (the COCO image id), image (H, W, 3) uint8 BGR, boxes (G, 4) float32 0-based
    pixel-inclusive, labels (G,) int64 in 1..K, difficult (G,) bool, crowd (G,) bool): every object,
    crowds and flagged objects marked difficult. Images come in the file's order; images without
    objects are kept. All annotations are read and checked once, when the data set is made; images
    are read from disk on each access, from images_dir/file_name.
    """

    def __init__(self, json_path, images_dir, class_names=None):
        self.json_path, self.images_dir = os.fspath(json_path), os.fspath(images_dir)
        self.root = self.images_dir                       # where per-data-set caches may go
        self.split = os.path.splitext(os.path.basename(self.json_path))[0]
        parsed = parse_coco(read_json(self.json_path), self.json_path, class_names)
        self.class_names, self.category_ids = parsed["class_names"], parsed["category_ids"]
        self.ids = [image["id"] for image in parsed["images"]]
        self.file_names = [image["file_name"] for image in parsed["images"]]
        self.sizes = [(image["height"], image["width"]) for image in parsed["images"]]
        self.annotations = parsed["objects"]
        self._ground_truth = parsed["ground_truth"]
        self.require_image_files()

    def image_path(self, i):
        return os.path.join(self.images_dir, self.file_names[i])

    def listed_in(self, i):
        return f"image {self.ids[i]} of {self.json_path}"

    size_from = listed_in

    def image_size(self, i):
        """(H, W) as the file gives it."""
        return self.sizes[i]

    def annotation(self, i, as_written=False):
        """ds[i] without the image: dict(id, boxes, labels, difficult, crowd), copies: the objects training
        uses (boxes clipped, those a pixel wide or high left out, as VOCDataset does). as_written=True:
        every object, its box as the file gives it (unclipped), as evaluation counts them."""
        a = self.annotations[i]
        keep = slice(None) if as_written else a["trained"]
        return dict(id=self.ids[i], boxes=(a["written"] if as_written else a["boxes"])[keep].copy(),
                    labels=a["labels"][keep].copy(), difficult=a["difficult"][keep].copy(), crowd=a["crowd"][keep].copy())

    def coco_ground_truth(self):
        """The file's images, categories and annotations as pycocotools reads them (bbox as written,
        area, defaulting to w * h, and iscrowd), as a new dict: a COCO ground truth for evaluation."""
        return json.loads(json.dumps(self._ground_truth))

    def __repr__(self):
        return (f"COCODataset({self.json_path!r}, {self.images_dir!r}, {len(self)} images, "
                f"{len(self.class_names)} classes)")
