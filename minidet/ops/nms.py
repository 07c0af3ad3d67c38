"""Greedy non-maximum suppression, on NumPy and CuPy arrays.

    order = boxes by score, highest first (equal scores: lower index first)
    for each box in that order, unless already suppressed: keep it, and suppress every later
    box whose IoU with it is >= iou_threshold
    IoU = inter / (area_a + area_b - inter), pixel-inclusive: area = (x2 - x1 + 1) (y2 - y1 + 1)

A box is suppressed when its IoU reaches the threshold, as in the original Fast R-CNN's Cython
NMS (lib/utils/nms.pyx, `ovr >= thresh`), the one its test code runs. Its plain NumPy twin
(lib/utils/nms.py) and the later ports' GPU kernel and torchvision suppress only above the
threshold; the two rules differ only on exact ties, such as a 10x10 box and its 10x5 half
(IoU 50/100) at a threshold of 0.5. At a threshold of 0 every box after the first is suppressed,
overlapping or not (IoU 0 reaches 0), as in the original. The IoU is computed in the boxes'
float type (float32 stays float32; other types are taken as float64).

CPU: minidet/_ext/nms.pyx (one pass with a byte of suppression state per box, GIL released).
GPU: minidet/ops/cuda/nms.cu computes the suppression bitmask in 64-box tiles on the device; the
greedy pass over those words (n * n / 64 bits) then runs on the host, where it is a few
microseconds of sequential work.
"""
import numpy as np

from minidet.backend import get_array_module


def nms(boxes, scores, iou_threshold):
    """Indices (K,) int64 of the boxes kept, highest score first.

    boxes (N, 4) = (x1, y1, x2, y2) pixel-inclusive; scores (N,); iou_threshold a float.
    """
    xp = get_array_module(boxes, scores)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got shape {boxes.shape}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must be ({boxes.shape[0]},), got shape {scores.shape}")
    dtype = np.float32 if boxes.dtype == np.float32 else np.float64
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)  # so that negating cannot wrap around
    if xp is np:
        order = np.argsort(-scores, kind="stable")
    else:
        order = xp.argsort(-scores)  # CuPy's sort is always stable
    sorted_boxes = xp.ascontiguousarray(boxes[order], dtype=dtype)
    if xp is np:
        from minidet._ext.nms import greedy_nms

        return order[greedy_nms(sorted_boxes, float(iou_threshold))].astype(np.int64)
    return order[xp.asarray(_nms_mask_gpu(xp, sorted_boxes, iou_threshold))].astype(np.int64)


def nms_reference(boxes, scores, iou_threshold):
    """Plain NumPy NMS for small inputs (NumPy arrays only): same arguments, same results."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    dtype = np.float32 if boxes.dtype == np.float32 else np.float64
    b = np.asarray(boxes, dtype=dtype)[order]
    one = dtype(1)
    areas = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in range(len(b)):
        if suppressed[i]:
            continue
        keep.append(i)
        w = np.minimum(b[i, 2], b[i + 1:, 2]) - np.maximum(b[i, 0], b[i + 1:, 0]) + one
        h = np.minimum(b[i, 3], b[i + 1:, 3]) - np.maximum(b[i, 1], b[i + 1:, 1]) + one
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where((w > 0) & (h > 0), inter / (areas[i] + areas[i + 1:] - inter), 0)
        suppressed[i + 1:] |= iou >= dtype(iou_threshold)
    return order[np.array(keep, dtype=np.int64)]


def _nms_mask_gpu(cp, sorted_boxes, iou_threshold):
    """Positions kept among sorted_boxes (a CuPy array), as a NumPy int64 array."""
    from minidet._ext.nms import reduce_suppression_mask
    from minidet.ops.cuda import kernel, scalar_name

    n = sorted_boxes.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    tiles = (n + 63) // 64
    mask = cp.empty((n, tiles), dtype=cp.uint64)
    kern = kernel("nms.cu", "nms_mask", scalar_name(sorted_boxes.dtype))
    kern((tiles, tiles), (64,), (sorted_boxes, np.int32(n), sorted_boxes.dtype.type(iou_threshold), mask))
    return reduce_suppression_mask(mask.get(), n)
