"""PASCAL VOC 2007 evaluation: average precision per class, and detection over a data set.

`eval_detection_voc` follows the devkit's VOCevaldet.m (SPEC.md "Evaluation"):

- per class, the detections of all images are sorted by score, highest first;
- each detection takes the ground-truth box of its class in its image with the highest IoU
  (pixel-inclusive areas, +1), among all of them: matched or not, difficult or not;
- IoU >= iou_thresh (the devkit's `>=`): a difficult box -> ignored (neither TP nor FP);
  a box not matched yet -> TP (now matched); an already matched box -> FP, even when another
  unmatched box also overlaps enough; IoU below the threshold or no box of the class -> FP;
- recall counts the non-difficult boxes; a class without one has AP NaN and stays out of the mAP;
- AP: VOC07's 11-point mean of the interpolated precision at recall 0, 0.1, ..., 1, or the area
  under the monotone precision envelope (VOC2010+).

The rest of the module runs a model over a data set (`detect_dataset`), prints the per-class table,
draws precision-recall curves, and is the `minidet eval` command (`main`).
"""
import argparse
import json
import os
import sys
import time

import numpy as np


def box_iou_voc(boxes, query):
    """IoU of (N, 4) boxes against (K, 4) query boxes -> (N, K), as the VOC devkit computes it.

    Boxes are (x1, y1, x2, y2), pixel-inclusive: width = x2 - x1 + 1. Boxes that do not overlap
    by at least one pixel in both directions get 0. The evaluation keeps its own copy of this
    formula (it is the referee of everything the detector computes, minidet.boxes included).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    query = np.asarray(query, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(boxes[:, None, 2], query[None, :, 2]) - np.maximum(boxes[:, None, 0], query[None, :, 0]) + 1
    ih = np.minimum(boxes[:, None, 3], query[None, :, 3]) - np.maximum(boxes[:, None, 1], query[None, :, 1]) + 1
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_b = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    area_q = (query[:, 2] - query[:, 0] + 1) * (query[:, 3] - query[:, 1] + 1)
    union = area_b[:, None] + area_q[None, :] - inter
    return np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_detections(boxes, gt_boxes, gt_difficult, iou_thresh=0.5):
    """Devkit matching of one image's detections of one class, given highest score first.

    boxes (D, 4) sorted by score descending; gt_boxes (G, 4); gt_difficult (G,) bool.
    Returns (D,) int8: 1 true positive, 0 false positive, -1 ignored (best box is difficult).
    The loop is sequential by nature: whether a detection is a TP depends on the ones before it.
    """
    match = np.zeros(len(boxes), dtype=np.int8)
    if len(gt_boxes) == 0 or len(boxes) == 0:
        return match
    iou = box_iou_voc(boxes, gt_boxes)
    best = iou.argmax(axis=1)               # the first of equal maxima, as the devkit's strict `>`
    best_iou = iou[np.arange(len(boxes)), best]
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for d in range(len(boxes)):
        g = best[d]
        if best_iou[d] < iou_thresh:
            continue                        # FP
        if gt_difficult[g]:
            match[d] = -1
        elif not taken[g]:
            match[d] = 1
            taken[g] = True
        # else: a second detection of a matched object, FP
    return match


def voc_ap(recall, precision, use_07_metric=True):
    """Average precision from a precision-recall curve (arrays in detection order).

    use_07_metric: mean over t in {0, 0.1, ..., 1} of max(precision[recall >= t]) (0 if none).
        The thresholds are the doubles nearest k/10, so a recall of exactly 3/10 counts at t = 0.3
        (np.arange(0, 1.1, 0.1), as some ports write it, makes t = 0.30000000000000004 and misses it).
    Otherwise: area under the precision envelope p(r) = max(precision[recall >= r]).
    Undefined precisions (0/0 at the start, after ignored detections) count as 0.
    """
    precision = np.nan_to_num(np.asarray(precision, dtype=np.float64))
    recall = np.asarray(recall, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(11) / 10.0:      # exactly k/10: a recall of 3/10 reaches t = 0.3
            above = precision[recall >= t]
            ap += (above.max() if above.size else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changed = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changed + 1] - mrec[changed]) * mpre[changed + 1]))


def eval_detection_voc(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_difficult=None,
                       iou_thresh=0.5, use_07_metric=True, num_labels=None):
    """VOC average precision of each class and their mean.

    Inputs are lists with one entry per image: pred_boxes (D_i, 4), pred_labels (D_i,) int,
    pred_scores (D_i,); gt_boxes (G_i, 4), gt_labels (G_i,) int, gt_difficult (G_i,) bool
    (None: nothing is difficult). Boxes are (x1, y1, x2, y2) pixel-inclusive; labels as the data
    set gives them (1..K, 0 the background, never a detection).

    Returns a dict indexed by label: "ap" (L,) float with L = num_labels or 1 + the largest label
    seen, NaN for a label without any non-difficult ground truth (so ap[0], the background, is
    NaN); "map" the mean of the non-NaN APs; "precision" and "recall": lists of L arrays (the curve
    in score order, over the detections of that label) or None where undefined.
    """
    n_images = len(gt_boxes)
    if not (len(pred_boxes) == len(pred_labels) == len(pred_scores) == len(gt_labels) == n_images):
        raise ValueError("every input needs one entry per image")
    if gt_difficult is None:
        gt_difficult = [None] * n_images

    seen = [0]
    for labels in list(pred_labels) + list(gt_labels):
        labels = np.asarray(labels)
        if labels.size:
            seen.append(int(labels.max()))
    n_labels = int(num_labels) if num_labels is not None else max(seen) + 1

    n_pos = np.zeros(n_labels, dtype=np.int64)
    scores = [[] for _ in range(n_labels)]
    matches = [[] for _ in range(n_labels)]
    for i in range(n_images):
        p_boxes = np.asarray(pred_boxes[i], dtype=np.float64).reshape(-1, 4)
        p_labels = np.asarray(pred_labels[i]).reshape(-1).astype(np.int64)
        p_scores = np.asarray(pred_scores[i], dtype=np.float64).reshape(-1)
        g_boxes = np.asarray(gt_boxes[i], dtype=np.float64).reshape(-1, 4)
        g_labels = np.asarray(gt_labels[i]).reshape(-1).astype(np.int64)
        g_diff = (np.zeros(len(g_labels), dtype=bool) if gt_difficult[i] is None
                  else np.asarray(gt_difficult[i]).reshape(-1).astype(bool))
        for label in np.unique(np.concatenate((p_labels, g_labels))):
            if label >= n_labels:
                raise ValueError(f"label {label} is outside 0..{n_labels - 1}")
            gt_mask = g_labels == label
            n_pos[label] += int(np.count_nonzero(~g_diff[gt_mask]))
            mine = p_labels == label
            order = np.argsort(-p_scores[mine], kind="stable")
            boxes_l, scores_l = p_boxes[mine][order], p_scores[mine][order]
            scores[label].append(scores_l)
            matches[label].append(match_detections(boxes_l, g_boxes[gt_mask], g_diff[gt_mask], iou_thresh))

    ap = np.full(n_labels, np.nan)
    precision, recall = [None] * n_labels, [None] * n_labels
    for label in range(n_labels):
        if not scores[label]:
            continue
        score_l = np.concatenate(scores[label])
        match_l = np.concatenate(matches[label])
        order = np.argsort(-score_l, kind="stable")
        match_l = match_l[order]
        tp = np.cumsum(match_l == 1)
        fp = np.cumsum(match_l == 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision[label] = tp / (tp + fp)
        if n_pos[label] > 0:
            recall[label] = tp / n_pos[label]
            ap[label] = voc_ap(recall[label], precision[label], use_07_metric)
    valid = ~np.isnan(ap)
    mean_ap = float(ap[valid].mean()) if valid.any() else float("nan")
    return {"ap": ap, "map": mean_ap, "precision": precision, "recall": recall}


# ---------------------------------------------------------------------------------------------
# a model over a data set

def detect_dataset(model, dataset, proposals, convention, scale=600, max_size=1000, device="cpu",
                   progress=True, **detect_kwargs):
    """Run `minidet.detect.detect` on every image of a data set.

    proposals: one (P_i, 4) array per image, in dataset order. Returns (boxes, labels, scores):
    lists with one array per image, boxes in the original image pixels.
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
    """(boxes, labels, difficult) lists from a data set's annotations, without reading images."""
    boxes, labels, difficult = [], [], []
    for i in range(len(dataset)):
        a = dataset.annotation(i) if hasattr(dataset, "annotation") else dataset[i]
        boxes.append(a["boxes"])
        labels.append(a["labels"])
        difficult.append(a["difficult"])
    return boxes, labels, difficult


def evaluate_detections(dataset, boxes, labels, scores, use_07_metric=True):
    """eval_detection_voc of per-image detections against the data set's ground truth,
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


def plot_pr_curves(result, class_names, png_path):
    """Precision-recall curves of every class with a defined AP, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for k, name in enumerate(class_names):
        precision, recall = result["precision"][k + 1], result["recall"][k + 1]
        if precision is None or recall is None or len(recall) == 0:
            continue
        ax.plot(recall, np.nan_to_num(precision), label=f"{name} (AP {100 * result['ap'][k + 1]:.1f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"mAP {100 * result['map']:.1f}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def evaluate_checkpoint(checkpoint, data_dir, split="test", device="cpu", out=None, proposals_dir=None,
                        scale=None, class_names=None, use_07_metric=True, progress=True, workers=2, log=print):
    """Load a saved model, detect over a split, compute the VOC AP; write results into `out`.

    Returns dict(map, ap {class name: AP or None}, images, split, scale, detect_seconds, metric,
    checkpoint, detections (boxes, labels, scores lists)); when `out` is given, writes all but the
    detections to OUT/eval_<split>.json and the precision-recall curves to OUT/pr_<split>.png.
    """
    from minidet.data.proposals import load_proposals
    from minidet.data.voc import VOCDataset
    from minidet.detect import load_model
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
    started = time.perf_counter()
    boxes, labels, scores = detect_dataset(model, dataset, proposals, info["convention"], scale,
                                           info["max_size"], device, progress)
    seconds = time.perf_counter() - started
    result = evaluate_detections(dataset, boxes, labels, scores, use_07_metric)
    log(format_table(result, dataset.class_names))
    summary = {"map": result["map"], "ap": result["ap_by_class"], "images": len(dataset), "split": split,
               "scale": scale, "detect_seconds": seconds, "metric": "VOC07 11-point" if use_07_metric else "area",
               "checkpoint": os.path.abspath(checkpoint)}
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"eval_{split}.json"), "w") as f:
            json.dump(summary, f, indent=2)
        plot_pr_curves(result, dataset.class_names, os.path.join(out, f"pr_{split}.png"))
    summary["detections"] = (boxes, labels, scores)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="minidet eval", description="Evaluate a trained model with the VOC AP.")
    parser.add_argument("--checkpoint", required=True, help="OUT/final.npz (or OUT/checkpoint.npz) of a run")
    parser.add_argument("--data-dir", required=True, help="VOC-layout folder")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--out", default=None, help="folder for eval_<split>.json and pr_<split>.png "
                                                    "(default: the checkpoint's folder)")
    parser.add_argument("--scale", type=int, default=None, help="test scale (default: the model's)")
    parser.add_argument("--proposals-dir", default=None, help="proposal cache folder")
    parser.add_argument("--area-ap", action="store_true", help="VOC2010+ area AP instead of VOC07 11-point")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.device == "gpu":
        from minidet.backend import require_cupy

        try:
            require_cupy()
        except RuntimeError as err:
            print(f"minidet eval: {err}", file=sys.stderr)
            return 2
    out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    try:
        summary = evaluate_checkpoint(args.checkpoint, args.data_dir, args.split, args.device, out,
                                      args.proposals_dir, args.scale, use_07_metric=not args.area_ap,
                                      progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as err:
        print(f"minidet eval: {err}", file=sys.stderr)
        return 2
    print(f"mAP {100 * summary['map']:.1f} on {summary['images']} images of {args.split}; "
          f"results in {os.path.join(out, f'eval_{args.split}.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
