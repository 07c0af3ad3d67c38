"""Box arithmetic against loops, hand-computed cases and its own inverse."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidet.boxes import BBOX_XFORM_CLIP, bbox_overlaps, bbox_transform, bbox_transform_inv, clip_boxes


def random_boxes(rng, n, low=0, high=500, max_size=300):
    x1y1 = rng.uniform(low, high, (n, 2))
    return np.concatenate([x1y1, x1y1 + rng.uniform(0, max_size, (n, 2))], axis=1)


seeds = st.integers(0, 2**32 - 1)


@given(seeds, st.integers(0, 12), st.integers(0, 12))
def test_bbox_overlaps_matches_a_loop(seed, n, k):
    rng = np.random.default_rng(seed)
    boxes, query = np.round(random_boxes(rng, n, max_size=80)), np.round(random_boxes(rng, k, max_size=80))
    iou = bbox_overlaps(boxes.astype(np.float32), query)
    assert iou.shape == (n, k) and iou.dtype == np.float64
    for i in range(n):
        for j in range(k):
            a, b = boxes[i], query[j]
            w = min(a[2], b[2]) - max(a[0], b[0]) + 1
            h = min(a[3], b[3]) - max(a[1], b[1]) + 1
            expected = 0.0
            if w > 0 and h > 0:
                union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - w * h
                expected = w * h / union
            assert iou[i, j] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_bbox_overlaps_counts_pixels_inclusively():
    # a 10x10 box against its 10x5 half: 50 / 100 exactly; a single pixel against itself: 1,
    # and against the 50-pixel half that contains it: 1 / 50
    iou = bbox_overlaps(np.array([[0, 0, 9, 9], [3, 3, 3, 3]]), np.array([[0, 0, 9, 4], [3, 3, 3, 3]]))
    assert iou[0, 0] == 0.5 and iou[1, 1] == 1.0 and iou[1, 0] == pytest.approx(1 / 50)


def test_bbox_transform_of_a_hand_computed_case():
    # P: x 0..9 (w 10, centre 5); G: x 5..24 (w 20, centre 15), y identical
    p = np.array([[0, 0, 9, 9]], np.float64)
    g = np.array([[5, 0, 24, 9]], np.float64)
    np.testing.assert_allclose(bbox_transform(p, g), [[1.0, 0.0, math.log(2), 0.0]])
    np.testing.assert_allclose(bbox_transform_inv(p, np.array([[1.0, 0.0, math.log(2), 0.0]])), g)


@given(seeds, st.integers(1, 20))
def test_bbox_transform_inv_undoes_bbox_transform(seed, n):
    rng = np.random.default_rng(seed)
    p = random_boxes(rng, n)
    # ground truth within the decoding cap: at most 50 times (log 50 < log 62.5) larger, any smaller
    g_size = (p[:, 2:] - p[:, :2] + 1) * np.exp(rng.uniform(-3, math.log(50), (n, 2)))
    g_x1y1 = rng.uniform(-100, 600, (n, 2))
    g = np.concatenate([g_x1y1, g_x1y1 + g_size - 1], axis=1)
    deltas = bbox_transform(p, g)
    np.testing.assert_allclose(bbox_transform_inv(p, deltas), g, rtol=1e-10, atol=1e-8)


def test_bbox_transform_inv_decodes_one_box_per_class():
    rng = np.random.default_rng(0)
    p = random_boxes(rng, 5)
    deltas = rng.normal(0, 0.3, (5, 12))
    decoded = bbox_transform_inv(p, deltas)
    assert decoded.shape == (5, 12)
    for k in range(3):
        np.testing.assert_array_equal(decoded[:, 4 * k:4 * k + 4], bbox_transform_inv(p, deltas[:, 4 * k:4 * k + 4]))


def test_bbox_transform_inv_caps_the_scale_so_nothing_overflows():
    p = np.array([[10, 10, 19, 29]], np.float32)  # w 10, h 20
    decoded = bbox_transform_inv(p, np.array([[0, 0, 200, 1e4]], np.float32))
    assert decoded.dtype == np.float32 and np.isfinite(decoded).all()
    widths = decoded[0, 2:] - decoded[0, :2] + 1
    np.testing.assert_allclose(widths, np.array([10, 20]) * math.exp(BBOX_XFORM_CLIP), rtol=1e-5)
    assert math.exp(BBOX_XFORM_CLIP) == pytest.approx(1000 / 16)


def test_box_functions_keep_float32():
    p = np.array([[0, 0, 9, 9]], np.float32)
    assert bbox_transform(p, p + 1).dtype == np.float32
    assert bbox_transform_inv(p, np.zeros((1, 8), np.float32)).dtype == np.float32
    assert clip_boxes(p, (5, 5)).dtype == np.float32


@given(seeds, st.integers(1, 10), st.integers(1, 3))
def test_clip_boxes_matches_a_loop(seed, n, k):
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(-100, 700, (n, 4 * k))
    height, width = 375, 500
    clipped = clip_boxes(boxes, (height, width))
    for i in range(n):
        for j in range(4 * k):
            limit = width - 1 if j % 2 == 0 else height - 1
            assert clipped[i, j] == min(max(boxes[i, j], 0), limit)
    assert not np.shares_memory(clipped, boxes)
