"""Greedy non-maximum suppression on the CPU, and the CPU half of the GPU's bitmask NMS.

Boxes arrive sorted by score, highest first. Box i survives unless an earlier surviving box
overlaps it by IoU >= threshold (minidet/ops/nms.py gives the rule and where it comes from), with
pixel-inclusive areas (x2 - x1 + 1) * (y2 - y1 + 1).
The IoU is computed in the boxes' float type, with the same operations in the same order as
minidet/ops/cuda/nms.cu, so that both devices take the same decision on a borderline pair.
"""
from libc.stdint cimport uint64_t

import numpy as np

ctypedef fused real:
    float
    double


cdef void suppress_after(Py_ssize_t i, Py_ssize_t n, const real* x1, const real* y1, const real* x2,
                         const real* y2, const real* areas, real threshold,
                         unsigned char* suppressed) noexcept nogil:
    """Mark every box j > i whose IoU with box i is >= threshold.

    IoU = inter / (area_i + area_j - inter) with +1 widths. Branch-free over j, so that the compiler
    vectorises it: a box without overlap has inter = 0 and IoU 0, which reaches only a threshold of 0.
    """
    cdef Py_ssize_t j
    cdef real w, h, inter
    for j in range(i + 1, n):
        w = min(x2[i], x2[j]) - max(x1[i], x1[j]) + 1
        h = min(y2[i], y2[j]) - max(y1[i], y1[j]) + 1
        inter = max(w, <real> 0) * max(h, <real> 0)
        suppressed[j] |= inter / (areas[i] + areas[j] - inter) >= threshold


def greedy_nms(const real[:, ::1] boxes, double iou_threshold):
    """Positions (K,) int64 of the boxes kept, in order, from boxes (N, 4) sorted by score."""
    cdef Py_ssize_t n = boxes.shape[0], i, count = 0
    cdef real threshold = <real> iou_threshold
    dtype = np.float32 if real is float else np.float64
    # one contiguous array per coordinate, so that the inner loop reads them as vectors
    cdef real[:, ::1] coords = np.ascontiguousarray(np.asarray(boxes).T, dtype=dtype)
    cdef real[::1] areas = np.empty(n, dtype=dtype)
    cdef unsigned char[::1] suppressed = np.zeros(n, dtype=np.uint8)
    cdef long long[::1] keep = np.empty(n, dtype=np.int64)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    with nogil:
        for i in range(n):
            areas[i] = (boxes[i, 2] - boxes[i, 0] + 1) * (boxes[i, 3] - boxes[i, 1] + 1)
        for i in range(n):
            if suppressed[i]:
                continue
            keep[count] = i
            count += 1
            suppress_after(i, n, &coords[0, 0], &coords[1, 0], &coords[2, 0], &coords[3, 0], &areas[0],
                           threshold, &suppressed[0])
    return np.asarray(keep)[:count].copy()


def reduce_suppression_mask(const uint64_t[:, ::1] mask, Py_ssize_t n):
    """Positions (K,) int64 kept by the greedy pass over the GPU's suppression bitmask.

    mask (n, ceil(n / 64)): bit k of mask[i, b] says that box i suppresses box 64 b + k (only
    boxes after i are marked, and only the words b >= i // 64 are read). Box i survives unless
    a surviving earlier box marked it.
    """
    cdef Py_ssize_t words = mask.shape[1], i, b, count = 0
    cdef uint64_t[::1] removed = np.zeros(words, dtype=np.uint64)
    cdef long long[::1] keep = np.empty(n, dtype=np.int64)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    with nogil:
        for i in range(n):
            if (removed[i // 64] >> (i % 64)) & 1:
                continue
            keep[count] = i
            count += 1
            for b in range(i // 64, words):
                removed[b] |= mask[i, b]
    return np.asarray(keep)[:count].copy()
