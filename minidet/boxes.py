"""Box arithmetic: IoU, the regression targets of Fast R-CNN and their inverse, clipping.

Boxes are (x1, y1, x2, y2) in image pixels, pixel-inclusive (VOC and Caffe): a box's width is
x2 - x1 + 1 and its centre x1 + 0.5 width. Every function takes NumPy or CuPy arrays and returns
arrays of the same module.
"""
import math

import numpy as np

from minidet.backend import get_array_module

# exp(dw) of a wildly wrong prediction overflows float32 (exp(89) = inf) and turns a box into
# inf - inf = nan. As Detectron does (its BBOX_XFORM_CLIP), the decoded log-scale is capped at
# log(1000 / 16): a box at most 62.5 times wider or taller than its RoI.
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)


def _float_dtype(*arrays):
    """The float type to compute in: float64 unless every float input is float32."""
    kinds = [a.dtype for a in arrays]
    return np.float32 if all(k == np.float32 for k in kinds) else np.float64


def bbox_overlaps(boxes, query):
    """IoU of every box with every query box, +1 areas.

    boxes (N, 4), query (K, 4) -> (N, K) float64:
        iou[n, k] = inter / (area(boxes[n]) + area(query[k]) - inter),
        inter = max(0, min(x2) - max(x1) + 1) * max(0, min(y2) - max(y1) + 1).
    Computed in float64, as the original implementation did, so that thresholds such as
    IoU >= 0.5 decide the same way whatever the input type.
    """
    xp = get_array_module(boxes, query)
    b = xp.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    q = xp.asarray(query, dtype=np.float64).reshape(-1, 4)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    area_q = (q[:, 2] - q[:, 0] + 1) * (q[:, 3] - q[:, 1] + 1)
    w = xp.minimum(b[:, None, 2], q[None, :, 2]) - xp.maximum(b[:, None, 0], q[None, :, 0]) + 1
    h = xp.minimum(b[:, None, 3], q[None, :, 3]) - xp.maximum(b[:, None, 1], q[None, :, 1]) + 1
    inter = xp.maximum(w, 0) * xp.maximum(h, 0)
    union = area_b[:, None] + area_q[None, :] - inter
    # Boxes that do not intersect have IoU 0 even when their areas are degenerate (union <= 0).
    return xp.where(inter > 0, inter / xp.where(inter > 0, union, 1), 0.0)


def _centres(boxes):
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def bbox_transform(ex_rois, gt_rois):
    """Regression targets that move each RoI P onto its ground-truth box G.

    ex_rois (R, 4), gt_rois (R, 4) -> (R, 4) = (tx, ty, tw, th):
        tx = (Gx - Px) / Pw, ty = (Gy - Py) / Ph, tw = log(Gw / Pw), th = log(Gh / Ph),
    with w = x2 - x1 + 1 and centre x = x1 + 0.5 w (likewise y, h).
    """
    xp = get_array_module(ex_rois, gt_rois)
    dtype = _float_dtype(ex_rois, gt_rois)
    px, py, pw, ph = _centres(xp.asarray(ex_rois, dtype=dtype))
    gx, gy, gw, gh = _centres(xp.asarray(gt_rois, dtype=dtype))
    return xp.stack([(gx - px) / pw, (gy - py) / ph, xp.log(gw / pw), xp.log(gh / ph)], axis=1)


def bbox_transform_inv(boxes, deltas):
    """Apply deltas to boxes: the inverse of `bbox_transform`, one box per group of 4 columns.

    boxes (R, 4), deltas (R, 4k) = (dx, dy, dw, dh) for each of k classes -> (R, 4k):
        ctr = dx * w + x, pred_w = exp(dw) * w,
        x1 = ctr - 0.5 pred_w, x2 = ctr + 0.5 pred_w - 1        (likewise y, h)
    dw and dh are capped at BBOX_XFORM_CLIP = log(1000 / 16) before exp, so no box overflows.
    The cap is Detectron's: the original Fast R-CNN (test.py _bbox_pred) and py-faster-rcnn take
    exp(dw) as it comes; the two agree for every box less than 62.5 times its RoI's size.
    Computed in the deltas' float type (float64 if the boxes are float64).
    """
    xp = get_array_module(boxes, deltas)
    dtype = _float_dtype(boxes, deltas)
    deltas = xp.asarray(deltas, dtype=dtype)
    if deltas.ndim != 2 or deltas.shape[1] % 4:
        raise ValueError(f"deltas must be (R, 4k), got shape {deltas.shape}")
    x, y, w, h = (v[:, None] for v in _centres(xp.asarray(boxes, dtype=dtype).reshape(-1, 4)))
    ctr_x = deltas[:, 0::4] * w + x
    ctr_y = deltas[:, 1::4] * h + y
    pred_w = xp.exp(xp.minimum(deltas[:, 2::4], BBOX_XFORM_CLIP)) * w
    pred_h = xp.exp(xp.minimum(deltas[:, 3::4], BBOX_XFORM_CLIP)) * h
    out = xp.empty_like(deltas)
    out[:, 0::4] = ctr_x - 0.5 * pred_w
    out[:, 1::4] = ctr_y - 0.5 * pred_h
    out[:, 2::4] = ctr_x + 0.5 * pred_w - 1
    out[:, 3::4] = ctr_y + 0.5 * pred_h - 1
    return out


def clip_boxes(boxes, image_size):
    """Boxes (R, 4k) clipped to the image: x into [0, W - 1], y into [0, H - 1]; image_size = (H, W).

    Returns a new array of the same type and shape.
    """
    xp = get_array_module(boxes)
    height, width = image_size
    if boxes.ndim != 2 or boxes.shape[1] % 4:
        raise ValueError(f"boxes must be (R, 4k), got shape {boxes.shape}")
    out = boxes.copy()
    out[:, 0::4] = xp.clip(boxes[:, 0::4], 0, width - 1)
    out[:, 1::4] = xp.clip(boxes[:, 1::4], 0, height - 1)
    out[:, 2::4] = xp.clip(boxes[:, 2::4], 0, width - 1)
    out[:, 3::4] = xp.clip(boxes[:, 3::4], 0, height - 1)
    return out
