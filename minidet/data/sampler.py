"""Hierarchical sampling, one image's share: which RoIs a training batch sees, with their labels and targets.

Fast R-CNN (SPEC.md "Training"): the candidates of an image are its ground-truth boxes and its
proposals; each candidate takes the class and IoU of the ground-truth box it overlaps most.

    foreground: IoU >= fg_thresh (0.5), at most round(fg_fraction * rois_per_image) (16 of 64)
    background: bg_thresh_lo <= IoU < bg_thresh_hi ([0.1, 0.5)), label 0, filling the rest

both drawn without replacement: an image with too few of either contributes fewer RoIs.
An image without ground truth (every object difficult and left out) has no candidate with
IoU >= 0.1 and gives no RoI at all; the ports' filter_roidb leaves such images out of training,
and so does the loader, through `has_training_rois`.

Regression targets of a foreground RoI P towards its ground truth G (SPEC.md; +1 widths):
    t = ((Gx - Px) / Pw, (Gy - Py) / Ph, log(Gw / Pw), log(Gh / Ph)),  stored as (t - means) / stds
in the 4 columns of the RoI's class; bbox_weights is 1 there and 0 everywhere else.
"""
import numpy as np

from minidet.boxes import bbox_overlaps, bbox_transform


def assign_gt(boxes, gt_boxes):
    """Each box's best ground truth: (index (N,) int64, IoU (N,) float32); IoU 0 and index 0 when G = 0."""
    if len(gt_boxes) == 0 or len(boxes) == 0:
        return np.zeros(len(boxes), np.int64), np.zeros(len(boxes), np.float32)
    overlaps = bbox_overlaps(np.asarray(boxes, np.float64), np.asarray(gt_boxes, np.float64))
    best = overlaps.argmax(axis=1)
    return best.astype(np.int64), overlaps[np.arange(len(boxes)), best].astype(np.float32)


def regression_targets(rois, gt_boxes, labels, num_classes, bbox_means=(0, 0, 0, 0), bbox_stds=(0.1, 0.1, 0.2, 0.2)):
    """Class-specific normalised targets.

    rois (R, 4), gt_boxes (R, 4) each RoI's matched ground truth, labels (R,) 0 for background
    -> bbox_targets, bbox_weights (R, 4 * num_classes) float32; rows of label 0 are all zero.
    """
    r = len(rois)
    targets = np.zeros((r, 4 * num_classes), np.float32)
    weights = np.zeros((r, 4 * num_classes), np.float32)
    fg = np.nonzero(labels > 0)[0]
    if len(fg):
        t = bbox_transform(np.asarray(rois[fg], np.float64), np.asarray(gt_boxes[fg], np.float64))
        t = (t - np.asarray(bbox_means, np.float64)) / np.asarray(bbox_stds, np.float64)
        columns = 4 * labels[fg][:, None] + np.arange(4)     # (F, 4): the class's four columns
        targets[fg[:, None], columns] = t
        weights[fg[:, None], columns] = 1.0
    return targets, weights


def has_training_rois(boxes, gt_boxes, fg_thresh=0.5, bg_thresh_hi=0.5, bg_thresh_lo=0.1):
    """Whether an image can give a RoI: a candidate (ground truth or proposal) that is foreground,
    IoU >= fg_thresh, or background, IoU in [bg_thresh_lo, bg_thresh_hi) (py-faster-rcnn's filter_roidb).

    boxes (P, 4) proposals, gt_boxes (G, 4). With ground truth the answer is yes (a ground-truth
    box is its own foreground); without, no for any bg_thresh_lo > 0.
    """
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    candidates = np.concatenate([gt_boxes, np.asarray(boxes, np.float32).reshape(-1, 4)])
    _, iou = assign_gt(candidates, gt_boxes)
    return bool(np.any((iou >= fg_thresh) | ((iou >= bg_thresh_lo) & (iou < bg_thresh_hi))))


def sample_rois(boxes, gt_boxes, gt_labels, num_classes, rois_per_image=64, fg_fraction=0.25, rng=None,
                fg_thresh=0.5, bg_thresh_hi=0.5, bg_thresh_lo=0.1, bbox_stds=(0.1, 0.1, 0.2, 0.2),
                bbox_means=(0, 0, 0, 0)):
    """Draw one image's RoIs for a training batch.

    boxes (P, 4) proposals and gt_boxes (G, 4), 0-based pixel-inclusive image pixels; gt_labels (G,)
    in 1..num_classes-1; num_classes counts the background; rng a np.random.Generator.
    Returns rois (R, 4) float32 (foreground first), labels (R,) int64, bbox_targets and
    bbox_weights (R, 4 * num_classes) float32, with R <= rois_per_image.
    """
    rng = np.random.default_rng() if rng is None else rng
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
    candidates = np.concatenate([gt_boxes, np.asarray(boxes, np.float32).reshape(-1, 4)])
    best, iou = assign_gt(candidates, gt_boxes)

    fg_inds = np.nonzero(iou >= fg_thresh)[0]
    fg_count = min(int(np.round(fg_fraction * rois_per_image)), len(fg_inds))
    if fg_count < len(fg_inds):
        fg_inds = rng.choice(fg_inds, size=fg_count, replace=False)

    bg_inds = np.nonzero((iou < bg_thresh_hi) & (iou >= bg_thresh_lo))[0]
    bg_count = min(rois_per_image - fg_count, len(bg_inds))
    if bg_count < len(bg_inds):
        bg_inds = rng.choice(bg_inds, size=bg_count, replace=False)

    keep = np.concatenate([fg_inds, bg_inds]).astype(np.int64)
    rois = candidates[keep]
    labels = np.zeros(len(keep), np.int64)
    labels[:fg_count] = gt_labels[best[fg_inds]] if len(gt_boxes) else 0
    matched = gt_boxes[best[keep]] if len(gt_boxes) else np.zeros((len(keep), 4), np.float32)
    targets, weights = regression_targets(rois, matched, labels, num_classes, bbox_means, bbox_stds)
    return rois, labels, targets, weights
