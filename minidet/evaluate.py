"""The PASCAL VOC detection metric: matching, precision and recall, average precision.

This module is the metric alone: arrays in, numbers out, no model and no files (running a model
over a data set is minidet.inference). It follows the devkit's VOCevaldet.m (SPEC.md "Evaluation"):

- per class, the detections of all images are sorted by score, highest first;
- each detection takes the ground-truth box of its class in its image with the highest IoU
  (pixel-inclusive areas, +1), among all of them: matched or not, difficult or not;
- IoU >= iou_thresh (the devkit's `>=`): a difficult box -> ignored (neither TP nor FP);
  a box not matched yet -> TP (now matched); an already matched box -> FP, even when another
  unmatched box also overlaps enough; IoU below the threshold or no box of the class -> FP;
- recall counts the non-difficult boxes; a class without one has AP NaN and stays out of the mAP;
- AP: VOC07's 11-point mean of the interpolated precision at the devkit's recall thresholds
  (VOC07_RECALL_THRESHOLDS), or the area under the monotone precision envelope (VOC2010+).

The ground truth is every annotated object as written (VOCDataset.annotation(i, as_written=True)).
As in ChainerCV's eval_detection_voc, the work is split in two: voc_precision_recall (matching,
then the curves) and voc_average_precision (the curves to AP); eval_detection_voc runs both.
"""
import numpy as np


def matlab_colon(start, step, stop):
    """The values of MATLAB's `start:step:stop`, computed as MATLAB's colon operator does.

    With n = round((stop - start) / step) intervals, element k (0-based) is start + k * step for
    k <= n / 2 and stop - (n - k) * step above: the first half counts up from `start`, the second
    down from `stop`, so that the last element is `stop` exactly. Returns a float64 array (n + 1,).
    """
    n = int(round((stop - start) / step))
    k = np.arange(n + 1)
    return np.where(k <= n / 2, start + k * step, stop - (n - k) * step)


# VOCevaldet.m's `for t=0:0.1:1`: 0, 0.1, 0.2, 0.30000000000000004 (= 3 * 0.1, above 3/10), 0.4,
# 0.5, then 1 - 0.4, 1 - 0.30000000000000004, 1 - 0.2, 1 - 0.1, 1, which are the doubles nearest
# 0.6 .. 1. So a recall of exactly 3/10 (the double nearest it) does not reach the 4th threshold.
VOC07_RECALL_THRESHOLDS = matlab_colon(0.0, 0.1, 1.0)


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
    """Average precision of one precision-recall curve (arrays in detection order).

    use_07_metric: the devkit's 11 points, mean over t in VOC07_RECALL_THRESHOLDS of
        max(precision[recall >= t]), 0 where no recall reaches t.
    Otherwise: area under the precision envelope p(r) = max(precision[recall >= r]) (VOCap.m).
    Undefined precisions (0/0 before the first TP or FP, while only ignored detections came)
    count as 0. MATLAB's max skips NaN, which is the same unless every precision is undefined:
    there the devkit's AP is NaN and this one 0.
    """
    precision = np.nan_to_num(np.asarray(precision, dtype=np.float64))
    recall = np.asarray(recall, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in VOC07_RECALL_THRESHOLDS:
            above = precision[recall >= t]
            ap += (above.max() if above.size else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changed = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changed + 1] - mrec[changed]) * mpre[changed + 1]))


def _count_labels(pred_labels, gt_labels, num_labels):
    """L: num_labels, else 1 + the largest label seen in any input (at least 1, the background)."""
    if num_labels is not None:
        return int(num_labels)
    seen = [0]
    for labels in list(pred_labels) + list(gt_labels):
        labels = np.asarray(labels)
        if labels.size:
            seen.append(int(labels.max()))
    return max(seen) + 1


def voc_precision_recall(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_difficult=None,
                         iou_thresh=0.5, num_labels=None):
    """Per label, the precision and recall after each detection, all images ranked together.

    Inputs are lists with one entry per image: pred_boxes (D_i, 4), pred_labels (D_i,) int,
    pred_scores (D_i,); gt_boxes (G_i, 4), gt_labels (G_i,) int, gt_difficult (G_i,) bool
    (None: nothing is difficult). Boxes are (x1, y1, x2, y2) pixel-inclusive; labels as the data
    set gives them (1..K, 0 the background, never a detection).

    Returns (precision, recall): lists of L arrays (L = num_labels or 1 + the largest label seen),
    each the curve over that label's detections in score order (equal scores: image order, then
    the order within the image); precision None for a label seen nowhere, recall None for a label
    without any non-difficult ground truth.
    """
    n_images = len(gt_boxes)
    if not (len(pred_boxes) == len(pred_labels) == len(pred_scores) == len(gt_labels) == n_images):
        raise ValueError("every input needs one entry per image")
    if gt_difficult is None:
        gt_difficult = [None] * n_images
    n_labels = _count_labels(pred_labels, gt_labels, num_labels)

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

    precision, recall = [None] * n_labels, [None] * n_labels
    for label in range(n_labels):
        if not scores[label]:
            continue
        match_l = np.concatenate(matches[label])[np.argsort(-np.concatenate(scores[label]), kind="stable")]
        tp = np.cumsum(match_l == 1)
        fp = np.cumsum(match_l == 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision[label] = tp / (tp + fp)
        if n_pos[label] > 0:
            recall[label] = tp / n_pos[label]
    return precision, recall


def voc_average_precision(precision, recall, use_07_metric=True):
    """AP (L,) float64 of each label's curve (voc_ap); NaN where the recall is None."""
    ap = np.full(len(precision), np.nan)
    for label, (prec, rec) in enumerate(zip(precision, recall)):
        if prec is not None and rec is not None:
            ap[label] = voc_ap(rec, prec, use_07_metric)
    return ap


def eval_detection_voc(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_difficult=None,
                       iou_thresh=0.5, use_07_metric=True, num_labels=None):
    """VOC average precision of each class and their mean: voc_precision_recall, then voc_average_precision.

    Inputs as voc_precision_recall's. Returns a dict indexed by label: "ap" (L,) float, NaN for a
    label without any non-difficult ground truth (so ap[0], the background, is NaN); "map" the
    mean of the non-NaN APs; "precision" and "recall": the curves (voc_precision_recall's lists).
    """
    precision, recall = voc_precision_recall(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels,
                                             gt_difficult, iou_thresh, num_labels)
    ap = voc_average_precision(precision, recall, use_07_metric)
    valid = ~np.isnan(ap)
    mean_ap = float(ap[valid].mean()) if valid.any() else float("nan")
    return {"ap": ap, "map": mean_ap, "precision": precision, "recall": recall}
