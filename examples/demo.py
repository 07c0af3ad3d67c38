"""Detect objects in one image with a trained minidet model and draw them.

    python examples/demo.py --checkpoint runs/synthetic/final.npz data/synthetic/JPEGImages/000401.jpg \
        --out detections.png

Proposals come from selective search on the image; the class names, the input convention and
the test scale come from the checkpoint. Prints every detection above --threshold and writes the
image with boxes, class names and scores.
"""
import argparse
import os
import sys
import time

import cv2

from minidet.backend import require_cupy
from minidet.detect import detect, draw_detections, load_model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("image", help="an image file (JPEG, PNG, ...)")
    parser.add_argument("--checkpoint", required=True, help="a run's final.npz")
    parser.add_argument("--out", default="detections.png", help="output picture (default detections.png)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--threshold", type=float, default=0.5, help="draw detections scoring at least this")
    parser.add_argument("--scale", type=int, default=None, help="test scale (default: the model's)")
    args = parser.parse_args(argv)

    if args.device == "gpu":
        try:
            require_cupy()
        except RuntimeError as err:
            print(f"demo: {err}", file=sys.stderr)
            return 2
    for path in (args.image, args.checkpoint):
        if not os.path.isfile(path):
            print(f"demo: {path}: no such file", file=sys.stderr)
            return 2
    image = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if image is None:
        print(f"demo: {args.image}: cannot be decoded as an image", file=sys.stderr)
        return 2
    try:
        model, info = load_model(args.checkpoint, args.device)
    except ValueError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 2

    from minidet.data.proposals import selective_search

    start = time.perf_counter()
    proposals = selective_search(image, mode=info["proposal_mode"])
    proposal_seconds = time.perf_counter() - start
    start = time.perf_counter()
    boxes, labels, scores = detect(model, image, proposals, info["convention"], args.scale or info["scale"],
                                   info["max_size"], args.device)
    detect_seconds = time.perf_counter() - start
    print(f"{len(proposals)} proposals in {proposal_seconds:.2f} s; detection in {detect_seconds:.2f} s")
    names = info["class_names"]
    for box, label, score in zip(boxes, labels, scores):
        if score >= args.threshold:
            x1, y1, x2, y2 = (float(v) for v in box)
            print(f"{names[label - 1]:>12} {score:.3f}  ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f})")
    picture = draw_detections(image, boxes, labels, scores, names, score_thresh=args.threshold)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if not cv2.imwrite(args.out, picture):
        print(f"demo: could not write {args.out} (unknown extension?)", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
