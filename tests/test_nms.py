"""NMS against a plain greedy loop and torchvision; the GPU's keep indices against the CPU's."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidet.ops.nms import nms, nms_reference
from tests.reference import require_torchvision


def plain_nms(boxes, scores, threshold):
    """Greedy NMS as the definition reads: by score (ties: lower index first), +1 areas, suppressed at
    IoU >= threshold (boxes that do not overlap have IoU 0)."""
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    suppressed, keep = set(), []
    for a, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        for j in order[a + 1:]:
            u1, v1, u2, v2 = (float(v) for v in boxes[j])
            w = min(x2, u2) - max(x1, u1) + 1
            h = min(y2, v2) - max(y1, v1) + 1
            iou = 0.0
            if w > 0 and h > 0:
                iou = w * h / ((x2 - x1 + 1) * (y2 - y1 + 1) + (u2 - u1 + 1) * (v2 - v1 + 1) - w * h)
            if iou >= threshold:
                suppressed.add(j)
    return keep


@st.composite
def detections(draw, max_boxes=40, distinct_scores=False):
    """Integer-cornered boxes with duplicates, and scores with ties (or all distinct)."""
    n = draw(st.integers(0, max_boxes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x1y1 = rng.integers(0, 60, (n, 2))
    boxes = np.concatenate([x1y1, x1y1 + rng.integers(0, 30, (n, 2))], axis=1).astype(np.float64)
    if n > 1:
        copies = rng.integers(0, n, n // 4)
        boxes[rng.integers(0, n, n // 4)] = boxes[copies]  # identical boxes
    scores = rng.permutation(n).astype(np.float64) if distinct_scores else rng.integers(0, 5, n) / 4
    threshold = draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
    return boxes, scores, threshold


@given(detections(), st.sampled_from([np.float32, np.float64]))
def test_nms_matches_a_plain_greedy_loop(case, dtype):
    boxes, scores, threshold = case
    keep = nms(boxes.astype(dtype), scores.astype(dtype), threshold)
    assert keep.dtype == np.int64
    assert keep.tolist() == plain_nms(boxes, scores, threshold)


@given(detections())
def test_nms_reference_matches_the_compiled_kernel(case):
    boxes, scores, threshold = case
    np.testing.assert_array_equal(nms(boxes, scores, threshold), nms_reference(boxes, scores, threshold))


def test_nms_keeps_the_first_of_identical_boxes_and_orders_equal_scores_by_index():
    boxes = np.array([[0, 0, 9, 9]] * 3 + [[50, 50, 60, 60]], np.float32)
    scores = np.array([0.5, 0.9, 0.9, 0.9], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 3]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", [nms, nms_reference])
@pytest.mark.parametrize("first, second, iou", [
    ([0, 0, 9, 9], [0, 0, 9, 4], 0.5),       # a 10x10 box and its 10x5 half: 50 / 100
    ([0, 0, 9, 9], [0, 0, 4, 4], 0.25),      # and its 5x5 corner: 25 / 100
    ([0, 0, 9, 7], [0, 0, 9, 2], 0.375),     # a 10x8 box and the 10x3 strip inside it: 30 / 80
])
def test_nms_suppresses_at_an_iou_equal_to_the_threshold(kernel, dtype, first, second, iou):
    # IoUs that are exact binary fractions, so that iou == threshold holds in any float type:
    # the original's `ovr >= thresh` suppresses the second box; the next threshold up keeps it.
    boxes = np.array([first, second], dtype)
    scores = np.array([1.0, 0.5], dtype)
    assert kernel(boxes, scores, iou).tolist() == [0]
    assert kernel(boxes, scores, float(np.nextafter(dtype(iou), dtype(1)))).tolist() == [0, 1]


def test_nms_at_threshold_zero_suppresses_every_box_after_the_first():
    # IoU 0 (no overlap) reaches a threshold of 0, as in the original's `ovr >= thresh`
    boxes = np.array([[0, 0, 9, 9], [50, 50, 59, 59], [100, 0, 109, 9]], np.float32)
    scores = np.array([0.2, 0.9, 0.5], np.float32)
    assert nms(boxes, scores, 0.0).tolist() == [1]
    assert nms_reference(boxes, scores, 0.0).tolist() == [1]


def test_nms_counts_pixels_inclusively():
    # [0, 9] and [5, 14] share 5 of their 10 pixels: IoU 25 / 175 = 1/7 with +1 areas
    # (16 / 146 without them, under 1/9)
    boxes = np.array([[0, 0, 9, 9], [5, 5, 14, 14]], np.float64)
    scores = np.array([1.0, 0.9])
    assert nms(boxes, scores, 1 / 7 - 1e-9).tolist() == [0]
    assert nms(boxes, scores, 1 / 7 + 1e-9).tolist() == [0, 1]


def test_nms_of_nothing_is_empty():
    keep = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.3)
    assert keep.shape == (0,) and keep.dtype == np.int64


def test_nms_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        nms(np.zeros((3, 4)), np.zeros(2), 0.3)
    with pytest.raises(ValueError):
        nms(np.zeros((3, 5)), np.zeros(3), 0.3)


# torchvision's nms uses areas without +1, sorts scores with an unstable sort, and suppresses at
# IoU > threshold. The +1 IoU of (x1, y1, x2, y2) is exactly the plain IoU of (x1, y1, x2 + 1,
# y2 + 1), so torchvision gets the shifted boxes; the scores are all distinct, so no tie order is
# involved; and with integer corners both compute the same double IoU, for which `> t` is
# `>= nextafter(t, inf)`: no double lies between the two.
@given(detections(distinct_scores=True))
def test_nms_equals_torchvision_on_boxes_widened_by_one_pixel(case):
    require_torchvision()
    import torch
    import torchvision

    boxes, scores, threshold = case
    widened = boxes + np.array([0, 0, 1, 1])
    expected = torchvision.ops.nms(torch.from_numpy(widened), torch.from_numpy(scores), threshold)
    assert nms(boxes, scores, np.nextafter(threshold, np.inf)).tolist() == expected.tolist()
