"""Detection in one image with a trained model, loading a saved model, and drawing the result.

SPEC.md "Testing", as the original's lib/fast_rcnn/test.py im_detect:

    image --image_pyramid--> blob (L, 3, H', W'): the image at each test scale (shorter side s_l,
        longer <= max_size), normalised then resized, zero-padded to the largest; L = 1 normally
    each proposal goes to one level (pyramid_levels: with L > 1, the level where its area is closest
        to 224^2), rois = [level, proposal x s_level]
    model.forward(blob, rois) -> cls_score, bbox_pred; scores = softmax(cls_score)
    boxes = bbox_pred applied to the proposals in the original image's pixels, clipped to the image
    per class k = 1..K: scores > 0.05, NMS at IoU 0.3
    at most 100 detections per image over all classes (the highest scores)

The boxes are decoded from the unscaled proposals, as training encodes its targets (and as the
original's _bbox_pred(boxes, ...)): with +1 widths, decoding in the rescaled image and dividing by
s is not the same map, and moves an exact target by up to a pixel or more (SPEC.md "Testing").

Proposals that fall on the same cells of the stride-16 feature map of the same level give the
same RoI-pooled features; with `dedup` (the original's DEDUP_BOXES = 1/16) the network computes
each such group once; every proposal still decodes its own box.
"""
import cv2
import numpy as np

from minidet.backend import asnumpy, get_array_module, to_device
from minidet.boxes import bbox_transform_inv, clip_boxes
from minidet.checkpoint import load_model  # noqa: F401  (detect's public surface: load, then detect)
from minidet.convention import CAFFE
from minidet.ops.softmax import softmax

SCORE_THRESH = 0.05
NMS_THRESH = 0.3
MAX_PER_IMAGE = 100
PYRAMID_TARGET_AREA = 224 * 224     # multi-scale testing: the RoI size the network was pre-trained on
PAPER_TEST_SCALES = (480, 576, 688, 864, 1200)    # paper 5.1, with a longer side of at most 2000
PAPER_MULTISCALE_MAX_SIZE = 2000


def image_pyramid(image_bgr, convention, scales, max_size):
    """The image at every test scale in one blob, as the original's _get_image_blob.

    image_bgr (H, W, 3) uint8, scales a sequence of L shorter sides ->
    (blob (L, 3, max H_l, max W_l) float32, each level zero-padded at the bottom and right;
    im_scales (L,) float64, the factor of each level).
    """
    from minidet.data.transforms import make_blob, prepare_image

    levels = [prepare_image(image_bgr, convention, target_size=s, max_size=max_size) for s in scales]
    return make_blob([chw for chw, _ in levels]), np.array([scale for _, scale in levels], np.float64)


def pyramid_levels(proposals, im_scales):
    """The pyramid level of each proposal: with one level 0; else the level whose scaled area
    (w + 1)(h + 1) s^2 is closest to 224^2, the first on ties (the original's _project_im_rois).

    proposals (R, 4) in original pixels (NumPy or CuPy); im_scales (L,) -> (R,) int64, same module.
    """
    xp = get_array_module(proposals)
    boxes = xp.asarray(proposals, dtype=np.float64)
    if len(im_scales) == 1:
        return xp.zeros(len(boxes), dtype=np.int64)
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    scales = xp.asarray(im_scales, dtype=np.float64)
    return xp.abs(areas[:, None] * scales[None, :] ** 2 - PYRAMID_TARGET_AREA).argmin(axis=1).astype(np.int64)


def pyramid_rois(proposals, im_scales):
    """RoIs (R, 5) float32 [level, x1, y1, x2, y2] in the pixels of each proposal's level:
    the proposal (original pixels) times its level's scale, taken in float64."""
    xp = get_array_module(proposals)
    levels = pyramid_levels(proposals, im_scales)
    scaled = xp.asarray(proposals, dtype=np.float64) * xp.asarray(im_scales, dtype=np.float64)[levels][:, None]
    return xp.concatenate([levels[:, None].astype(np.float64), scaled], axis=1).astype(np.float32)


def score_and_decode(model, blob, proposals, im_scales, image_size, dedup=True):
    """Class probabilities and one box per class for every proposal (the original's im_detect).

    blob (L, 3, H', W') from image_pyramid, on the model's device; proposals (R, 4) in the original
    image's pixels, same device; im_scales (L,); image_size (H, W) of the original image ->
    scores (R, K+1) = softmax(cls_score); boxes (R, 4(K+1)) float64 = bbox_pred (raw deltas: a
    trained model's normalisation is folded into it) applied to the proposals themselves, clipped to
    [0, W-1] x [0, H-1]. dedup: RoIs that pool the same cells of the same level run once
    (identical outputs).
    """
    from minidet.models.fast_rcnn import unique_pooled_rois

    rois = pyramid_rois(proposals, im_scales)
    if dedup:
        unique, inverse = unique_pooled_rois(rois, model.roi_pool, model.dtype)
        cls_score, bbox_pred = model.forward(blob, rois[unique])
        cls_score, bbox_pred = cls_score[inverse], bbox_pred[inverse]
    else:
        cls_score, bbox_pred = model.forward(blob, rois)
    boxes = bbox_transform_inv(get_array_module(blob).asarray(proposals, dtype=np.float64), bbox_pred)
    return softmax(cls_score), clip_boxes(boxes, image_size)


def select_detections(scores, boxes, score_thresh=SCORE_THRESH, nms_thresh=NMS_THRESH,
                      max_per_image=MAX_PER_IMAGE):
    """From per-RoI class scores and boxes to the image's detections.

    scores (R, K+1) numpy, boxes (R, 4(K+1)) numpy (column 0 / columns 0:4 the background, unused)
    -> boxes (D, 4) float32, labels (D,) int64 in 1..K, scores (D,) float32, highest score first.
    Per class: scores > score_thresh, NMS at nms_thresh; then the max_per_image highest overall.
    """
    from minidet.ops.nms import nms

    out_boxes, out_labels, out_scores = [], [], []
    for k in range(1, scores.shape[1]):
        candidates = np.flatnonzero(scores[:, k] > score_thresh)
        if candidates.size == 0:
            continue
        class_boxes = np.ascontiguousarray(boxes[candidates, 4 * k:4 * k + 4], dtype=np.float32)
        class_scores = np.ascontiguousarray(scores[candidates, k], dtype=np.float32)
        keep = asnumpy(nms(class_boxes, class_scores, nms_thresh))
        out_boxes.append(class_boxes[keep])
        out_scores.append(class_scores[keep])
        out_labels.append(np.full(len(keep), k, np.int64))
    if not out_boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)
    det_boxes, det_labels, det_scores = (np.concatenate(out_boxes), np.concatenate(out_labels),
                                         np.concatenate(out_scores))
    order = np.argsort(-det_scores, kind="stable")[:max_per_image]
    return det_boxes[order], det_labels[order], det_scores[order]


def detect(model, image_bgr, proposals, convention=CAFFE, scale=600, max_size=1000, device="cpu",
           score_thresh=SCORE_THRESH, nms_thresh=NMS_THRESH, max_per_image=MAX_PER_IMAGE, dedup=True):
    """Detections in one image.

    image_bgr (H, W, 3) uint8; proposals (P, 4) in its pixels (0-based, pixel-inclusive).
    scale: the shorter side to test at, or a sequence of them for multi-scale testing (paper 5.1:
    PAPER_TEST_SCALES with max_size PAPER_MULTISCALE_MAX_SIZE); max_size caps the longer side.
    Returns boxes (D, 4) float32 in the original image's pixels, labels (D,) int64 in 1..K,
    scores (D,) float32, highest first, D <= max_per_image.
    """
    scales = (int(scale),) if np.ndim(scale) == 0 else tuple(int(s) for s in scale)
    if not scales:
        raise ValueError("detect needs at least one test scale")
    proposals = np.asarray(proposals, np.float64).reshape(-1, 4)
    if len(proposals) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)
    blob, im_scales = image_pyramid(image_bgr, convention, scales, max_size)
    scores, boxes = score_and_decode(model, to_device(blob, device), to_device(proposals, device), im_scales,
                                     image_bgr.shape[:2], dedup)
    return select_detections(asnumpy(scores), asnumpy(boxes), score_thresh, nms_thresh, max_per_image)


def class_colour(label):
    """A distinct BGR colour per label (golden-angle hues)."""
    hue = int((label * 137.508) % 180)
    hsv = np.uint8([[[hue, 200, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def draw_detections(image_bgr, boxes, labels, scores, class_names, score_thresh=0.5, thickness=2):
    """A copy of the image with each detection scoring >= score_thresh drawn: box, class name, score.

    boxes (D, 4) in the image's pixels, labels (D,) in 1..K (label k is class_names[k - 1]), scores (D,).
    """
    canvas = np.ascontiguousarray(image_bgr).copy()
    font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    for box, label, score in zip(np.asarray(boxes), np.asarray(labels), np.asarray(scores)):
        if score < score_thresh:
            continue
        colour = class_colour(int(label))
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        text = f"{class_names[int(label) - 1]} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, font, font_scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + 2
        cv2.rectangle(canvas, (x1, ty - th - 2), (x1 + tw + 2, ty + base - 1), colour, -1)
        cv2.putText(canvas, text, (x1 + 1, ty - 1), font, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
