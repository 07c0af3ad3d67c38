import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minidet.gradcheck import check_loss
from minidet.losses import fast_rcnn_loss, smooth_l1_loss, softmax_log_loss
from tests.reference import as_torch, assert_close, require_torch

grid = st.integers(-64, 64).map(lambda k: k / 16)
odd_grid = st.integers(-64, 63).map(lambda k: (2 * k + 1) / 32)  # minus a 1/16 grid: never +-1, the kinks


@st.composite
def classification(draw):
    num_rois, num_classes = draw(st.integers(1, 6)), draw(st.integers(2, 5))
    # logits within 8 of each other: a saturated softmax has gradients so small (1e-5) that
    # float64 finite differences lose their relative accuracy; huge logits have their own test
    scores = draw(arrays(np.float64, (num_rois, num_classes), elements=grid))
    return scores, draw(arrays(np.int64, num_rois, elements=st.integers(0, num_classes - 1)))


@st.composite
def regression(draw):
    shape = (draw(st.integers(1, 5)), 4 * draw(st.integers(1, 3)))
    weights = draw(arrays(np.float64, shape, elements=st.sampled_from([0.0, 0.5, 1.0])))
    return draw(arrays(np.float64, shape, elements=grid)), draw(arrays(np.float64, shape, elements=odd_grid)), weights


@st.composite
def detection(draw):
    """A Fast R-CNN batch: targets and unit weights only in the 4 columns of foreground RoIs' classes."""
    scores, labels = draw(classification())
    num_rois, num_classes = scores.shape
    bbox_pred = draw(arrays(np.float64, (num_rois, 4 * num_classes), elements=grid))
    bbox_targets = draw(arrays(np.float64, (num_rois, 4 * num_classes), elements=odd_grid))
    bbox_weights = np.zeros((num_rois, 4 * num_classes))
    for i, u in enumerate(labels):
        if u > 0:
            bbox_weights[i, 4 * u:4 * u + 4] = 1
    return scores, bbox_pred, labels, bbox_targets, bbox_weights


def _batch(rng, num_rois=8, num_classes=4):
    """A Fast R-CNN batch from rng, every class present, RoIs 0 and 4 background."""
    labels = np.arange(num_rois) % num_classes
    bbox_weights = np.zeros((num_rois, 4 * num_classes))
    bbox_weights[np.arange(num_rois)[:, None], 4 * labels[:, None] + np.arange(4)] = labels[:, None] > 0
    return (2 * rng.standard_normal((num_rois, num_classes)), rng.standard_normal((num_rois, 4 * num_classes)),
            labels, rng.standard_normal((num_rois, 4 * num_classes)), bbox_weights)


def test_softmax_log_loss_on_a_hand_computed_case():
    # row 0: log(e + e^2 + e^3) - 3 = log(1 + e^-1 + e^-2) = 0.4076059644; row 1: log 3 = 1.0986122887
    loss, dscores = softmax_log_loss(np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]), np.array([2, 0]))
    np.testing.assert_allclose(loss, (0.4076059644443803 + 1.0986122886681098) / 2, rtol=1e-12)
    # softmax(1, 2, 3) = (0.0900306, 0.2447285, 0.6652410); minus the one-hot label; over R = 2
    np.testing.assert_allclose(dscores, [[0.0900305732 / 2, 0.2447284711 / 2, (0.6652409558 - 1) / 2],
                                         [(1 / 3 - 1) / 2, 1 / 6, 1 / 6]], rtol=1e-9)


def test_smooth_l1_loss_on_a_hand_computed_case():
    # d = (0.5, -2, 3, -0.25): 0.5 d^2 = 0.125, |d| - 0.5 = 1.5, (weight 0), 0.5 d^2 = 0.03125
    loss, dpred = smooth_l1_loss(np.array([[0.5, -2.0, 3.0, 0.0]]), np.array([[0.0, 0.0, 0.0, 0.25]]),
                                 np.array([[1.0, 1.0, 0.0, 1.0]]), 2)
    np.testing.assert_allclose(loss, (0.125 + 1.5 + 0.03125) / 2, rtol=1e-15)
    np.testing.assert_allclose(dpred, [[0.5 / 2, -1 / 2, 0.0, -0.25 / 2]], rtol=1e-15)


def test_fast_rcnn_loss_background_rois_regress_nothing():
    # RoI 0 is class 1 (targets in columns 4..7), RoI 1 is background: wild predictions, zero weights
    cls_score = np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 1.0]])
    bbox_pred = np.full((2, 12), 100.0)
    bbox_pred[0, 4:8] = [0.5, -2.0, 3.0, 0.0]
    bbox_targets = np.zeros((2, 12))
    bbox_targets[0, 4:8] = [0.0, 0.0, 0.0, 0.25]
    bbox_weights = np.zeros((2, 12))
    bbox_weights[0, 4:8] = 1
    loss, dcls, dbbox, details = fast_rcnn_loss(cls_score, bbox_pred, np.array([1, 0]), bbox_targets, bbox_weights,
                                                details=True)
    # -log p: log(1 + e^-1 + e^-2) + 1 = 1.4076059644, log(1 + 2 e^-1) = 0.5514447139; over R = 2
    loss_cls = (1.4076059644443803 + 0.5514447139320511) / 2
    loss_bbox = (0.125 + 1.5 + 2.5 + 0.03125) / 2
    np.testing.assert_allclose(details["loss_cls"], loss_cls, rtol=1e-12)
    np.testing.assert_allclose(details["loss_bbox"], loss_bbox, rtol=1e-15)
    np.testing.assert_allclose(loss, loss_cls + loss_bbox, rtol=1e-12)
    assert details["accuracy"] == 0.5  # argmax (2, 0) against labels (1, 0)
    expected = np.zeros((2, 12))
    expected[0, 4:8] = [0.5 / 2, -1 / 2, 1 / 2, -0.25 / 2]
    np.testing.assert_array_equal(dbbox, expected)
    np.testing.assert_allclose(dcls, [[0.0900305732 / 2, (0.2447284711 - 1) / 2, 0.6652409558 / 2],
                                      [(0.5761168848 - 1) / 2, 0.2119415576 / 2, 0.2119415576 / 2]], rtol=1e-9)


@given(classification())
def test_softmax_log_loss_gradient_matches_numerical_gradient(case):
    assert check_loss(softmax_log_loss, *case)["input0"] < 1e-6


@given(regression(), st.integers(1, 8))
def test_smooth_l1_loss_gradient_matches_numerical_gradient(case, normalizer):
    assert check_loss(smooth_l1_loss, *case, normalizer)["input0"] < 1e-6


@given(detection())
def test_fast_rcnn_loss_gradients_match_numerical_gradients(case):
    errors = check_loss(fast_rcnn_loss, *case, wrt=(0, 1))
    assert max(errors.values()) < 1e-6, errors


@given(detection())
def test_fast_rcnn_loss_is_the_sum_of_its_terms(case):
    scores, bbox_pred, labels, bbox_targets, bbox_weights = case
    loss, dcls, dbbox, details = fast_rcnn_loss(*case, details=True)
    loss_cls, dscores = softmax_log_loss(scores, labels)
    loss_bbox, dpred = smooth_l1_loss(bbox_pred, bbox_targets, bbox_weights, len(labels))
    np.testing.assert_allclose([loss, details["loss_cls"], details["loss_bbox"]],
                               [loss_cls + loss_bbox, loss_cls, loss_bbox], rtol=1e-12)
    np.testing.assert_array_equal(dcls, dscores)
    np.testing.assert_array_equal(dbbox, dpred)
    np.testing.assert_array_equal(dbbox[labels == 0], 0)
    assert details["accuracy"] == np.mean([row.argmax() == u for row, u in zip(scores, labels)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_log_loss_is_stable_for_huge_logits(dtype):
    scores = np.array([[1e4, -1e4, 0.0], [0.0, 1e4, 1e4]], dtype)
    loss, dscores = softmax_log_loss(scores, np.array([1, 2]))
    # row 0: -log p_1 = 1e4 - (-1e4); row 1: two equal maxima, -log p_2 = log 2
    np.testing.assert_allclose(loss, (2e4 + np.log(2)) / 2, rtol=1e-6)
    np.testing.assert_allclose(dscores, [[0.5, -0.5, 0.0], [0.0, 0.25, -0.25]], atol=1e-7)
    assert np.isfinite(dscores).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_are_zero_dim_arrays_of_the_input_dtype(dtype, rng):
    case = [a.astype(dtype) if a.dtype.kind == "f" else a for a in _batch(rng)]
    values = fast_rcnn_loss(*case, details=True)
    for value in [values[0], *values[3].values(), softmax_log_loss(case[0], case[2])[0],
                  smooth_l1_loss(case[1], case[3], case[4], 4)[0]]:
        assert isinstance(value, np.ndarray) and value.shape == ()
    assert values[0].dtype == values[1].dtype == values[2].dtype == dtype


def test_losses_match_torch(rng):
    torch = require_torch()
    F = torch.nn.functional
    cls_score, bbox_pred, labels, bbox_targets, bbox_weights = _batch(rng)
    loss, dcls, dbbox = fast_rcnn_loss(cls_score, bbox_pred, labels, bbox_targets, bbox_weights)
    t_score, t_pred = as_torch(cls_score, grad=True), as_torch(bbox_pred, grad=True)
    fg = as_torch(bbox_weights > 0)  # unit weights: the weighted sum is a sum over the weighted entries
    t_cls = F.cross_entropy(t_score, as_torch(labels))
    t_bbox = F.smooth_l1_loss(t_pred[fg], as_torch(bbox_targets)[fg], reduction="sum", beta=1.0) / len(labels)
    (t_cls + t_bbox).backward()
    assert_close(softmax_log_loss(cls_score, labels)[0], t_cls)
    assert_close(smooth_l1_loss(bbox_pred, bbox_targets, bbox_weights, len(labels))[0], t_bbox)
    assert_close(loss, t_cls + t_bbox)
    assert_close(dcls, t_score.grad)
    assert_close(dbbox, t_pred.grad)
