"""A trained model over a data set: detections of every image, their VOC AP, the printed table.

    model, info = load_model(OUT/final.npz)              (minidet.detect)
    proposals of each image (selective search, cached)   (minidet.data.proposals)
    detect_dataset: minidet.detect.detect on every image, at one test scale or a pyramid of them
    evaluate_detections: minidet.evaluate.eval_detection_voc against every annotated object as
        written (VOCDataset.annotation(i, as_written=True)), as the devkit counts them
    format_table: the per-class AP as text; the curves go to minidet.plots.plot_pr_curves

evaluate_checkpoint does all of it for a saved model and writes OUT/eval_<split>.json and
OUT/pr_<split>.png; `main` is the `minidet eval` command.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from minidet.arguments import parse_scales
from minidet.evaluate import eval_detection_voc


def detect_dataset(model, dataset, proposals, convention, scale=600, max_size=1000, device="cpu",
                   progress=True, **detect_kwargs):
    """Run `minidet.detect.detect` on every image of a data set.

    proposals: one (P_i, 4) array per image, in dataset order; scale: one test scale, or a
    sequence of them (multi-scale testing). Returns (boxes, labels, scores): lists with one array
    per image, boxes in the original image pixels.
    """
    from minidet.detect import detect

    if len(proposals) != len(dataset):
        raise ValueError(f"{len(proposals)} proposal sets for {len(dataset)} images")
    indices = range(len(dataset))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="detect", unit="img", dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
    boxes, labels, scores = [], [], []
    for i in indices:
        image = dataset.load_image(i) if hasattr(dataset, "load_image") else dataset[i]["image"]
        b, l, s = detect(model, image, proposals[i], convention, scale, max_size, device, **detect_kwargs)
        boxes.append(b)
        labels.append(l)
        scores.append(s)
    return boxes, labels, scores


def ground_truth(dataset):
    """(boxes, labels, difficult) lists of every annotated object as written, without reading images."""
    boxes, labels, difficult = [], [], []
    for i in range(len(dataset)):
        a = dataset.annotation(i, as_written=True)
        boxes.append(a["boxes"])
        labels.append(a["labels"])
        difficult.append(a["difficult"])
    return boxes, labels, difficult


def evaluate_detections(dataset, boxes, labels, scores, use_07_metric=True):
    """eval_detection_voc of per-image detections against the data set's ground truth as written,
    with one AP per class name: the output plus "ap_by_class" {name: AP or None}."""
    gt_boxes, gt_labels, gt_difficult = ground_truth(dataset)
    names = list(dataset.class_names)
    result = eval_detection_voc(boxes, labels, scores, gt_boxes, gt_labels, gt_difficult,
                                use_07_metric=use_07_metric, num_labels=len(names) + 1)
    result["ap_by_class"] = {name: (None if np.isnan(result["ap"][k + 1]) else float(result["ap"][k + 1]))
                             for k, name in enumerate(names)}
    return result


def format_table(result, class_names):
    """The per-class AP table, as text."""
    width = max([len(n) for n in class_names] + [5])
    lines = [f"{'class':<{width}}  AP"]
    for k, name in enumerate(class_names):
        ap = result["ap"][k + 1]
        lines.append(f"{name:<{width}}  {'  -  ' if np.isnan(ap) else f'{100 * ap:5.1f}'}")
    lines.append(f"{'mAP':<{width}}  {100 * result['map']:5.1f}")
    return "\n".join(lines)


def evaluate_checkpoint(checkpoint, data_dir, split="test", device="cpu", out=None, proposals_dir=None,
                        scale=None, class_names=None, use_07_metric=True, progress=True, workers=2, log=print,
                        max_size=None):
    """Load a saved model, detect over a split, compute the VOC AP; write results into `out`.

    scale: the test scale, or a sequence of them for multi-scale testing (default: the model's);
    max_size: the cap on the longer side (default: the model's).
    Returns dict(map, ap {class name: AP or None}, images, split, scale, max_size, detect_seconds,
    metric, checkpoint, detections (boxes, labels, scores lists)); when `out` is given, writes all
    but the detections to OUT/eval_<split>.json and the precision-recall curves to OUT/pr_<split>.png.
    """
    from minidet.data.proposals import load_proposals
    from minidet.data.voc import VOCDataset
    from minidet.detect import load_model
    from minidet.plots import plot_pr_curves
    from minidet.data.proposals import proposals_cache_dir

    model, info = load_model(checkpoint, device)
    names = class_names or info["class_names"]
    dataset = VOCDataset(data_dir, split, names)
    if list(dataset.class_names) != list(info["class_names"]):
        raise ValueError(f"the data set's classes {list(dataset.class_names)} are not the model's "
                         f"{info['class_names']}")
    run_dir = out or os.path.dirname(os.path.abspath(checkpoint))
    cache = proposals_cache_dir(data_dir, run_dir, proposals_dir)
    mode = info["proposal_mode"]
    log(f"proposals for {len(dataset)} images of {split} ({mode} selective search, cached in {cache})")
    proposals = load_proposals(dataset, cache, workers=workers, mode=mode, progress=progress)
    scale = scale or info["scale"]
    scale = int(scale) if np.ndim(scale) == 0 else [int(s) for s in scale]
    max_size = int(max_size or info["max_size"])
    started = time.perf_counter()
    boxes, labels, scores = detect_dataset(model, dataset, proposals, info["convention"], scale, max_size,
                                           device, progress)
    seconds = time.perf_counter() - started
    result = evaluate_detections(dataset, boxes, labels, scores, use_07_metric)
    log(format_table(result, dataset.class_names))
    summary = {"map": result["map"], "ap": result["ap_by_class"], "images": len(dataset), "split": split,
               "scale": scale, "max_size": max_size, "detect_seconds": seconds,
               "metric": "VOC07 11-point" if use_07_metric else "area", "checkpoint": os.path.abspath(checkpoint)}
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"eval_{split}.json"), "w") as f:
            json.dump(summary, f, indent=2)
        plot_pr_curves(result, dataset.class_names, os.path.join(out, f"pr_{split}.png"))
    summary["detections"] = (boxes, labels, scores)
    return summary


def add_scale_arguments(parser):
    """--scale, --test-scales and --max-size, shared by `minidet eval` and examples/eval_voc.py."""
    parser.add_argument("--scale", type=int, default=None, help="test scale (default: the model's)")
    parser.add_argument("--test-scales", default=None, metavar="S1,S2,...",
                        help="multi-scale testing at these scales, each RoI at the one where it is closest "
                             "to 224x224 pixels (the paper's: 480,576,688,864,1200 with --max-size 2000)")
    parser.add_argument("--max-size", type=int, default=None,
                        help="longest image side at test time (default: the model's)")


def scales_from_arguments(args):
    """The test scale(s) of parsed add_scale_arguments: None (the model's), an int, or a tuple."""
    if args.scale is not None and args.test_scales is not None:
        raise ValueError("give --scale or --test-scales, not both")
    return parse_scales(args.test_scales, "test scales") if args.test_scales is not None else args.scale


def recorded_data_dir(checkpoint):
    """The training folder a saved model names, if it exists here; else None."""
    from minidet.checkpoint import load_npz

    data_dir = load_npz(checkpoint)[1].get("config", {}).get("data_dir")
    return data_dir if data_dir and os.path.isdir(data_dir) else None


def main(argv=None, prog="minidet eval", description="Evaluate a trained model with the VOC AP.", epilog=None):
    """`minidet eval` (and examples/eval_voc.py): detect over a split and print the per-class AP table."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="OUT/final.npz (or OUT/checkpoint.npz) of a run")
    parser.add_argument("--data-dir", default=None, help="VOC-layout folder (default: the one the model was trained on)")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--out", default=None, help="folder for eval_<split>.json and pr_<split>.png "
                                                    "(default: the checkpoint's folder)")
    add_scale_arguments(parser)
    parser.add_argument("--proposals-dir", default=None, help="proposal cache folder")
    parser.add_argument("--area-ap", action="store_true", help="VOC2010+ area AP instead of VOC07 11-point")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    name = prog.split()[-1] if prog.startswith("minidet") else prog

    def fail(message):
        print(f"{name}: {message}", file=sys.stderr)
        return 2

    try:
        scale = scales_from_arguments(args)
        if not os.path.isfile(args.checkpoint):
            return fail(f"{args.checkpoint}: no such file")
        if args.device == "gpu":
            from minidet.backend import require_cupy

            require_cupy()
        data_dir = args.data_dir or recorded_data_dir(args.checkpoint)
        if data_dir is None:
            return fail("the checkpoint does not name a training folder that exists here; pass --data-dir")
        if args.data_dir is None:
            print(f"data: {data_dir} (recorded in the checkpoint)")
        out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
        summary = evaluate_checkpoint(args.checkpoint, data_dir, args.split, args.device, out, args.proposals_dir,
                                      scale, use_07_metric=not args.area_ap, progress=not args.no_progress,
                                      max_size=args.max_size)
    except (RuntimeError, OSError, ValueError) as err:
        return fail(err)
    print(f"mAP {100 * summary['map']:.1f} on {summary['images']} images of {args.split} at scale "
          f"{summary['scale']} (longer side <= {summary['max_size']}); results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
