"""A trained model over a data set: detections of every image, their VOC AP and COCO metrics, the tables.

    model, info = load_model(OUT/final.npz)              (minidet.detect)
    the data set: a VOC- or COCO-layout folder, or a COCO file and its images (minidet.data.open)
    proposals of each image (selective search, cached)   (minidet.data.proposals)
    detect_dataset: minidet.detect.detect on every image, at one test scale or a pyramid of them
    evaluate_detections: minidet.evaluate.eval_detection_voc against every annotated object as
        written (VOCDataset.annotation(i, as_written=True)), as the devkit counts them
    score_detections: that VOC AP, COCO's metrics beside it (minidet.coco_eval, when pycocotools is
        installed), the tables (format_table, format_coco_table), the files of detections_io

evaluate_checkpoint does all of it for a saved model and evaluate_detections_file for detections
made elsewhere; both write OUT/eval_<split>.json, OUT/pr_<split>.png and OUT/detections_<split>.json
and .csv. `main` is the `minidet eval` command (and examples/eval_voc.py).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from minidet.arguments import parse_classes, parse_scales
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


def score_detections(dataset, detections, split, out=None, use_07_metric=True, log=print, source=None, **facts):
    """The VOC AP and COCO's metrics of (boxes, labels, scores) lists over a data set, their tables logged.

    Returns the summary: map, ap {class name: AP or None}, images, split, metric, the facts given,
    coco (minidet.coco_eval.coco_metrics; None without pycocotools). With `out`, writes the summary to
    OUT/eval_<split>.json, the curves to OUT/pr_<split>.png and the detections to
    OUT/detections_<split>.json (COCO results) and .csv (minidet.detections_io), except over `source`,
    the file they were read from; the summary then names the detection files.
    """
    from minidet.atomic import atomic_write
    from minidet.coco_eval import coco_metrics
    from minidet.detections_io import write_detections
    from minidet.plots import plot_pr_curves

    result = evaluate_detections(dataset, *detections, use_07_metric)
    log(format_table(result, dataset.class_names))
    summary = {"map": result["map"], "ap": result["ap_by_class"], "images": len(dataset), "split": split,
               "metric": "VOC07 11-point" if use_07_metric else "area", **facts,
               "coco": coco_metrics(dataset, detections, log)}
    if out:
        os.makedirs(out, exist_ok=True)
        summary["detection_files"] = [os.path.join(out, f"detections_{split}.{ext}") for ext in ("json", "csv")]
        for path in summary["detection_files"]:
            if source is None or not (os.path.exists(path) and os.path.samefile(path, source)):
                write_detections(path, dataset, *detections)
        with atomic_write(os.path.join(out, f"eval_{split}.json"), "w") as f:
            json.dump(summary, f, indent=2)
        plot_pr_curves(result, dataset.class_names, os.path.join(out, f"pr_{split}.png"))
    return summary


def evaluate_checkpoint(checkpoint, data_dir=None, split="test", device="cpu", out=None, proposals_dir=None,
                        scale=None, class_names=None, use_07_metric=True, progress=True, workers=2, log=print,
                        max_size=None, coco_json=None, images=None, nms=None, max_per_image=None,
                        proposals_file=None, proposals_layout=None):
    """Load a saved model, detect over a split, score the detections (score_detections); write into `out`.

    The data: data_dir (a VOC- or COCO-layout folder and its split) or coco_json and images
    (minidet.data.open), their classes matched to the model's by name. scale: the test scale, or a
    sequence of them for multi-scale testing (default: the model's); max_size: the cap on the longer
    side; nms, max_per_image: the per-class NMS threshold and the cap of detections per image (each
    default: the model's, recorded from its run). proposals_file: the split's proposals from another
    tool (minidet.data.external_proposals) instead of the model's selective search. Returns
    score_detections' summary with scale, max_size, nms, max_per_image, detect_seconds, checkpoint,
    and (not written) dataset and detections (boxes, labels, scores lists).
    """
    from minidet.data.open import data_home, open_dataset
    from minidet.data.proposals import load_proposals, proposals_cache_dir
    from minidet.detect import load_model

    model, info = load_model(checkpoint, device)
    names = class_names or info["class_names"]
    dataset = open_dataset(data_dir, split, names, coco_json, images)
    if list(dataset.class_names) != list(info["class_names"]):
        raise ValueError(f"the data set's classes {list(dataset.class_names)} are not the model's "
                         f"{info['class_names']}")
    if proposals_file:
        from minidet.data.external_proposals import load_external_proposals

        log(f"proposals for {len(dataset)} images of {split} from {proposals_file}")
        proposals = load_external_proposals(proposals_file, dataset, proposals_layout)
    else:
        run_dir = out or os.path.dirname(os.path.abspath(checkpoint))
        cache = proposals_cache_dir(data_home(data_dir, coco_json), run_dir, proposals_dir)
        mode = info["proposal_mode"]
        log(f"proposals for {len(dataset)} images of {split} ({mode} selective search, cached in {cache})")
        proposals = load_proposals(dataset, cache, workers=workers, mode=mode, progress=progress)
    scale = scale or info["scale"]
    scale = int(scale) if np.ndim(scale) == 0 else [int(s) for s in scale]
    max_size = int(max_size or info["max_size"])
    nms = float(info["nms"] if nms is None else nms)
    max_per_image = int(info["max_per_image"] if max_per_image is None else max_per_image)
    started = time.perf_counter()
    detections = detect_dataset(model, dataset, proposals, info["convention"], scale, max_size, device, progress,
                                nms_thresh=nms, max_per_image=max_per_image)
    summary = score_detections(dataset, detections, split, out, use_07_metric, log, scale=scale, max_size=max_size,
                               nms=nms, max_per_image=max_per_image, detect_seconds=time.perf_counter() - started,
                               checkpoint=os.path.abspath(checkpoint))
    return dict(summary, dataset=dataset, detections=detections)


def evaluate_detections_file(path, data_dir=None, split="test", out=None, class_names=None, use_07_metric=True,
                             log=print, coco_json=None, images=None):
    """Score the detections of a file made elsewhere (COCO results .json or minidet's .csv,
    minidet.detections_io) against a split, without a model: score_detections' summary."""
    from minidet.data.open import open_dataset
    from minidet.detections_io import load_detections

    dataset = open_dataset(data_dir, split, class_names, coco_json, images)
    detections = load_detections(path, dataset)
    return score_detections(dataset, detections, split, out, use_07_metric, log, source=path,
                            detections_file=os.path.abspath(path))


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


def recorded_data(checkpoint, split=None):
    """(source, split) of the data a saved model was trained on (minidet.data.open.recorded_source),
    or None when it names none that exists here."""
    from minidet.checkpoint import load_npz
    from minidet.data.open import recorded_source

    return recorded_source(load_npz(checkpoint)[1].get("config", {}), split)


def add_data_arguments(parser):
    """What to evaluate: a model or a detections file, and the data set (minidet.data.open)."""
    parser.add_argument("--checkpoint", default=None, help="OUT/final.npz (or OUT/checkpoint.npz) of a run")
    parser.add_argument("--detections", default=None, metavar="FILE",
                        help="instead of a model: score the detections of FILE, made elsewhere (COCO results "
                             ".json, or minidet's .csv), against the data set")
    parser.add_argument("--data-dir", default=None, help="a VOC- or COCO-layout folder (default: the one the "
                                                         "model was trained on)")
    parser.add_argument("--coco-json", default=None, help="a COCO instances file instead of --data-dir")
    parser.add_argument("--images", default=None, help="the folder of --coco-json's images")
    parser.add_argument("--classes", type=parse_classes, default=None,
                        help="a,b,c: class names of a VOC folder without classes.txt (default: the model's)")
    parser.add_argument("--split", default=None, help="split to evaluate (default test; with --coco-json it names "
                                                      "the output files, default the file's name)")


def main(argv=None, prog="minidet eval", description="Evaluate a trained model with the VOC AP and COCO's metrics.",
         epilog=None):
    """`minidet eval` (and examples/eval_voc.py): detect over a split (or read detections) and print the AP tables."""
    from minidet.data.open import describe_source, split_name

    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--out", default=None, help="folder for eval_<split>.json, pr_<split>.png and "
                        "detections_<split>.json/.csv (default: the checkpoint's or the detections file's folder)")
    add_scale_arguments(parser)
    parser.add_argument("--nms", type=float, default=None,
                        help="per-class NMS IoU threshold (default: the model's, 0.3 as the paper unless its run "
                             "set --test-nms; crowded scenes of touching objects may want more)")
    parser.add_argument("--max-per-image", type=int, default=None,
                        help="detections kept per image (default: the model's, 100 as the paper)")
    parser.add_argument("--proposals-dir", default=None, help="proposal cache folder")
    parser.add_argument("--proposals", default=None, metavar="FILE",
                        help="the split's proposals from another tool (.npz/.pkl/.mat, one (P, 4) array per "
                             "image id) instead of the model's selective search")
    parser.add_argument("--proposals-layout", default=None, choices=("xyxy0", "xyxy1", "ss_original"),
                        help="how FILE writes its boxes (default: xyxy0, ss_original for .mat)")
    parser.add_argument("--area-ap", action="store_true", help="VOC2010+ area AP instead of VOC07 11-point")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    name = prog.split()[-1] if prog.startswith("minidet") else prog

    def fail(message):
        print(f"{name}: {message}", file=sys.stderr)
        return 2

    try:
        scale = scales_from_arguments(args)
        given = args.checkpoint or args.detections
        if not given or (args.checkpoint and args.detections):
            return fail("give --checkpoint (a model to evaluate) or --detections FILE (detections to score)"
                        + (", not both" if given else ""))
        if not os.path.isfile(given):
            return fail(f"{given}: no such file")
        model_options = (scale, args.max_size, args.nms, args.max_per_image, args.proposals)
        if args.detections and any(option is not None for option in model_options):
            return fail("--scale, --test-scales, --max-size, --nms, --max-per-image and --proposals set how a model "
                        "is run; --detections has no model")
        if args.device == "gpu" and args.checkpoint:
            from minidet.backend import require_cupy

            require_cupy()
        source, split = dict(data_dir=args.data_dir, coco_json=args.coco_json, images=args.images), args.split
        if not any(source.values()):
            recorded = recorded_data(args.checkpoint, split) if args.checkpoint else None
            if recorded is None:
                return fail(("the checkpoint does not name a data set that exists here" if args.checkpoint else
                             "--detections needs the data set it was made on") +
                            "; pass --data-dir, or --coco-json with --images")
            source, split = recorded
            print(f"data: {describe_source(**source)} (recorded in the checkpoint)")
        split = split or split_name(**source)
        out = args.out or os.path.dirname(os.path.abspath(given))
        if args.detections:
            summary = evaluate_detections_file(args.detections, split=split, out=out, class_names=args.classes,
                                               use_07_metric=not args.area_ap, **source)
        else:
            summary = evaluate_checkpoint(args.checkpoint, split=split, device=args.device, out=out,
                                          proposals_dir=args.proposals_dir, scale=scale, class_names=args.classes,
                                          use_07_metric=not args.area_ap, progress=not args.no_progress,
                                          max_size=args.max_size, nms=args.nms, max_per_image=args.max_per_image,
                                          proposals_file=args.proposals, proposals_layout=args.proposals_layout,
                                          **source)
    except (RuntimeError, OSError, ValueError) as err:
        return fail(err)
    how = (f"detections of {args.detections}" if args.detections else
           f"at scale {summary['scale']} (longer side <= {summary['max_size']})")
    ap = (summary["coco"] or {}).get("AP")
    coco = "" if ap is None else f", COCO AP {100 * ap:.1f}"
    print(f"mAP {100 * summary['map']:.1f}{coco} on {summary['images']} images of {split}, {how}; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
