"""Detect objects with a trained minidet model in an image, a folder of images or a video, and draw them.

    python examples/demo.py --checkpoint runs/synthetic/final.npz data/synthetic/JPEGImages/000401.jpg
    python examples/demo.py --checkpoint runs/bccd/final.npz photos/ --out annotated/
    python examples/demo.py --checkpoint runs/bccd/final.npz clip.mp4 --out clip_detections.mp4

INPUT is an image file (JPEG, PNG, ...), a folder (its image files, not its subfolders), or a video
that OpenCV can read. Proposals come from selective search on each image or frame, with the setup the
model was trained with; they are cached, one file per image (or frame) named by a hash of its file
and the settings, in --cache-dir. The class names, the input convention and the test scale come from
the checkpoint.

Written: the annotated picture (--out: an image file for an image, a folder of pictures with the
input's file names for a folder, a video file (.mp4 or .avi) for a video), with every detection
scoring at least --threshold; and every detection (score > 0.05, at most 100 per image) in
BASE.json (COCO results: image_id, category_id, bbox [x, y, w, h], score), BASE_images.json (the
COCO images and categories those ids refer to, so that pycocotools' COCO(BASE_images.json)
.loadRes(BASE.json) reads them) and BASE.csv (image, class, score, x1, y1, x2, y2 in pixels,
pixel-inclusive). BASE is --detections, by default --out without its extension (OUT/detections
for a folder). Images are numbered 1..N in the order processed (file names sorted; frames in order).
"""
import argparse
import json
import os
import sys
import time
import zipfile

import cv2

from minidet.atomic import atomic_path, atomic_write
from minidet.backend import require_cupy
from minidet.checkpoint import load_model
from minidet.detect import detect, draw_detections

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}


class DemoError(Exception):
    """A bad input or output; the message names it."""


def input_kind(path):
    """'folder', 'image' or 'video'; DemoError when the path is none of them."""
    if os.path.isdir(path):
        return "folder"
    if not os.path.isfile(path):
        raise DemoError(f"{path}: no such file or folder")
    if cv2.imread(path, cv2.IMREAD_COLOR) is not None:
        return "image"
    capture = cv2.VideoCapture(path)
    try:
        if capture.isOpened() and capture.read()[0]:
            return "video"
    finally:
        capture.release()
    raise DemoError(f"{path}: neither an image nor a video that OpenCV can decode")


def folder_images(folder):
    names = sorted(n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
                   and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise DemoError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return names


class ProposalCache:
    """Selective-search proposals through minidet.data.proposals' per-image cache (None: no cache)."""

    def __init__(self, cache_dir, mode):
        from minidet.data.proposals import _settings

        self.cache_dir, self.settings = cache_dir, _settings(2000, mode, 2, 500)
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)

    def __call__(self, image, cache_file):
        from minidet.data.proposals import read_cache, selective_search, write_cache

        boxes = read_cache(cache_file) if cache_file else None
        if boxes is None:
            s = self.settings
            boxes = selective_search(image, s["max_boxes"], s["mode"], s["min_size"], s["max_side"])
            if cache_file:
                write_cache(cache_file, boxes)
        return boxes

    def image_file(self, image_id, path):
        from minidet.data.proposals import cache_path

        return cache_path(self.cache_dir, image_id, path, self.settings) if self.cache_dir else None

    def frame_files(self, path):
        """A function of the frame number: the video's bytes are hashed once, each frame gets its own file."""
        if not self.cache_dir:
            return lambda n: None
        stem = self.image_file(os.path.splitext(os.path.basename(path))[0], path)[:-len(".npy")]
        return lambda n: f"{stem}-frame{n:06d}.npy"


def imwrite_atomic(path, picture):
    with atomic_path(path, os.path.splitext(path)[1]) as tmp:
        if not cv2.imwrite(tmp, picture):
            raise DemoError(f"{path}: cannot be written")


def write_detection_files(base, names, detections, class_names):
    """BASE.json, BASE_images.json and BASE.csv (module docstring); names: the images' names, in order."""
    from minidet.detections_io import write_coco_results, write_csv

    boxes, labels, scores = detections
    ids, categories = list(range(1, len(names) + 1)), list(range(1, len(class_names) + 1))
    write_coco_results(f"{base}.json", boxes, labels, scores, ids, categories)
    images = [dict(id=i, file_name=name, **size) for i, (name, size) in zip(ids, names)]
    with atomic_write(f"{base}_images.json", "w", encoding="utf-8") as f:
        json.dump(dict(images=images, annotations=[],
                       categories=[dict(id=c, name=n) for c, n in zip(categories, class_names)]), f)
    write_csv(f"{base}.csv", boxes, labels, scores, [name for name, _ in names], class_names)
    return [f"{base}.json", f"{base}_images.json", f"{base}.csv"]


def frames(path):
    """(frame number, frame) of a video, and its frame rate and frame count (0 when unknown)."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise DemoError(f"{path}: the video cannot be opened")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

    def read():
        n = 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield n, frame
                n += 1
        finally:
            capture.release()
    return read(), fps, count


def run(args, model, info, kind, progress):
    """Detect in every image or frame; write the pictures; return (names with sizes, detections)."""
    from tqdm import tqdm

    propose = ProposalCache(None if args.no_cache else args.cache_dir, info["proposal_mode"])
    found = ([], [], [])
    names = []

    def one(name, image, cache_file):
        boxes, labels, scores = detect(model, image, propose(image, cache_file), info["convention"],
                                       args.scale or info["scale"], info["max_size"], args.device,
                                       nms_thresh=info["nms"] if args.nms is None else args.nms,
                                       max_per_image=args.max_per_image or info["max_per_image"])
        for store, value in zip(found, (boxes, labels, scores)):
            store.append(value)
        names.append((name, dict(height=image.shape[0], width=image.shape[1])))
        return draw_detections(image, boxes, labels, scores, info["class_names"], score_thresh=args.threshold)

    if kind in ("image", "folder"):
        folder = args.input if kind == "folder" else os.path.dirname(args.input) or "."
        files = folder_images(folder) if kind == "folder" else [os.path.basename(args.input)]
        if kind == "folder":
            os.makedirs(args.out, exist_ok=True)
        for name in tqdm(files, desc="detect", unit="image", disable=not progress, file=sys.stderr):
            path = os.path.join(folder, name)
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise DemoError(f"{path}: cannot be decoded as an image")
            picture = one(name, image, propose.image_file(os.path.splitext(name)[0], path))
            imwrite_atomic(os.path.join(args.out, name) if kind == "folder" else args.out, picture)
        return names, found

    stream, fps, count = frames(args.input)
    frame_file = propose.frame_files(args.input)
    ext = os.path.splitext(args.out)[1]
    writer = None
    with atomic_path(args.out, ext) as tmp:
        try:
            for n, frame in tqdm(stream, desc="detect", unit="frame", total=count or None, disable=not progress,
                                 file=sys.stderr):
                picture = one(f"frame{n:06d}", frame, frame_file(n))
                if writer is None:
                    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*VIDEO_CODECS[ext.lower()]), fps,
                                             (picture.shape[1], picture.shape[0]))
                    if not writer.isOpened():
                        raise DemoError(f"{args.out}: OpenCV cannot write this video")
                writer.write(picture)
            if writer is None:
                raise DemoError(f"{args.input}: the video has no frame that can be decoded")
        finally:
            if writer is not None:
                writer.release()                   # the file is whole before it is renamed
    return names, found


def default_out(kind, out):
    if out:
        return out
    return {"image": "detections.png", "folder": "detections", "video": "detections.mp4"}[kind]


def check_outputs(args, kind):
    if kind == "image" and not cv2.haveImageWriter(args.out):
        raise DemoError(f"{args.out}: OpenCV cannot write pictures of this kind (use .png or .jpg)")
    if kind == "video" and os.path.splitext(args.out)[1].lower() not in VIDEO_CODECS:
        raise DemoError(f"{args.out}: an annotated video is written as {' or '.join(VIDEO_CODECS)}")
    if kind == "folder" and os.path.abspath(args.out) == os.path.abspath(args.input):
        raise DemoError(f"{args.out}: the output folder must not be the input folder")
    if kind == "folder" and os.path.isfile(args.out):
        raise DemoError(f"{args.out}: is a file; the pictures of a folder go into a folder")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("input", help="an image file, a folder of images, or a video file")
    parser.add_argument("--checkpoint", required=True, help="a run's final.npz (or checkpoint.npz)")
    parser.add_argument("--out", default=None, help="annotated output: an image file (default detections.png), "
                        "a folder (default detections/) or a .mp4 / .avi video (default detections.mp4)")
    parser.add_argument("--detections", default=None, metavar="BASE",
                        help="write BASE.json, BASE_images.json and BASE.csv (default: --out without its "
                             "extension; OUT/detections for a folder)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where the network runs")
    parser.add_argument("--threshold", type=float, default=0.5, help="draw detections scoring at least this "
                                                                      "(default 0.5); the files keep all")
    parser.add_argument("--scale", type=int, default=None, help="test scale (default: the model's)")
    parser.add_argument("--nms", type=float, default=None,
                        help="per-class NMS IoU threshold (default: the run's, 0.3 unless it set another)")
    parser.add_argument("--max-per-image", type=int, default=None,
                        help="detections kept per image (default: the run's, 100 unless it set another)")
    parser.add_argument("--cache-dir", default=None,
                        help="proposal cache folder (default: proposals_cache beside --out)")
    parser.add_argument("--no-cache", action="store_true", help="compute proposals without caching them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if not os.path.isfile(args.checkpoint):
            raise DemoError(f"{args.checkpoint}: no such checkpoint file")
        kind = input_kind(args.input)
        args.out = default_out(kind, args.out)
        check_outputs(args, kind)
        base = args.detections or (os.path.join(args.out, "detections") if kind == "folder"
                                   else os.path.splitext(args.out)[0])
        args.cache_dir = args.cache_dir or os.path.join(os.path.dirname(os.path.abspath(args.out)), "proposals_cache")
        if args.device == "gpu":
            require_cupy()
        try:
            model, info = load_model(args.checkpoint, args.device)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise DemoError(f"{args.checkpoint}: not a minidet model ({err})") from None
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        start = time.perf_counter()
        names, found = run(args, model, info, kind, progress=not args.no_progress)
        seconds = time.perf_counter() - start
        written = write_detection_files(base, names, found, info["class_names"])
    except (DemoError, RuntimeError) as err:
        print(f"demo: {err}", file=sys.stderr)
        return 2
    class_names = info["class_names"]
    shown = sum(int((s >= args.threshold).sum()) for s in found[2])
    if kind == "image":
        for box, label, score in zip(*(f[0] for f in found)):
            if score >= args.threshold:
                x1, y1, x2, y2 = (float(v) for v in box)
                print(f"{class_names[label - 1]:>12} {score:.3f}  ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f})")
    print(f"{len(names)} {'frames' if kind == 'video' else 'images'} in {seconds:.1f} s; "
          f"{shown} detections at >= {args.threshold} drawn in {args.out}")
    print(f"all {sum(len(s) for s in found[2])} detections: {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
