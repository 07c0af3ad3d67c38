"""Detection of one image: decoding in the original pixels, the image pyramid and its levels, RoI
deduplication, per-class threshold and NMS, the top 100."""
import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidet.boxes import bbox_transform
from minidet.convention import CAFFE, InputConvention
from minidet.data.transforms import image_scale
from minidet.detect import (class_colour, detect, draw_detections, image_pyramid, pyramid_levels, pyramid_rois,
                            score_and_decode, select_detections)
from minidet.nn.roi_pool import RoIPool

# the Caffe means with a spread of 64 grey levels: a randomly initialised small model gives
# moderate class scores on such inputs (on raw 0-255 values its logits saturate)
GENTLE = InputConvention("BGR", 255.0, CAFFE.mean, (64.0, 64.0, 64.0))


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
    """forward() as FastRCNN's: class 1 scores high on RoI 0 and low elsewhere; every RoI gets the
    deltas `deltas` (4,) in class 1 (zero deltas by default: each box is its proposal). Records what
    it was given."""

    dtype = np.float32
    roi_pool = RoIPool()          # which RoIs read the same cells, for the dedup

    def __init__(self, deltas=(0, 0, 0, 0)):
        self.deltas = np.asarray(deltas, np.float32)

    def forward(self, images, rois):
        self.images, self.rois = images, rois
        cls_score = np.zeros((len(rois), 3), np.float32)
        cls_score[:, 0] = 5.0
        cls_score[0, 1] = 10.0
        bbox_pred = np.zeros((len(rois), 12), np.float32)
        bbox_pred[:, 4:8] = self.deltas
        return cls_score, bbox_pred


def test_detect_decodes_the_deltas_on_the_proposals_in_original_pixels():
    # the exact target of P towards G, decoded at test scale s = 1.6, must give back G: training
    # encodes in original pixels. (Decoding P x 1.6 and dividing by 1.6 gives
    # (0.04, 10.08, 198.66, 98.78) with +1 widths.)
    proposal, target = np.array([[10, 20, 109, 69]], np.float64), np.array([[0, 10, 199, 99]], np.float64)
    image = np.zeros((150, 250, 3), np.uint8)                    # shorter side 150 -> 240: s = 1.6
    model = StubModel(bbox_transform(proposal, target)[0])
    boxes, labels, scores = detect(model, image, proposal, CAFFE, scale=240, max_size=1000)
    np.testing.assert_allclose(model.rois, [[0, 16, 32, 174.4, 110.4]], rtol=1e-6)
    np.testing.assert_array_equal(labels, [1])
    np.testing.assert_allclose(boxes, target, atol=1e-4)         # float32 deltas: within 1e-4 pixel


def test_detect_returns_boxes_in_original_image_coordinates():
    # a 50x80 image tested at scale 100: the blob is 100x160, proposals x2 going in
    image = np.zeros((50, 80, 3), np.uint8)
    proposals = np.array([[10, 5, 30, 25], [0, 0, 5, 5]], np.float32)
    model = StubModel()
    boxes, labels, scores = detect(model, image, proposals, CAFFE, scale=100, max_size=1000, dedup=False)
    assert model.images.shape == (1, 3, 100, 160)
    np.testing.assert_allclose(model.rois, [[0, 20, 10, 60, 50], [0, 0, 0, 10, 10]])
    np.testing.assert_array_equal(labels, [1])
    np.testing.assert_allclose(scores, [np.exp(10) / (np.exp(10) + np.exp(5) + 1)], rtol=1e-6)
    np.testing.assert_array_equal(boxes, [[10, 5, 30, 25]])


def test_detect_clips_once_to_the_original_image():
    # deltas that grow the box 10 times: x1, y1 clipped to 0, x2, y2 to the image's last pixel (79, 49)
    image = np.zeros((50, 80, 3), np.uint8)
    model = StubModel((0, 0, np.log(10), np.log(10)))
    boxes, _, _ = detect(model, image, np.array([[40, 10, 60, 30]], np.float32), CAFFE, scale=100)
    np.testing.assert_array_equal(boxes, [[0, 0, 79, 49]])


def test_detect_without_proposals_finds_nothing():
    boxes, labels, scores = detect(StubModel(), np.zeros((20, 20, 3), np.uint8), np.zeros((0, 4)), CAFFE)
    assert len(boxes) == len(labels) == len(scores) == 0


def original_level(box, scales):
    """The original's _project_im_rois rule for one box, as a loop: the first level with the
    smallest |(w + 1)(h + 1) s^2 - 224^2|."""
    area = (float(box[2]) - float(box[0]) + 1) * (float(box[3]) - float(box[1]) + 1)
    best, best_diff = 0, None
    for level, s in enumerate(scales):
        diff = abs(area * float(s) ** 2 - 224 * 224)
        if best_diff is None or diff < best_diff:
            best, best_diff = level, diff
    return best


@given(st.integers(0, 2 ** 31 - 1), st.integers(1, 5))
def test_pyramid_levels_follow_the_originals_rule(seed, n_levels):
    rng = np.random.default_rng(seed)
    x1y1 = rng.uniform(0, 400, (30, 2))
    boxes = np.concatenate([x1y1, x1y1 + rng.uniform(0, 500, (30, 2))], axis=1)
    scales = np.sort(rng.uniform(0.3, 4.0, n_levels))
    expected = [original_level(b, scales) if n_levels > 1 else 0 for b in boxes]
    levels = pyramid_levels(boxes, scales)
    assert levels.dtype == np.int64 and levels.tolist() == expected


def test_pyramid_levels_by_hand():
    # 224x224 at scales (0.5, 1, 2): level 1 exactly; 112x112 reaches 224^2 at s = 2; 448x448 at s = 0.5
    boxes = np.array([[0, 0, 223, 223], [10, 10, 121, 121], [0, 0, 447, 447]], np.float32)
    assert pyramid_levels(boxes, np.array([0.5, 1.0, 2.0])).tolist() == [1, 2, 0]
    rois = pyramid_rois(boxes, np.array([0.5, 1.0, 2.0]))
    assert rois.dtype == np.float32
    np.testing.assert_array_equal(rois, [[1, 0, 0, 223, 223], [2, 20, 20, 242, 242], [0, 0, 0, 223.5, 223.5]])


def test_image_pyramid_is_each_scale_prepared_as_the_original_and_padded_to_the_largest(rng):
    image = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
    scales, max_size = (24, 45, 60), 80
    blob, im_scales = image_pyramid(image, CAFFE, scales, max_size)
    expected_scales = [image_scale(30, 44, s, max_size) for s in scales]   # the last one capped: 80 / 44
    np.testing.assert_array_equal(im_scales, expected_scales)
    levels = []
    for s in expected_scales:   # lib/utils/blob.py and test.py _get_image_blob, written out
        im = image.astype(np.float32)
        im -= np.array([[[102.9801, 115.9465, 122.7717]]])
        levels.append(cv2.resize(im, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR))
    height, width = max(im.shape[0] for im in levels), max(im.shape[1] for im in levels)
    assert blob.shape == (3, 3, height, width) and blob.dtype == np.float32
    for n, im in enumerate(levels):
        np.testing.assert_array_equal(blob[n, :, :im.shape[0], :im.shape[1]], im.transpose(2, 0, 1))
        assert not blob[n, :, im.shape[0]:].any() and not blob[n, :, :, im.shape[1]:].any()


# on a 48x64 image, levels at s = 10/3 and 5, where boxes of about 64 and 45 pixels are closest to 224^2
PYRAMID = (160, 240)


@pytest.fixture(scope="module")
def small_model():
    from minidet.models.fast_rcnn import FastRCNN

    return FastRCNN.small(num_classes=3, width=0.125, seed=0)


def random_proposals(rng, n, height, width):
    x1y1 = rng.uniform(0, [width - 8, height - 8], (n, 2))
    x2y2 = np.minimum(x1y1 + rng.uniform(4, width, (n, 2)), [width - 1, height - 1])
    boxes = np.round(np.concatenate([x1y1, x2y2], axis=1))
    whole = np.array([[0, 0, width - 1, height - 1], [2, 1, width - 4, height - 3]], np.float64)  # large ones
    return np.concatenate([boxes, whole, boxes[: n // 3] + rng.integers(-1, 2, (n // 3, 4))])  # near-duplicates


def test_image_pyramid_batch_gives_each_levels_features(small_model, rng):
    # the RoIs of each level read that level's image in the blob: the largest level is its image
    # alone (no padding); a smaller one is its padded image alone
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    blob, im_scales = image_pyramid(image, GENTLE, PYRAMID, 1000)
    proposals = random_proposals(rng, 30, 48, 64)
    rois = pyramid_rois(proposals, im_scales)
    assert set(rois[:, 0].astype(int)) == {0, 1}
    cls_score, bbox_pred = small_model.forward(blob, rois)
    for level in range(2):
        mine = rois[:, 0] == level
        alone = rois[mine].copy()
        alone[:, 0] = 0
        expected = small_model.forward(blob[level:level + 1], alone)
        np.testing.assert_allclose(cls_score[mine], expected[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bbox_pred[mine], expected[1], rtol=1e-5, atol=1e-6)
    from minidet.data.transforms import prepare_image

    largest, _ = prepare_image(image, GENTLE, PYRAMID[-1], 1000)
    assert largest.shape[1:] == blob.shape[2:]
    alone = rois[rois[:, 0] == 1].copy()
    alone[:, 0] = 0
    np.testing.assert_allclose(small_model.forward(largest[None], alone)[0], cls_score[rois[:, 0] == 1],
                               rtol=1e-5, atol=1e-6)


def test_multi_scale_with_one_scale_is_single_scale(small_model, rng):
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    proposals = random_proposals(rng, 40, 48, 64)
    single = detect(small_model, image, proposals, GENTLE, scale=48)
    assert len(single[0]) > 0
    for one in ((48,), [48], np.array([48])):
        for a, b in zip(detect(small_model, image, proposals, GENTLE, scale=one), single):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("scales", [(48,), PYRAMID])
def test_dedup_changes_nothing_at_one_or_several_scales(small_model, rng, scales):
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    proposals = random_proposals(rng, 60, 48, 64)
    blob, im_scales = image_pyramid(image, GENTLE, scales, 1000)
    assert len(set(pyramid_levels(proposals, im_scales).tolist())) == len(scales)
    plain = score_and_decode(small_model, blob, proposals, im_scales, (48, 64), dedup=False)
    dedup = score_and_decode(small_model, blob, proposals, im_scales, (48, 64), dedup=True)
    # the same pooled features; the fully connected layers' products over fewer rows may round
    # differently in BLAS (blocking depends on the row count), by an ulp or so
    np.testing.assert_allclose(dedup[0], plain[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dedup[1], plain[1], rtol=1e-9, atol=1e-4)
    assert len(detect(small_model, image, proposals, GENTLE, scale=scales)[0]) > 0


def test_dedup_merges_only_the_same_cells_at_the_same_level():
    # scales 1 and 2 (a 200x200 image at 200 and 400). A = (0, 0, 159, 159): level 0, cells
    # round(159 / 16) = 10. C = (0, 0, 158, 158): level 0, the same cells -> pooled with A.
    # B = (0, 0, 80, 80): area 81^2, closest to 224^2 at s = 2 -> level 1, RoI (0, 0, 160, 160),
    # cells 10 as well, but on another level's features -> its own.
    model = StubModel()
    proposals = np.array([[0, 0, 159, 159], [0, 0, 80, 80], [0, 0, 158, 158]], np.float32)
    detect(model, np.zeros((200, 200, 3), np.uint8), proposals, CAFFE, scale=(200, 400), max_size=1000)
    np.testing.assert_array_equal(model.rois, [[0, 0, 0, 159, 159], [1, 0, 0, 160, 160]])


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


