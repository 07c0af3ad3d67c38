"""A data set in the PASCAL VOC layout: ImageSets/Main/{split}.txt, Annotations/{id}.xml, JPEGImages/{id}.jpg.

Any folder in this layout works, with its own classes: their names come from
ROOT/classes.txt (one name a line) when it exists, else from the `class_names`
argument, else the 20 VOC classes. Label k means class_names[k - 1]; 0 is background.

Coordinates in the XML are 1-based and pixel-inclusive (a box of one pixel has
xmin == xmax); the reader subtracts 1, so that boxes are 0-based and pixel-inclusive
(width = x2 - x1 + 1), the convention of everything else in minidet.

Each image's objects come in two versions. As written (`annotation(i, as_written=True)`): every
object of the XML, its box as annotated; this is what the VOC devkit evaluates against
(VOCevaldet.m counts every object of the class). For training (`annotation(i)`, `ds[i]`): boxes
that stick out of the image by the tolerated pixel clipped into it, and objects without extent
(a point or a line: xmax == xmin or ymax == ymin) left out, with a warning naming the file.
"""
import os
import warnings
import xml.etree.ElementTree as ET

import numpy as np

from minidet.data.dataset import AnnotationError, ImageDataset

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

# Annotation tools disagree by a pixel about the border (0 or W+1 in 1-based terms);
# such boxes are clipped. A box further out than this is an annotation error.
BORDER_TOLERANCE = 1.0


def read_class_names(root, class_names=None):
    """ROOT/classes.txt (one name a line, blank lines ignored) if present, else class_names, else VOC's 20."""
    path = os.path.join(root, "classes.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        if not names:
            raise AnnotationError(f"{path}: no class names in the file")
    elif class_names is not None:
        names = [str(n).strip() for n in class_names]
    else:
        names = list(VOC_CLASSES)
    if len(set(names)) != len(names):
        raise AnnotationError(f"{path if os.path.isfile(path) else 'class_names'}: duplicate class names {names}")
    return tuple(names)


def _number(node, tag, path, where):
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise AnnotationError(f"{path}: {where} has no <{tag}>")
    try:
        return float(child.text)
    except ValueError:
        raise AnnotationError(f"{path}: {where} <{tag}> is not a number: {child.text.strip()!r}") from None


def read_voc_objects(path, class_index):
    """One VOC XML as written: ((H, W), [(name, (x1, y1, x2, y2), difficult), ...]).

    Boxes are the XML's values minus 1 (0-based pixel-inclusive, as float), neither clipped nor dropped.

    class_index: the known class names (a dict {name: label} or any container). An unknown class, a
    missing field, an empty image size, an inverted box (xmax < xmin) or a box further than
    BORDER_TOLERANCE outside the image raises AnnotationError naming the file and the object. The
    XML's <path> is ignored.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: annotation file is missing")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise AnnotationError(f"{path}: malformed XML ({e})") from None
    size = root.find("size")
    if size is None:
        raise AnnotationError(f"{path}: no <size> (image width and height)")
    width, height = _number(size, "width", path, "<size>"), _number(size, "height", path, "<size>")
    if width < 1 or height < 1:
        raise AnnotationError(f"{path}: image size {width:g}x{height:g} is empty")
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        where = f"object {k} ({name or 'unnamed'})"
        if name not in class_index:
            raise AnnotationError(f"{path}: {where} has unknown class name {name!r}; "
                                  f"known: {', '.join(class_index)} (set classes.txt or class_names)")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise AnnotationError(f"{path}: {where} has no <bndbox>")
        x1, y1, x2, y2 = (_number(bndbox, t, path, where) - 1 for t in ("xmin", "ymin", "xmax", "ymax"))
        if x2 < x1 or y2 < y1:
            raise AnnotationError(f"{path}: {where} has xmax < xmin or ymax < ymin: "
                                  f"({x1 + 1:g}, {y1 + 1:g}, {x2 + 1:g}, {y2 + 1:g})")
        lo, hi_x, hi_y = -BORDER_TOLERANCE, width - 1 + BORDER_TOLERANCE, height - 1 + BORDER_TOLERANCE
        if x1 < lo or y1 < lo or x2 > hi_x or y2 > hi_y:
            raise AnnotationError(f"{path}: {where} box ({x1 + 1:g}, {y1 + 1:g}, {x2 + 1:g}, {y2 + 1:g}) "
                                  f"lies outside the {width:g}x{height:g} image")
        difficult = (obj.findtext("difficult") or "").strip() not in ("", "0")
        objects.append((name, (x1, y1, x2, y2), difficult))
    return (int(height), int(width)), objects


def parse_voc_xml(path, class_index):
    """Read one annotation file, every object as written (read_voc_objects checks it).

    class_index: {name: label}. Returns dict(size=(H, W), boxes (G, 4) float32 0-based
    pixel-inclusive (not clipped), labels (G,) int64, difficult (G,) bool).
    """
    size, objects = read_voc_objects(path, class_index)
    return dict(size=size,
                boxes=np.array([box for _, box, _ in objects], np.float32).reshape(-1, 4),
                labels=np.array([class_index[name] for name, _, _ in objects], np.int64),
                difficult=np.array([difficult for _, _, difficult in objects], bool))


def objects_for_training(annotation, path, class_names):
    """The objects of an as-written annotation that training uses: boxes clipped into the image,
    those without extent (x2 == x1 or y2 == y1) left out with a warning naming the file `path`
    and the object (its index in the file and its class, label k being class_names[k - 1]).

    annotation: parse_voc_xml's dict -> the same dict with fewer objects and clipped boxes.
    """
    height, width = annotation["size"]
    boxes = annotation["boxes"]
    flat = (boxes[:, 2] == boxes[:, 0]) | (boxes[:, 3] == boxes[:, 1])
    for k in np.flatnonzero(flat):
        x1, y1, x2, y2 = (float(v) + 1 for v in boxes[k])
        name = class_names[annotation["labels"][k] - 1]
        warnings.warn(f"{path}: object {k} ({name}) box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has no extent "
                      f"(a point or a line); left out of training (evaluation counts it as written)",
                      stacklevel=3)
    keep = ~flat
    clipped = np.empty_like(boxes[keep])
    clipped[:, 0::2] = np.clip(boxes[keep][:, 0::2], 0, width - 1)
    clipped[:, 1::2] = np.clip(boxes[keep][:, 1::2], 0, height - 1)
    return dict(annotation, boxes=clipped, labels=annotation["labels"][keep],
                difficult=annotation["difficult"][keep])


def split_path(root, split):
    """ROOT/ImageSets/Main/SPLIT.txt: the file that lists a split's image ids."""
    return os.path.join(root, "ImageSets", "Main", f"{split}.txt")


def read_split(root, split):
    """The image ids of a split of a VOC-layout folder ROOT, in the file's order."""
    path = split_path(root, split)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: split file is missing (is {root} a VOC-layout folder?)")
    with open(path, encoding="utf-8") as f:
        # VOC's per-class split files carry a second column (1/-1); the image id is the first.
        return [line.split()[0] for line in f if line.strip()]


def voc_paths(root, image_id):
    """(annotation, image): ROOT/Annotations/ID.xml and ROOT/JPEGImages/ID.jpg."""
    return (os.path.join(root, "Annotations", f"{image_id}.xml"),
            os.path.join(root, "JPEGImages", f"{image_id}.jpg"))


class VOCDataset(ImageDataset):
    """The images of one split of a VOC-layout folder, with their annotations.

    ds[i] -> dict(id, image (H, W, 3) uint8 BGR, boxes (G, 4) float32 0-based pixel-inclusive,
    labels (G,) int64 in 1..K, difficult (G,) bool): the objects for training (see the module's
    docstring), difficult ones flagged. annotation(i, as_written=True): every object as annotated,
    for evaluation. All annotations are read and checked once, when the data set is made; images
    are read from disk on each access.
    """

    def __init__(self, root, split="trainval", class_names=None):
        self.root, self.split = os.fspath(root), split
        self.class_names = read_class_names(self.root, class_names)
        self.ids = read_split(self.root, split)
        class_index = {name: k + 1 for k, name in enumerate(self.class_names)}
        self.written = [parse_voc_xml(self.annotation_path(i), class_index) for i in range(len(self.ids))]
        self.annotations = [objects_for_training(a, self.annotation_path(i), self.class_names)
                            for i, a in enumerate(self.written)]
        self.require_image_files()

    def annotation_path(self, i):
        return voc_paths(self.root, self.ids[i])[0]

    def image_path(self, i):
        return voc_paths(self.root, self.ids[i])[1]

    def listed_in(self, i):
        return f"listed in {split_path(self.root, self.split)}"

    def size_from(self, i):
        return self.annotation_path(i)

    def image_size(self, i):
        """(H, W) as the annotation gives it."""
        return self.annotations[i]["size"]

    def annotation(self, i, as_written=False):
        """ds[i] without the image: dict(id, boxes, labels, difficult), copies. as_written=True:
        every object of the XML with its box as annotated (0-based), as the devkit evaluates."""
        a = self.written[i] if as_written else self.annotations[i]
        return dict(id=self.ids[i], boxes=a["boxes"].copy(), labels=a["labels"].copy(),
                    difficult=a["difficult"].copy())

    def __repr__(self):
        return f"VOCDataset({self.root!r}, split={self.split!r}, {len(self)} images, {len(self.class_names)} classes)"


def drop_difficult(example):
    """A copy of an example (or annotation) without its difficult objects."""
    keep = ~example["difficult"]
    out = dict(example)
    out.update(boxes=example["boxes"][keep], labels=example["labels"][keep], difficult=example["difficult"][keep])
    return out


def write_voc_xml(path, filename, image_size, boxes, names, difficult=None, truncated=None):
    """Write one VOC annotation file.

    image_size (H, W); boxes (G, 4) 0-based pixel-inclusive (written 1-based, rounded to
    integers as VOC does); names (G,) class names; difficult, truncated (G,) bool or None.
    """
    height, width = image_size
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    flags = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool)
    cut = np.zeros(len(boxes), bool) if truncated is None else np.asarray(truncated, bool)
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(int(value))
    ET.SubElement(root, "segmented").text = "0"
    for box, name, d, t in zip(boxes, names, flags, cut):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = str(name)
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(t))
        ET.SubElement(obj, "difficult").text = str(int(d))
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, tag).text = str(int(round(value)) + 1)
    ET.indent(root, space="\t")
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=False)
