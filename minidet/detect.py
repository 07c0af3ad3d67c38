"""Detection in one image with a trained model, loading a saved model, and drawing the result.

SPEC.md "Testing":

    image --prepare_image--> blob (shorter side `scale`, longer <= max_size), rois = proposals x s
    scores (R, K+1) softmax, boxes (R, 4(K+1)) = model.predict(blob, rois, blob size)
    per class k = 1..K: scores > 0.05, NMS at IoU 0.3
    at most 100 detections per image over all classes (the highest scores)
    boxes / s, clipped to the original image

Proposals that fall on the same cells of the stride-16 feature map give the same RoI-pooled
features; with `dedup` (the original test code's DEDUP_BOXES = 1/16) the network computes each
such group once (FastRCNN.predict(dedup=True)); every proposal still decodes its own box.
"""
import cv2
import numpy as np

from minidet.backend import asnumpy, to_device
from minidet.boxes import clip_boxes
from minidet.checkpoint import load_model  # noqa: F401  (detect's public surface: load, then detect)
from minidet.convention import CAFFE

SCORE_THRESH = 0.05
NMS_THRESH = 0.3
MAX_PER_IMAGE = 100


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
    Returns boxes (D, 4) float32 in the original image's pixels, labels (D,) int64 in 1..K,
    scores (D,) float32, highest first, D <= max_per_image.
    """
    from minidet.data.transforms import prepare_image

    height, width = image_bgr.shape[:2]
    proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
    if len(proposals) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)
    chw, im_scale = prepare_image(image_bgr, convention, target_size=scale, max_size=max_size)
    rois = np.concatenate([np.zeros((len(proposals), 1), np.float32), proposals * np.float32(im_scale)], axis=1)
    scores, boxes = model.predict(to_device(chw[None], device), to_device(rois, device), chw.shape[1:],
                                  dedup=dedup)
    scores = asnumpy(scores)
    # clipped again in the original image: the blob's last pixel maps to (W' - 1) / s, not W - 1
    boxes = clip_boxes(asnumpy(boxes) / im_scale, (height, width))
    return select_detections(scores, boxes, score_thresh, nms_thresh, max_per_image)


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
