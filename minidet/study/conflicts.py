"""Label conflicts of RoI pooling: sampled RoIs that read identical input but carry different labels.

RoI pooling on conv5_3 (stride 16) rounds each corner to a feature cell, so two nearby proposals of
one image can pool exactly the same cells: whatever the network computes, their pooled inputs are
equal, and if one is foreground and the other background (or two classes) the loss asks one input
for two answers. This module decides that identity exactly, as the op computes it:

- RoIPool (minidet.ops.roi_pool): identical when every bin covers the same cells after clipping to
  the map, i.e. equal C-rounded corners (halves away from zero, in the op's float type) or corners
  that differ only where the bins leave the map; bins empty in both count as equal, and a RoI with
  no cell at all reads nothing, like every other such RoI of its image.
- RoIAlign (minidet.ops.roi_align): identical when every sampling point reads the same cells with
  the same bilinear weights (the points computed as the op computes them, border rules included)
  and the bins hold as many points.

Identical keys give identical outputs on every feature map; different keys differ on a random map
(tests/test_study_conflicts.py checks both by running the ops). Per image:

    identical share = RoIs whose input equals another RoI's of the image / RoIs
    conflict share  = RoIs whose input equals that of another RoI of the image with another label / RoIs

`run_conflict_study` measures them on the training sampler's real mini-batches (minidet.data.loader:
hierarchical, 2 images, 64 RoIs an image, 25% foreground, flips) at several image scales, for RoI
pooling and RoIAlign on conv5_3 (1/16) and conv4_3 (1/8); `main` is its command line.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

from minidet.arguments import parse_classes, parse_scales
from minidet.atomic import atomic_write
from minidet.ops.maxpool import pooled_size
from minidet.ops.roi_align import axis_points
from minidet.ops.roi_pool import roi_bins

# layer -> (spatial scale, 2x2 ceil-mode max-pools before it in VGG16)
ROI_LAYERS = {"conv5_3": (1 / 16, 4), "conv4_3": (1 / 8, 3)}
ROI_OPS = ("pool", "align")
ALIGN_SETTINGS = dict(sampling_ratio=2, aligned=True)   # minidet.nn.RoIAlign's defaults


def feature_size(height, width, roi_layer):
    """(H, W) of VGG16's map at roi_layer for an input of height x width (Caffe's ceil-mode pools)."""
    for _ in range(ROI_LAYERS[roi_layer][1]):
        height, width = pooled_size(height, 2, 2, 0, True), pooled_size(width, 2, 2, 0, True)
    return height, width


def pool_keys(rois, spatial_scale, map_size, output_size=(7, 7), dtype=np.float32):
    """One key (bytes) per RoI: equal keys <=> RoIPool reads the same cells in every bin.

    rois (R, 5) [batch index, x1, y1, x2, y2] in input pixels; map_size (H, W) of the pooled map.
    """
    (height, width), (ph, pw) = map_size, output_size
    keys = []
    for roi in np.asarray(rois).astype(dtype):
        h_lo, h_hi = roi_bins((roi[2], roi[4]), spatial_scale, ph, height, dtype)
        w_lo, w_hi = roi_bins((roi[1], roi[3]), spatial_scale, pw, width, dtype)
        rows, cols = h_hi > h_lo, w_hi > w_lo        # bin (i, j) holds cells iff rows[i] and cols[j]
        if not rows.any() or not cols.any():
            keys.append(b"empty %d" % int(roi[0]))
            continue
        edges = [np.where(rows, h_lo, 0), np.where(rows, h_hi, 0), np.where(cols, w_lo, 0), np.where(cols, w_hi, 0)]
        keys.append(np.concatenate([[int(roi[0])], *edges]).astype(np.int64).tobytes())
    return keys


def align_keys(rois, spatial_scale, map_size, output_size=(7, 7), sampling_ratio=2, aligned=True,
               dtype=np.float32):
    """One key (bytes) per RoI: equal keys <=> RoIAlign reads the same cells with the same weights
    at every point of every bin (see pool_keys for the arguments)."""
    (height, width), (ph, pw) = map_size, output_size
    keys = []
    for roi in np.asarray(rois).astype(dtype):
        ys = axis_points(roi[2], roi[4], spatial_scale, ph, sampling_ratio, aligned, height, dtype)
        xs = axis_points(roi[1], roi[3], spatial_scale, pw, sampling_ratio, aligned, width, dtype)
        rows, cols = ys["inside"].any(axis=1), xs["inside"].any(axis=1)   # bins with a point that reads
        if ys["grid"] <= 0 or xs["grid"] <= 0 or not rows.any() or not cols.any():
            keys.append(b"empty %d" % int(roi[0]))
            continue
        parts = [np.array([int(roi[0]), ys["grid"], xs["grid"]], np.int64).tobytes()]
        for axis, used in ((ys, rows), (xs, cols)):   # a row of bins that reads nothing is all zeros
            for name in ("inside", "lo", "hi", "l", "h"):
                parts.append(np.where(used[:, None], axis[name], 0).astype(np.float64).tobytes())
        keys.append(b"".join(parts))
    return keys


def roi_keys(rois, roi_op, roi_layer, map_size, dtype=np.float32):
    """pool_keys or align_keys of rois at roi_layer's scale, with the settings minidet trains with."""
    scale = ROI_LAYERS[roi_layer][0]
    if roi_op == "pool":
        return pool_keys(rois, scale, map_size, dtype=dtype)
    if roi_op == "align":
        return align_keys(rois, scale, map_size, dtype=dtype, **ALIGN_SETTINGS)
    raise ValueError(f"roi_op must be one of {ROI_OPS}, got {roi_op!r}")


def identity_groups(keys, labels):
    """For one image's RoIs: group (R,) int64 (equal for identical input), identical (R,) bool (another
    RoI shares the input) and conflict (R,) bool (another RoI with another label shares it)."""
    labels = np.asarray(labels, np.int64)
    if len(keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, bool)
    _, group = np.unique(np.array(keys, dtype=object), return_inverse=True)
    group = group.reshape(-1)
    size = np.bincount(group)
    lowest = np.full(len(size), np.iinfo(np.int64).max)
    highest = np.full(len(size), np.iinfo(np.int64).min)
    np.minimum.at(lowest, group, labels)
    np.maximum.at(highest, group, labels)
    return group, size[group] > 1, (lowest != highest)[group]


def conflicting_pair(group, conflict, labels):
    """(i, j): two RoIs with identical input and different labels, the first such in index order; or None."""
    for i in np.flatnonzero(conflict):
        others = np.flatnonzero((group == group[i]) & (labels != labels[i]))
        if len(others):
            return int(i), int(others[0])
    return None


# ---- the study on real mini-batches ------------------------------------------------------------

def _as_tuple(value, known, what):
    values = (value,) if isinstance(value, str) else tuple(value)
    for v in values:
        if v not in known:
            raise ValueError(f"{what} must be among {tuple(known)}, got {v!r}")
    return values


def run_conflict_study(data_dir, split="trainval", scales=(224, 320, 480, 600), roi_op=ROI_OPS,
                       roi_layer=tuple(ROI_LAYERS), images=40, seed=0, class_names=None, proposals_dir=None,
                       proposal_mode="fast", workers=2, progress=True):
    """Identical and conflicting shares of sampled RoIs, per image scale and setting (op, layer).

    `images` images of the split (drawn with `seed`), one epoch of minidet.data.loader.BatchLoader
    over them at each scale (each image once as it is and once flipped; the same seed, so the same
    RoIs at every scale), with proposals from minidet.data.proposals.load_proposals (cached in
    proposals_dir, default DATA_DIR/proposals_cache). Returns dict(rows=[per (op, layer, scale):
    images (image visits), rois, identical and conflict (shares of all RoIs), fg_rois and fg_conflict
    (the share of them in conflict)], example=(a conflicting pair: image id, boxes in its pixels,
    labels) or None, ...).
    """
    from tqdm import tqdm

    from minidet.convention import CAFFE
    from minidet.data.dataset import DatasetSubset
    from minidet.data.loader import BatchLoader
    from minidet.data.proposals import load_proposals
    from minidet.data.open import open_dataset

    ops, layers = _as_tuple(roi_op, ROI_OPS, "roi_op"), _as_tuple(roi_layer, ROI_LAYERS, "roi_layer")
    dataset = open_dataset(data_dir, split, class_names)
    count = min(int(images), len(dataset))
    chosen = np.sort(np.random.default_rng(seed).choice(len(dataset), count, replace=False))
    subset = DatasetSubset(dataset, chosen)
    cache = proposals_dir or os.path.join(data_dir, "proposals_cache")
    proposals = load_proposals(subset, cache, workers=workers, mode=proposal_mode, progress=progress)
    totals = {(o, l, s): np.zeros(6, np.int64) for o in ops for l in layers for s in scales}
    example = example_rank = None
    for scale in scales:
        with BatchLoader(subset, proposals, CAFFE, dataset.num_classes, scales=(scale,), seed=seed) as loader:
            for _ in tqdm(range(math.ceil(loader.batches_per_epoch)), desc=f"scale {scale}", disable=not progress,
                          file=sys.stderr):
                batch = next(loader)
                for n, image_id in enumerate(batch["ids"]):
                    mine = batch["rois"][:, 0] == n
                    rois, labels = batch["rois"][mine], batch["labels"][mine]
                    for o in ops:
                        for l in layers:
                            map_size = feature_size(*batch["images"].shape[2:], l)
                            group, identical, conflict = identity_groups(roi_keys(rois, o, l, map_size), labels)
                            fg = labels > 0
                            totals[o, l, scale] += [1, len(rois), identical.sum(), conflict.sum(), fg.sum(),
                                                    (conflict & fg).sum()]
                            pair = conflicting_pair(group, conflict, labels)
                            # the example to draw: RoI pooling on conv5_3 at the smallest scale, if any
                            rank = ((o, l) != ("pool", "conv5_3"), list(scales).index(scale))
                            if pair is not None and (example is None or rank < example_rank):
                                example, example_rank = dict(
                                    roi_op=o, roi_layer=l, scale=scale, image_id=image_id,
                                    flipped=bool(batch["flipped"][n]), image_scale=float(batch["scales"][n]),
                                    boxes=(rois[list(pair), 1:] / batch["scales"][n]).tolist(),
                                    labels=labels[list(pair)].tolist()), rank
    rows = []
    for (o, l, s), (n_images, n_rois, n_identical, n_conflict, n_fg, n_fg_conflict) in totals.items():
        rows.append(dict(roi_op=o, roi_layer=l, spatial_scale=ROI_LAYERS[l][0], scale=s, images=int(n_images),
                         rois=int(n_rois), identical=float(n_identical / max(n_rois, 1)),
                         conflict=float(n_conflict / max(n_rois, 1)), fg_rois=int(n_fg),
                         fg_conflict=float(n_fg_conflict / max(n_fg, 1))))
    return dict(data_dir=os.fspath(data_dir), split=split, images=count, image_ids=subset.ids, seed=seed,
                class_names=list(dataset.class_names), proposal_mode=proposal_mode, rows=rows, example=example)


def format_table(result):
    lines = [f"{'op':<6} {'layer':<8} {'scale':>5} {'visits':>6} {'RoIs':>6} {'identical':>10} {'conflict':>9} "
             f"{'fg RoIs':>8} {'fg conflict':>12}"]
    for r in result["rows"]:
        lines.append(f"{r['roi_op']:<6} {r['roi_layer']:<8} {r['scale']:>5} {r['images']:>6} {r['rois']:>6} "
                     f"{100 * r['identical']:>9.2f}% {100 * r['conflict']:>8.2f}% {r['fg_rois']:>8} "
                     f"{100 * r['fg_conflict']:>11.2f}%")
    return "\n".join(lines)


def main(argv=None):
    """`minidet study-conflicts`: how often sampled RoIs with different labels read identical input."""
    from minidet.data.proposals import MODES

    parser = argparse.ArgumentParser(prog="minidet study conflicts", description=main.__doc__.split(":", 1)[1].strip())
    parser.add_argument("--data-dir", required=True, help="a VOC- or COCO-layout folder (minidet.data.open)")
    parser.add_argument("--split", default="trainval", help="ImageSets/Main/SPLIT.txt (default: trainval)")
    parser.add_argument("--classes", type=parse_classes, default=None,
                        help="comma-separated class names when there is no classes.txt")
    parser.add_argument("--scales", type=parse_scales, default="224,320,480,600",
                        help="image scales, shorter side in pixels (default: 224,320,480,600)")
    parser.add_argument("--roi-op", nargs="+", choices=ROI_OPS, default=list(ROI_OPS), help="default: both")
    parser.add_argument("--roi-layer", nargs="+", choices=tuple(ROI_LAYERS), default=list(ROI_LAYERS),
                        help="conv5_3 (scale 1/16) and/or conv4_3 (1/8); default: both")
    parser.add_argument("--images", type=int, default=40, help="images of the split, each also flipped (default: 40)")
    parser.add_argument("--seed", type=int, default=0, help="draws the images and the batches (default: 0)")
    parser.add_argument("--proposals-dir", default=None, help="proposal cache (default: DATA_DIR/proposals_cache "
                        "if writable, else OUT/proposals_cache)")
    parser.add_argument("--proposal-mode", choices=MODES, default="fast", help="selective-search setup (default: fast)")
    parser.add_argument("--workers", type=int, default=2, help="selective-search processes (default: 2)")
    parser.add_argument("--out", default="study_conflicts", help="folder for conflicts.json and conflicts.png")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be positive")
    proposals_dir = args.proposals_dir
    if proposals_dir is None and not os.access(args.data_dir, os.W_OK):
        proposals_dir = os.path.join(args.out, "proposals_cache")
    try:
        result = run_conflict_study(args.data_dir, args.split, args.scales, args.roi_op, args.roi_layer, args.images,
                                    args.seed, args.classes, proposals_dir, args.proposal_mode, args.workers)
    except (OSError, ValueError) as e:
        print(f"minidet study-conflicts: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    path = os.path.join(args.out, "conflicts.json")
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    from minidet.study.conflict_plot import plot_conflicts

    figure = plot_conflicts(result, os.path.join(args.out, "conflicts.png"))
    print(f"wrote {path} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
