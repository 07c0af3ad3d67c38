"""RoI sampling rules (SPEC.md "Training") on constructed cases, and targets against hand-computed numbers."""
import math

import numpy as np
import pytest

from minidet.data.sampler import has_training_rois, sample_rois


def iou_plain(a, b):
    """IoU of two pixel-inclusive boxes, written out."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
    return inter / (area(a) + area(b) - inter)


def random_proposals(rng, n, width=200, height=150):
    xy = rng.uniform(0, [width - 20, height - 20], (n, 2))
    wh = rng.uniform(4, 120, (n, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [width - 1, height - 1])], 1)
    return np.round(boxes).astype(np.float32)


def best_gt_plain(roi, gt_boxes):
    overlaps = [iou_plain(roi, g) for g in gt_boxes]
    return int(np.argmax(overlaps)), max(overlaps)


@pytest.fixture
def scene(rng):
    gt = np.array([[20, 30, 80, 100], [100, 20, 180, 70], [120, 80, 160, 140]], np.float32)
    labels = np.array([3, 1, 3])
    # Many near-duplicates of the objects (foreground) and random boxes (mostly background).
    jitter = np.repeat(gt, 30, 0) + rng.normal(0, 5, (90, 4)).round()
    props = np.concatenate([jitter, random_proposals(rng, 400)]).astype(np.float32)
    props = np.unique(props, axis=0)
    return props, gt, labels


def test_targets_match_a_hand_computed_example():
    # gt G = (0, 0, 9, 9): w = h = 10, centre (5, 5). RoI P = (0, 0, 19, 9): w = 20, h = 10, centre (10, 5).
    # IoU = 100 / 200 = 0.5 -> foreground. t = ((5 - 10) / 20, 0, log(10 / 20), 0) = (-0.25, 0, -0.693147, 0);
    # divided by stds (0.1, 0.1, 0.2, 0.2): (-2.5, 0, -3.465736, 0), in the columns of class 2 (8..11 of 12).
    rois, labels, targets, weights = sample_rois(np.array([[0, 0, 19, 9]], np.float32),
                                                 np.array([[0, 0, 9, 9]], np.float32), np.array([2]),
                                                 num_classes=3, rng=np.random.default_rng(0))
    order = np.lexsort(rois.T[::-1])                     # the gt itself comes first; sort for a fixed order
    rois, labels, targets, weights = rois[order], labels[order], targets[order], weights[order]
    np.testing.assert_array_equal(rois, [[0, 0, 9, 9], [0, 0, 19, 9]])
    np.testing.assert_array_equal(labels, [2, 2])
    np.testing.assert_allclose(targets[1], [0] * 8 + [-2.5, 0, -3.465736, 0], atol=1e-5)
    np.testing.assert_array_equal(targets[0], np.zeros(12))   # the gt regresses onto itself: 0
    np.testing.assert_array_equal(weights, [[0] * 8 + [1] * 4] * 2)
    assert math.isclose(np.log(0.5) / 0.2, -3.465736, rel_tol=1e-6)


def test_foreground_is_at_most_a_quarter_and_ious_respect_the_ranges(scene, rng):
    props, gt, gt_labels = scene
    rois, labels, targets, weights = sample_rois(props, gt, gt_labels, num_classes=4, rng=rng)
    assert len(rois) == 64
    fg = labels > 0
    assert fg.sum() == 16
    for roi, label in zip(rois, labels):
        k, best = best_gt_plain(roi, gt)
        if label > 0:
            assert best >= 0.5 and label == gt_labels[k]
        else:
            assert 0.1 <= best < 0.5
    assert np.all(fg[:16]) and not np.any(fg[16:])      # foreground first


def test_nothing_is_drawn_twice(scene, rng):
    props, gt, gt_labels = scene
    for _ in range(20):
        rois, *_ = sample_rois(props, gt, gt_labels, 4, rng=rng)
        assert len(np.unique(rois, axis=0)) == len(rois)


def test_ground_truth_boxes_are_candidates(rng):
    gt = np.array([[10, 10, 50, 40]], np.float32)
    far = np.array([[60, 0, 70, 5], [0, 45, 30, 49]], np.float32)      # IoU 0 with the gt
    rois, labels, targets, weights = sample_rois(far, gt, np.array([1]), 2, rng=rng)
    np.testing.assert_array_equal(rois, gt)
    np.testing.assert_array_equal(labels, [1])
    np.testing.assert_array_equal(targets, np.zeros((1, 8)))      # a gt's target onto itself
    np.testing.assert_array_equal(weights, [[0, 0, 0, 0, 1, 1, 1, 1]])


def test_too_few_candidates_give_fewer_rois(rng):
    gt = np.array([[0, 0, 99, 99]], np.float32)
    fg = np.array([[0, 0, 89, 99], [5, 5, 99, 99]], np.float32)         # IoU 0.9, 0.9025
    bg = np.array([[0, 0, 39, 99], [0, 0, 99, 29], [60, 60, 99, 99]], np.float32)  # IoU 0.4, 0.3, 0.16
    rois, labels, _, _ = sample_rois(np.concatenate([fg, bg]), gt, np.array([1]), 2, rng=rng)
    assert len(rois) == 6 and (labels > 0).sum() == 3


def test_image_without_ground_truth_gives_no_roi(rng):
    # every IoU is 0, below bg_thresh_lo = 0.1: nothing is background, as in the original
    props = random_proposals(rng, 100)
    none = sample_rois(props, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 21, rng=rng)
    assert [a.shape for a in none] == [(0, 4), (0,), (0, 84), (0, 84)]
    assert not has_training_rois(props, np.zeros((0, 4), np.float32))
    empty = sample_rois(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 21,
                        rng=rng)
    assert [a.shape for a in empty] == [(0, 4), (0,), (0, 84), (0, 84)]
    # with bg_thresh_lo = 0 (a setting some later recipes use) every proposal is background
    rois, labels, targets, weights = sample_rois(props, np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                                                 21, rng=rng, bg_thresh_lo=0.0)
    assert len(rois) == 64 and (labels == 0).all() and not targets.any() and not weights.any()
    assert has_training_rois(props, np.zeros((0, 4), np.float32), bg_thresh_lo=0.0)


def test_has_training_rois_agrees_with_what_sample_rois_draws(rng):
    gt = np.array([[0, 0, 99, 99]], np.float32)
    far = np.array([[150, 150, 199, 199]], np.float32)                  # IoU 0: neither
    bg = np.array([[0, 0, 39, 99]], np.float32)                         # IoU 0.4: background
    assert has_training_rois(far, gt)                                   # the gt is its own foreground
    assert not has_training_rois(far, np.zeros((0, 4)))
    # without ground truth, a range of IoU that no candidate can reach: nothing either way
    for props, thresholds in ((bg, {}), (bg, dict(fg_thresh=0.95, bg_thresh_hi=0.95, bg_thresh_lo=0.5)),
                              (far, {}), (np.concatenate([far, bg]), dict(bg_thresh_lo=0.45))):
        for boxes in (gt, np.zeros((0, 4), np.float32)):
            rois, *_ = sample_rois(props, boxes, np.ones(len(boxes), np.int64), 2, rng=rng, **thresholds)
            assert has_training_rois(props, boxes, **thresholds) == (len(rois) > 0)


def test_background_and_targets_are_finite_and_zero_outside_the_class(scene, rng):
    props, gt, gt_labels = scene
    rois, labels, targets, weights = sample_rois(props, gt, gt_labels, 4, rng=rng)
    assert np.isfinite(targets).all()
    for roi, label, t, w in zip(rois, labels, targets, weights):
        mask = np.zeros(16, bool)
        if label:
            mask[4 * label:4 * label + 4] = True
        np.testing.assert_array_equal(w, mask.astype(np.float32))
        assert not t[~mask].any()


def test_targets_against_the_formula_for_every_foreground_roi(scene, rng):
    props, gt, gt_labels = scene
    rois, labels, targets, _ = sample_rois(props, gt, gt_labels, 4, rng=rng, bbox_means=(0.01, -0.02, 0.03, 0.0),
                                           bbox_stds=(0.1, 0.1, 0.2, 0.2))
    for roi, label, t in zip(rois, labels, targets):
        if not label:
            continue
        g = gt[best_gt_plain(roi, gt)[0]]
        pw, ph, gw, gh = roi[2] - roi[0] + 1, roi[3] - roi[1] + 1, g[2] - g[0] + 1, g[3] - g[1] + 1
        px, py, gx, gy = roi[0] + 0.5 * pw, roi[1] + 0.5 * ph, g[0] + 0.5 * gw, g[1] + 0.5 * gh
        raw = np.array([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)])
        expected = (raw - [0.01, -0.02, 0.03, 0.0]) / [0.1, 0.1, 0.2, 0.2]
        np.testing.assert_allclose(t[4 * label:4 * label + 4], expected, rtol=1e-4, atol=1e-5)


def test_sampling_is_uniform_and_reproducible(rng):
    gt = np.array([[0, 0, 99, 99]], np.float32)
    fg = np.array([[0, 0, 99 - k, 99] for k in range(1, 32)], np.float32)   # 31 + the gt = 32 fg candidates
    counts = np.zeros(32)
    for seed in range(400):
        rois, labels, _, _ = sample_rois(fg, gt, np.array([1]), 2, rng=np.random.default_rng(seed))
        assert len(rois) == 16
        counts[(99 - rois[:, 2]).astype(int)] += 1
    assert np.all(np.abs(counts / 400 - 0.5) < 0.1)            # each candidate drawn half the time
    a = sample_rois(fg, gt, np.array([1]), 2, rng=np.random.default_rng(7))
    b = sample_rois(fg, gt, np.array([1]), 2, rng=np.random.default_rng(7))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
