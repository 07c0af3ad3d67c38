"""Between the VOC layout and COCO's JSON: `minidet convert voc2coco` and `minidet convert coco2voc`.

voc2coco writes every object of a split as its XML has it, read and checked by the reader that
VOCDataset uses (minidet.data.voc.read_voc_objects): boxes neither clipped nor dropped (VOCDataset
clips them to the image and drops those without extent, a point or a line, and so does COCODataset
with a converted file, except that a one-pixel box has a size in COCO and is kept), in COCO's
[x, y, w, h] (minidet.data.coco.box_to_coco). Images are numbered 1..N in the split's order and keep
their VOC id as file_name ID.jpg; categories are numbered 1..K in class order.

VOC's difficult objects become iscrowd=1, with "difficult": 1 beside it. pycocotools lets a
ground-truth box neither count (in recall) nor penalise (a detection on it is ignored, not a false
positive) only through iscrowd: its `ignore` field is overwritten by iscrowd when it evaluates.
That is what VOC asks of difficult objects. The cost: a crowd box is matched by intersection over
the detection's own area, so a detection that lies mostly inside a difficult box is ignored where
VOC's plain IoU would call it a false positive; dropping difficult objects instead would turn every
detection of one into a false positive, which is further from VOC's rule. The "difficult" flag lets
minidet tell such an object from a real crowd on the way back.

coco2voc writes a VOC-layout folder (Annotations/ID.xml, JPEGImages/ID.jpg, ImageSets/Main/SPLIT.txt,
classes.txt) from a checked COCODataset: ids are the file names' stems, crowds and flagged objects
become difficult, boxes are rounded to VOC's whole pixels. Every output is written whole or not at
all: the JSON to a temporary file, the folder into a temporary folder, renamed at the end.
"""
import argparse
import json
import os
import re
import shutil
import sys

import numpy as np

from minidet.arguments import parse_classes
from minidet.atomic import atomic_write
from minidet.data.coco import COCODataset, box_to_coco, coco_ids
from minidet.data.voc import (AnnotationError, read_class_names, read_split, read_voc_objects, split_path,
                               voc_paths, write_voc_xml)


def _coco_skeleton(description, class_names, category_ids):
    return dict(info=dict(description=description), licenses=[], images=[], annotations=[],
                categories=[dict(id=int(c), name=n) for c, n in zip(category_ids, class_names)])


def _annotation(ann_id, image_id, category_id, box, difficult):
    (x, y, w, h), = box_to_coco(box)
    return dict(id=ann_id, image_id=int(image_id), category_id=int(category_id),
                bbox=[float(x), float(y), float(w), float(h)], area=float(w * h),
                iscrowd=int(difficult), difficult=int(difficult))


def voc_to_coco_dict(dataset):
    """A COCO ground truth (dict of images, annotations, categories) of a data set's annotations as it
    reports them (VOCDataset: clipped, boxes without extent dropped); difficult objects become
    iscrowd=1 (see the module docstring). Image and category ids as minidet.data.coco.coco_ids gives them."""
    image_ids, category_ids = coco_ids(dataset)
    out = _coco_skeleton(repr(dataset), dataset.class_names, category_ids)
    for i in range(len(dataset)):
        height, width = dataset.image_size(i)
        a = dataset.annotation(i)
        name = os.path.basename(dataset.image_path(i)) if hasattr(dataset, "image_path") else f"{a['id']}.jpg"
        out["images"].append(dict(id=int(image_ids[i]), file_name=name, width=int(width), height=int(height)))
        for box, label, difficult in zip(a["boxes"], a["labels"], a["difficult"]):
            out["annotations"].append(_annotation(len(out["annotations"]) + 1, image_ids[i],
                                                  category_ids[int(label) - 1], box, difficult))
    return out


def voc_folder_to_coco(data_dir, split="trainval", class_names=None):
    """A COCO dict of one split of a VOC-layout folder, every object as its XML has it (module docstring).

    class_names: as for VOCDataset (classes.txt first, then this, then VOC's 20).
    """
    names = read_class_names(data_dir, class_names)
    category = {name: k + 1 for k, name in enumerate(names)}
    out = _coco_skeleton(f"{os.path.abspath(data_dir)}, split {split}", names, range(1, len(names) + 1))
    for n, voc_id in enumerate(read_split(data_dir, split), start=1):
        annotation, image = voc_paths(data_dir, voc_id)
        if not os.path.isfile(image):
            raise FileNotFoundError(f"{image}: image file is missing (listed in {split_path(data_dir, split)})")
        (height, width), objects = read_voc_objects(annotation, category)
        out["images"].append(dict(id=n, file_name=f"{voc_id}.jpg", width=width, height=height))
        for name, box, difficult in objects:
            out["annotations"].append(_annotation(len(out["annotations"]) + 1, n, category[name], box, difficult))
    return out


def voc_ids(file_names, json_path):
    """VOC ids from COCO file names: the stems, whitespace made '_' (a split file is split on it); unique."""
    ids = [re.sub(r"\s", "_", os.path.splitext(os.path.basename(name))[0]) for name in file_names]
    seen = {}
    for voc_id, name in zip(ids, file_names):
        if voc_id in seen:
            raise AnnotationError(f"{json_path}: images {seen[voc_id]!r} and {name!r} would both be "
                                  f"{voc_id}.jpg in the VOC layout")
        seen[voc_id] = name
    return ids


def _place_image(source, target, link):
    """JPEG files are copied (or symlinked); other formats are re-encoded as JPEG, VOC's only format."""
    import cv2

    if os.path.splitext(source)[1].lower() in (".jpg", ".jpeg"):
        if link:
            os.symlink(os.path.abspath(source), target)
        else:
            shutil.copyfile(source, target)
        return
    image = cv2.imread(source, cv2.IMREAD_COLOR)
    if image is None or not cv2.imwrite(target, image, [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise AnnotationError(f"{source}: cannot be decoded and written as a JPEG")


def coco_to_voc_folder(json_path, images_dir, out_dir, split=None, link=False, progress=True):
    """Write a VOC-layout folder from a COCO file and its images; returns (out_dir, split).

    split: the name of ImageSets/Main/SPLIT.txt (default: the file's stem without 'instances_').
    link: symlink the JPEG files instead of copying them. out_dir must not exist yet.
    """
    from tqdm import tqdm

    dataset = COCODataset(json_path, images_dir)
    split = split or re.sub(r"^instances_", "", dataset.split)
    ids = voc_ids(dataset.file_names, json_path)
    if os.path.exists(out_dir):
        raise FileExistsError(f"{out_dir}: already exists; remove it or choose another --out")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(out_dir))}.{os.getpid()}.tmp")
    try:
        for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
            os.makedirs(os.path.join(tmp, sub))
        for i in tqdm(range(len(dataset)), desc="coco2voc", unit="image", disable=not progress, file=sys.stderr):
            a = dataset.annotation(i, as_written=True)      # every object, one a pixel wide included
            names = [dataset.class_names[int(k) - 1] for k in a["labels"]]
            height, width = dataset.image_size(i)
            # inside the image and in whole pixels, as VOC stores them; a box under a pixel wide must
            # not turn inside out
            boxes = np.round(np.clip(a["boxes"].astype(np.float64), 0, [width - 1, height - 1] * 2))
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
            annotation, image = voc_paths(tmp, ids[i])
            write_voc_xml(annotation, f"{ids[i]}.jpg", dataset.image_size(i), boxes, names, a["difficult"])
            _place_image(dataset.image_path(i), image, link)
        with open(split_path(tmp, split), "w", encoding="utf-8") as f:
            f.writelines(f"{voc_id}\n" for voc_id in ids)
        with open(os.path.join(tmp, "classes.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{name}\n" for name in dataset.class_names)
        os.rename(tmp, out_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return out_dir, split


def main(argv=None):
    """`minidet convert`: VOC-layout folder <-> COCO instances JSON."""
    parser = argparse.ArgumentParser(prog="minidet convert", description=main.__doc__.split(":", 1)[1].strip(),
                                     epilog="Run `minidet convert voc2coco --help` or `... coco2voc --help`.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{voc2coco,coco2voc}")
    v2c = commands.add_parser("voc2coco", help="one split of a VOC-layout folder -> a COCO JSON file",
                              description="Write one split of a VOC-layout folder as a COCO instances file: every "
                              "object as its XML has it (not clipped), difficult ones as iscrowd=1 with "
                              "\"difficult\": 1; file_name ID.jpg, relative to DATA_DIR/JPEGImages.")
    v2c.add_argument("data_dir", help="a VOC-layout folder (Annotations/, JPEGImages/, ImageSets/Main/)")
    v2c.add_argument("--split", default="trainval", help="ImageSets/Main/SPLIT.txt (default: trainval)")
    v2c.add_argument("--classes", default=None, help="comma-separated class names when there is no classes.txt "
                                                     "(default: the 20 VOC classes)")
    v2c.add_argument("--out", required=True, help="the JSON file to write")
    c2v = commands.add_parser("coco2voc", help="a COCO JSON file and its images -> a VOC-layout folder",
                              description="Write a new VOC-layout folder (Annotations/, JPEGImages/, "
                              "ImageSets/Main/SPLIT.txt, classes.txt) from a COCO instances file: ids are the "
                              "image files' stems, crowds become difficult, boxes are rounded to whole pixels, "
                              "non-JPEG images are re-encoded as JPEG (quality 95).")
    c2v.add_argument("json", help="a COCO instances file")
    c2v.add_argument("--images", required=True, help="the folder that the file's file_name entries are relative to")
    c2v.add_argument("--out", required=True, help="the VOC-layout folder to create (must not exist)")
    c2v.add_argument("--split", default=None, help="split name (default: the JSON's stem without 'instances_')")
    c2v.add_argument("--link", action="store_true", help="symlink the JPEG images instead of copying them")
    c2v.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if args.command == "voc2coco":
            coco = voc_folder_to_coco(args.data_dir, args.split, parse_classes(args.classes))
            with atomic_write(args.out, "w", encoding="utf-8") as f:
                json.dump(coco, f)
            print(f"wrote {args.out}: {len(coco['images'])} images, {len(coco['annotations'])} objects, "
                  f"{len(coco['categories'])} categories")
        else:
            out, split = coco_to_voc_folder(args.json, args.images, args.out, args.split, args.link,
                                            progress=not args.no_progress)
            print(f"wrote {out} (split {split})")
    except (OSError, ValueError) as err:
        print(f"minidet convert: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
