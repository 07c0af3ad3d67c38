"""Proposal recall: the share of ground-truth boxes that the top-k proposals of their image find.

A detector can only find an object that one of its proposals overlaps well enough for the box
regression to reach it, so the recall of the proposals at IoU 0.5 bounds the recall of the
detections (and with it the precision-recall curve, which stops there). Proposals come ranked
(selective search lists the likeliest objects first), and a smaller budget of boxes per image
makes training and detection cheaper, so recall is measured against the budget k:

    needed[t, g] = 1 + the index of the first proposal whose IoU with box g is >= thresholds[t]
                   (NO_HIT when none is), so that box g is found by the top k iff needed[t, g] <= k
    recall(t, class, k) = #{g of the class : needed[t, g] <= k} / #{g of the class}

One pass over the IoU matrix of each image gives every budget at once. IoU as minidet.boxes
computes it (pixel-inclusive, +1 areas); difficult boxes are left out unless asked for, as VOC does.
"""
import argparse
import json
import os
import sys

import numpy as np

from minidet.boxes import bbox_overlaps
from minidet.data.dataset import DatasetSubset

NO_HIT = np.iinfo(np.int64).max
IOU_THRESHOLDS = (0.5, 0.7)
BUDGETS = (50, 100, 200, 500, 1000, 2000, None)   # None: every box


def boxes_needed(gt_boxes, proposals, thresholds=IOU_THRESHOLDS):
    """How many of the ranked proposals it takes to find each box.

    gt_boxes (G, 4), proposals (P, 4) in rank order -> (T, G) int64: 1 + the index of the first
    proposal with IoU >= thresholds[t] with box g, NO_HIT where none reaches it.
    """
    thresholds = np.asarray(thresholds, np.float64).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    needed = np.full((len(thresholds), len(gt_boxes)), NO_HIT, np.int64)
    if len(gt_boxes) == 0 or len(proposals) == 0:
        return needed
    iou = bbox_overlaps(gt_boxes, np.asarray(proposals, np.float64).reshape(-1, 4))   # (G, P)
    for t, thresh in enumerate(thresholds):
        hit = iou >= thresh
        found = hit.any(axis=1)
        needed[t, found] = hit[found].argmax(axis=1) + 1     # argmax of a bool row: its first True
    return needed


def best_overlaps(gt_boxes, proposals):
    """(G,) float64: each box's highest IoU with any proposal (0 when there are none)."""
    if len(gt_boxes) == 0 or len(proposals) == 0:
        return np.zeros(len(gt_boxes))
    return bbox_overlaps(np.asarray(gt_boxes, np.float64), np.asarray(proposals, np.float64)).max(axis=1)


def dataset_boxes_needed(proposals, dataset, thresholds=IOU_THRESHOLDS, use_difficult=False):
    """boxes_needed over a data set: (needed (T, N) int64, labels (N,) int64 in 1..K, best IoU (N,))
    for its N ground-truth boxes, image after image. proposals: one (P_i, 4) array per ds index."""
    if len(proposals) != len(dataset):
        raise ValueError(f"{len(proposals)} proposal sets for {len(dataset)} images")
    needed, labels, best = [], [], []
    for i, boxes in enumerate(proposals):
        a = dataset.annotation(i)
        keep = np.ones(len(a["boxes"]), bool) if use_difficult else ~a["difficult"]
        needed.append(boxes_needed(a["boxes"][keep], boxes, thresholds))
        labels.append(a["labels"][keep])
        best.append(best_overlaps(a["boxes"][keep], boxes))
    return (np.concatenate(needed, axis=1), np.concatenate(labels).astype(np.int64),
            np.concatenate(best))


def recall_table(needed, labels, class_names, thresholds=IOU_THRESHOLDS, budgets=BUDGETS):
    """Recall per IoU threshold, class and budget.

    needed (T, N), labels (N,) as dataset_boxes_needed gives them -> dict
    {f"{t:g}": {class name or "all": {budget ("all" for None): recall}}}; a class without boxes gets NaN.
    """
    table = {}
    for t, thresh in enumerate(thresholds):
        rows = {}
        for c, name in [(None, "all")] + list(enumerate(class_names, 1)):
            n = needed[t] if c is None else needed[t, labels == c]
            rows[name] = {("all" if k is None else str(k)):
                          (float(np.mean(n <= (NO_HIT - 1 if k is None else k))) if len(n) else float("nan"))
                          for k in budgets}
        table[f"{thresh:g}"] = rows
    return table


def proposal_recall(proposals, dataset, iou_thresh=0.5, use_difficult=False):
    """Share of ground-truth boxes that some proposal overlaps by IoU >= iou_thresh (difficult ones left out)."""
    needed, _, _ = dataset_boxes_needed(proposals, dataset, (iou_thresh,), use_difficult)
    return float(np.mean(needed[0] != NO_HIT)) if needed.shape[1] else float("nan")


def measure_modes(dataset, modes, cache_dir, workers=2, min_size=2, max_side=500, thresholds=IOU_THRESHOLDS,
                  budgets=BUDGETS, progress=True, max_boxes=None):
    """Recall of each selective-search mode on a data set, the boxes of each image computed (and cached) once
    (all of them, or the first max_boxes).

    Returns {mode: dict(recall=recall_table(...), mean_best_overlap={class: ABO}, objects={class: count},
    boxes_per_image, seconds_per_image (CPU seconds of the images computed now; None when all came from the cache),
    curve=dict(k=[...], recall={threshold: {class: [...]}}))}.
    """
    from minidet.data.proposals import load_proposals

    results = {}
    for mode in modes:
        stats = {}
        proposals = load_proposals(dataset, cache_dir, workers, max_boxes, mode, min_size, max_side, progress, stats)
        needed, labels, best = dataset_boxes_needed(proposals, dataset, thresholds)
        counts = np.array([len(p) for p in proposals])
        # A dense, log-spaced set of budgets for the plot, up to the largest image's count.
        ks = sorted(set(np.geomspace(1, max(counts.max(), 1), 60).round().astype(int).tolist()))
        names = ["all", *dataset.class_names]
        curve = recall_table(needed, labels, dataset.class_names, thresholds, ks)
        results[mode] = dict(
            recall=recall_table(needed, labels, dataset.class_names, thresholds, budgets),
            mean_best_overlap={name: float(best[labels == c].mean()) if (labels == c).any() else float("nan")
                               for c, name in enumerate(dataset.class_names, 1)},
            boxes_per_image=float(counts.mean()), seconds_per_image=stats["seconds_per_image"],
            objects={name: int((labels == c).sum()) for c, name in enumerate(dataset.class_names, 1)},
            curve=dict(k=ks, recall={t: {n: [curve[t][n][str(k)] for k in ks] for n in names} for t in curve}))
    return results


AUTO_CANDIDATES = ("fast", "fine")
AUTO_SAMPLE = 24         # training images choose_mode measures on: a minute of searching on 2 cores


def best_mode(results, budget=2000, threshold=0.5, margin=0.02, min_objects=10):
    """The mode that finds its worst-found class best within `budget` boxes per image, at IoU `threshold`;
    of the modes within `margin` of that (a tie, on a sample), the one with the fewest boxes per image.

    results: measure_modes' output with `budget` among its budgets. Classes with fewer than min_objects
    boxes, whose recall on a sample is mostly chance, are left out (all boxes together when none is left).
    """
    def worst(r):
        row = r["recall"][f"{threshold:g}"]
        names = [n for n, count in r["objects"].items() if count >= min_objects] or ["all"]
        return min(row[n][str(budget)] for n in names)

    scores = {mode: worst(r) for mode, r in results.items()}
    best = max(scores.values())
    return min((m for m in results if scores[m] >= best - margin), key=lambda m: results[m]["boxes_per_image"])


def choose_mode(dataset, cache_dir, candidates=AUTO_CANDIDATES, budget=2000, sample=AUTO_SAMPLE, workers=2,
                min_size=2, max_side=500, progress=True):
    """The selective-search mode for a data set, chosen by measuring (docs/PROPOSALS.md): best_mode of the
    candidates on `sample` images spread over it (its training split). Returns (mode, measure_modes' results).

    The sample's boxes are computed with max_boxes=budget, the setting training and detection use, so the
    chosen mode's are cached for them and not searched again.
    """
    subset = DatasetSubset.spread(dataset, sample)
    results = measure_modes(subset, candidates, cache_dir, workers, min_size, max_side, (0.5,), (budget,),
                            progress, max_boxes=budget)
    return best_mode(results, budget), results


def format_table(results, class_names, budgets=BUDGETS):
    """The recall table as text: one block per IoU threshold, one row per mode and class."""
    heads = ["all" if k is None else str(k) for k in budgets]
    lines = []
    for t in next(iter(results.values()))["recall"]:
        lines.append(f"recall at IoU {t} against boxes per image (top k in the mode's ranking)")
        lines.append(f"{'mode':10s} {'class':10s} {'boxes':>6s} {'s/img':>6s}  " + " ".join(f"{h:>6s}" for h in heads))
        for mode, r in results.items():
            sec = "-" if r["seconds_per_image"] is None else f"{r['seconds_per_image']:.2f}"
            for name in ["all", *class_names]:
                row = r["recall"][t][name]
                lines.append(f"{mode:10s} {name:10s} {r['boxes_per_image']:6.0f} {sec:>6s}  "
                             + " ".join(f"{row[h]:6.3f}" for h in heads))
        lines.append("")
    return "\n".join(lines)


def plot_recall(results, class_names, png_path, title=""):
    """Recall against boxes per image: one panel per IoU threshold and class, one curve per mode."""
    from minidet.plots import _pyplot

    plt = _pyplot()
    thresholds = list(next(iter(results.values()))["curve"]["recall"])
    names = ["all", *class_names]
    fig, axes = plt.subplots(len(thresholds), len(names), figsize=(3.2 * len(names), 2.8 * len(thresholds)),
                             squeeze=False, sharex=True, sharey=True)
    for row, t in enumerate(thresholds):
        for col, name in enumerate(names):
            ax = axes[row][col]
            for mode, r in results.items():
                ax.plot(r["curve"]["k"], r["curve"]["recall"][t][name], label=mode)
            ax.set_xscale("log")
            ax.set_ylim(0, 1.01)
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{name}, IoU {t}", fontsize=9)
            if row == len(thresholds) - 1:
                ax.set_xlabel("boxes per image")
            if col == 0:
                ax.set_ylabel("recall")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def parse_budgets(text):
    """"50,100,all" -> (50, 100, None)."""
    return tuple(None if s.strip() == "all" else int(s) for s in text.split(",") if s.strip())


def main(argv=None):
    """`minidet proposals --recall`: proposal recall per class against boxes per image, for several modes."""
    from minidet.atomic import atomic_write
    from minidet.data.proposals import MODES, add_search_arguments
    from minidet.data.voc import VOCDataset

    parser = argparse.ArgumentParser(prog="minidet proposals --recall",
                                     description=main.__doc__.split(":", 1)[1].strip())
    add_search_arguments(parser)
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, from {', '.join(MODES)} (default: all)")
    parser.add_argument("--budgets", default="50,100,200,500,1000,2000,all",
                        help="boxes per image (default: %(default)s)")
    parser.add_argument("--iou", default="0.5,0.7", help="IoU thresholds (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N images of the split (a quick ranking)")
    parser.add_argument("--out", default=None, help="folder for recall.json and recall.png (default: none written)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    try:
        budgets, thresholds = parse_budgets(args.budgets), tuple(float(t) for t in args.iou.split(","))
    except ValueError as e:
        parser.error(f"--budgets / --iou: {e}")
    try:
        dataset = VOCDataset(args.data_dir, args.split, args.classes.split(",") if args.classes else None)
    except (OSError, ValueError) as e:
        print(f"minidet proposals --recall: {e}", file=sys.stderr)
        return 2
    if args.limit:
        dataset = DatasetSubset(dataset, range(min(args.limit, len(dataset))))
    cache_dir = args.cache_dir or os.path.join(args.data_dir, "proposals_cache")
    results = measure_modes(dataset, modes, cache_dir, args.workers, args.min_size, args.max_side or None,
                            thresholds, budgets)
    what = f"{len(dataset)} images of {args.data_dir} ({args.split}), max side {args.max_side or 'none'}"
    print(what)
    print(format_table(results, dataset.class_names, budgets))
    for mode, r in results.items():
        print(f"{mode}: mean best overlap " + ", ".join(f"{c} {v:.3f}" for c, v in r["mean_best_overlap"].items()))
    finite = [k for k in budgets if k is not None]
    if 0.5 in thresholds and finite and len(results) > 1:
        k = 2000 if 2000 in finite else max(finite)
        print(f"best mode by the recall of its worst-found class at IoU 0.5 within {k} boxes: {best_mode(results, k)}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        report = dict(data_dir=args.data_dir, split=args.split, images=len(dataset), max_side=args.max_side or None,
                      min_size=args.min_size, modes={m: dict(r, setup=str(MODES[m])) for m, r in results.items()})
        with atomic_write(os.path.join(args.out, "recall.json"), "w") as f:
            json.dump(report, f, indent=1)
        plot_recall(results, dataset.class_names, os.path.join(args.out, "recall.png"), what)
        print(f"wrote {os.path.join(args.out, 'recall.json')} and recall.png")
    return 0
