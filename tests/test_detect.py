"""Detection of one image: per-class threshold and NMS, the top 100, coordinates back in the original image."""
import numpy as np
import pytest

from minidet.convention import CAFFE
from minidet.detect import class_colour, detect, draw_detections, select_detections


def boxes_for(rows, num_classes):
    """(R, 4 num_classes) with rows[i] = (class, box): that class's columns hold the box."""
    out = np.zeros((len(rows), 4 * num_classes), np.float32)
    for i, (k, box) in enumerate(rows):
        out[i, 4 * k:4 * k + 4] = box
    return out


def test_select_detections_thresholds_and_suppresses_per_class():
    # K = 2 (+ background). RoI 1 overlaps RoI 0 by 81/119 > 0.3 in class 1 -> suppressed;
    # RoI 2 scores 0.04 <= 0.05 -> dropped; RoI 3 is the same box in class 2 -> kept (NMS is per class);
    # the background column never yields a detection, however high.
    scores = np.array([[0.05, 0.9, 0.05],
                       [0.15, 0.8, 0.05],
                       [0.9, 0.04, 0.06],
                       [0.35, 0.05, 0.6]], np.float32)
    boxes = boxes_for([(1, [0, 0, 9, 9]), (1, [1, 1, 10, 10]), (1, [50, 50, 59, 59]), (2, [0, 0, 9, 9])], 3)
    boxes[2, 8:12] = [70, 70, 79, 79]      # RoI 2's class-2 box, score 0.06: kept
    boxes[0, 8:12] = [0, 0, 9, 9]          # RoI 0's class-2 box, score 0.05: not > 0.05, dropped
    det_boxes, det_labels, det_scores = select_detections(scores, boxes)
    np.testing.assert_array_equal(det_labels, [1, 2, 2])
    np.testing.assert_allclose(det_scores, [0.9, 0.6, 0.06])
    np.testing.assert_array_equal(det_boxes, [[0, 0, 9, 9], [0, 0, 9, 9], [70, 70, 79, 79]])


def test_select_detections_keeps_the_100_best_over_all_classes():
    # 150 disjoint boxes, alternating between two classes, distinct scores: the 100 highest stay
    r = 150
    scores = np.zeros((r, 3), np.float32)
    rows = []
    for i in range(r):
        k = 1 + i % 2
        scores[i, k] = 0.1 + 0.005 * i
        rows.append((k, [20 * i, 0, 20 * i + 9, 9]))
    det_boxes, det_labels, det_scores = select_detections(scores, boxes_for(rows, 3))
    assert len(det_scores) == 100
    np.testing.assert_allclose(det_scores, 0.1 + 0.005 * np.arange(149, 49, -1), rtol=1e-6)
    np.testing.assert_array_equal(det_labels, 1 + np.arange(149, 49, -1) % 2)


def test_select_detections_without_any_score_above_threshold_is_empty():
    boxes, labels, scores = select_detections(np.full((3, 4), 0.01, np.float32), np.zeros((3, 16), np.float32))
    assert boxes.shape == (0, 4) and labels.shape == (0,) and scores.shape == (0,)


class StubModel:
    """predict() as FastRCNN's: every RoI's box is the RoI itself in every class (zero deltas),
    clipped to the blob; class 1 scores 0.9 on RoI 0 and 0.01 elsewhere. Records what it was given."""

    def predict(self, images, rois, image_size, dedup=False):
        self.images, self.rois, self.image_size = images, rois, image_size
        r = len(rois)
        scores = np.full((r, 3), 0.01, np.float32)
        scores[0, 1] = 0.9
        boxes = np.tile(rois[:, 1:5], (1, 3))
        h, w = image_size
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w - 1)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h - 1)
        return scores, boxes


def test_detect_returns_boxes_in_original_image_coordinates():
    # a 50x80 image tested at scale 100: the blob is 100x160, proposals x2 going in, /2 coming out
    image = np.zeros((50, 80, 3), np.uint8)
    proposals = np.array([[10, 5, 30, 25], [0, 0, 5, 5]], np.float32)
    model = StubModel()
    boxes, labels, scores = detect(model, image, proposals, CAFFE, scale=100, max_size=1000)
    assert model.images.shape == (1, 3, 100, 160) and tuple(model.image_size) == (100, 160)
    np.testing.assert_allclose(model.rois, [[0, 20, 10, 60, 50], [0, 0, 0, 10, 10]])
    np.testing.assert_array_equal(labels, [1])
    np.testing.assert_allclose(scores, [0.9])
    np.testing.assert_allclose(boxes, [[10, 5, 30, 25]], atol=1e-5)


def test_detect_clips_to_the_original_image():
    # the blob's last pixel (159) maps back to 79.5: boxes must still end at the image's last pixel (79)
    image = np.zeros((50, 80, 3), np.uint8)
    boxes, _, _ = detect(StubModel(), image, np.array([[40, 10, 200, 100]], np.float32), CAFFE, scale=100)
    np.testing.assert_allclose(boxes, [[40, 10, 79, 49]], atol=1e-5)


def test_detect_without_proposals_finds_nothing():
    boxes, labels, scores = detect(StubModel(), np.zeros((20, 20, 3), np.uint8), np.zeros((0, 4)), CAFFE)
    assert len(boxes) == len(labels) == len(scores) == 0


def test_draw_detections_draws_above_threshold_only_on_a_copy():
    image = np.zeros((60, 80, 3), np.uint8)
    boxes = np.array([[10, 20, 40, 50], [60, 35, 75, 55]], np.float32)
    out = draw_detections(image, boxes, np.array([1, 2]), np.array([0.9, 0.3]), ["a", "b"], score_thresh=0.5)
    assert image.max() == 0                                   # the input is untouched
    assert tuple(out[35, 10]) == class_colour(1)              # left edge of the drawn box
    assert out[35:56, 60].max() == 0 and out[35, 60:76].max() == 0  # the 0.3 box is not drawn


def test_class_colours_differ():
    colours = {class_colour(k) for k in range(1, 21)}
    assert len(colours) == 20


@pytest.mark.parametrize("dedup", [False, True])
def test_detect_passes_dedup_to_the_model(dedup):
    seen = {}

    class Recorder(StubModel):
        def predict(self, images, rois, image_size, dedup=False):
            seen["dedup"] = dedup
            return super().predict(images, rois, image_size)

    detect(Recorder(), np.zeros((20, 20, 3), np.uint8), np.array([[1, 1, 5, 5]]), CAFFE, scale=20, dedup=dedup)
    assert seen["dedup"] is dedup
