"""Truncated SVD of fc6/fc7: the factors, the layer's backward, the compressed network."""
import numpy as np
import pytest

from minidet.gradcheck import check_layer
from minidet.losses import fast_rcnn_loss
from minidet.models.fast_rcnn import FastRCNN
from minidet.models.svd import TruncatedLinear, truncate_linear, truncated_svd
from minidet.nn.linear import Linear
from tests.test_model import directional_errors, perturb_biases, random_rois, training_targets


def small_model(**kw):
    args = dict(num_classes=4, width=1 / 16, fc_dim=32, trainable_from="fc6", dtype=np.float64, seed=2)
    return FastRCNN(**(args | kw))


@pytest.mark.parametrize("shape", [(6, 15), (15, 6)], ids=["wide", "tall"])
def test_truncated_svd_is_the_best_rank_t_approximation(rng, shape):
    w = rng.standard_normal(shape)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    for t in (1, 3, 6):
        sv, u_t, energy = truncated_svd(w, t)
        assert sv.shape == (t, shape[1]) and u_t.shape == (shape[0], t)
        best = (u[:, :t] * s[:t]) @ vt[:t]
        np.testing.assert_allclose(u_t @ sv, best, atol=1e-10)
        np.testing.assert_allclose(np.linalg.norm(sv, axis=1), s[:t], rtol=1e-10)   # rows of S V^T
        np.testing.assert_allclose(u_t.T @ u_t, np.eye(t), atol=1e-12)
        assert energy == pytest.approx((s[:t] ** 2).sum() / (s ** 2).sum(), rel=1e-12)
    assert truncated_svd(w, 100)[0].shape[0] == min(shape)


def test_truncated_linear_gradients_match_finite_differences(rng):
    layer = TruncatedLinear(rng.standard_normal((3, 7)), rng.standard_normal((5, 3)), rng.standard_normal(5))
    errors = check_layer(layer, rng.standard_normal((4, 7)))
    assert sorted(errors) == ["bias", "input0", "weight_sv", "weight_u"]
    assert max(errors.values()) < 1e-7, errors


def test_truncated_linear_frozen_and_without_input_gradient(rng):
    layer = TruncatedLinear(rng.standard_normal((3, 7)), rng.standard_normal((5, 3)), rng.standard_normal(5))
    x, dy = rng.standard_normal((4, 7)), rng.standard_normal((4, 5))
    layer.forward(x)
    dx = layer.backward(dy)
    layer.frozen = True
    np.testing.assert_array_equal(layer.backward(dy), dx)
    assert layer.grads == {}
    layer.needs_input_grad = False
    assert layer.backward(dy) is None
    layer.frozen = False
    assert layer.backward(dy) is None and sorted(layer.grads) == ["bias", "weight_sv", "weight_u"]


def test_full_rank_truncation_reproduces_a_linear(rng):
    linear = Linear(12, 5, dtype=np.float64, rng=rng)
    linear.params["bias"][...] = rng.standard_normal(5)
    truncated, report = truncate_linear(linear, rank=1024)
    assert report["rank"] == 5 and report["energy_kept"] == pytest.approx(1.0)
    x = rng.standard_normal((9, 12))
    np.testing.assert_allclose(truncated.forward(x), linear.forward(x), rtol=1e-12, atol=1e-12)


def test_full_rank_compression_reproduces_the_network(rng):
    model = small_model()
    images, rois = rng.standard_normal((1, 3, 48, 64)), random_rois(rng, 10, 1, 48, 64)
    before = model.forward(images, rois)
    report = model.compress(fc6_rank=1024, fc7_rank=1024, images=images, rois=rois, repeat=1)
    assert isinstance(model.layer("fc6"), TruncatedLinear) and model.layer("fc6").rank == 32
    for a, b in zip(model.forward(images, rois), before):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert report["top_class_agreement"] == 1.0 and report["max_abs_score_change"] < 1e-10
    assert report["fc6"]["energy_kept"] == pytest.approx(1.0)


def test_compression_report_counts_multiply_adds(rng):
    model = small_model()
    images, rois = rng.standard_normal((1, 3, 48, 64)), random_rois(rng, 10, 1, 48, 64)
    report = model.compress(fc6_rank=8, fc7_rank=4, images=images, rois=rois, repeat=1)
    d_in = 32 * 49
    assert report["fc6"] | {"energy_kept": None} == {
        "in": d_in, "out": 32, "rank": 8, "energy_kept": None,
        "macs_before": d_in * 32, "macs_after": 8 * (d_in + 32)}
    heads = 32 * 4 + 32 * 16
    assert report["fc_macs_before"] == d_in * 32 + 32 * 32 + heads
    assert report["fc_macs_after"] == 8 * (d_in + 32) + 4 * 64 + heads
    assert 0 < report["fc6"]["energy_kept"] < 1
    assert report["fc_seconds_before"] > 0 and report["fc_speedup"] > 0
    assert 0 <= report["top_class_agreement"] <= 1 and report["max_abs_score_change"] > 0
    with pytest.raises(ValueError, match="already truncated"):
        model.compress()


def test_compressed_network_backward_matches_finite_differences(rng):
    model = small_model(dropout=0.0)           # fc6 and above trained
    perturb_biases(model, rng)
    model.compress(fc6_rank=6, fc7_rank=5)
    images, rois = rng.standard_normal((2, 3, 32, 48)), random_rois(rng, 6, 2, 32, 48)
    targets = training_targets(rng, len(rois), model.num_classes)
    model.train()
    pooled = model.roi_pool.forward(model.trunk.forward(images), rois).copy()   # fixed: nothing below fc6 trains

    def loss_value():
        x = model.head.forward(pooled)
        return float(fast_rcnn_loss(model.cls_score.forward(x), model.bbox_pred.forward(x), *targets)[0])

    _, dcls, dbbox = fast_rcnn_loss(*model.train().forward(images, rois), *targets)
    model.backward(dcls, dbbox)
    grads = {k: v.copy() for k, v in model.grads().items()}
    assert {"fc6.weight_sv", "fc6.weight_u", "fc6.bias", "fc7.weight_sv"} <= set(grads)
    errors = directional_errors(model.trainable_params(), grads, loss_value, rng)
    assert max(errors.values()) < 1e-6, errors


def test_compressed_state_dict_round_trip(rng):
    source, target = small_model(seed=1), small_model(seed=2)
    source.compress(fc6_rank=8, fc7_rank=4)
    target.compress(fc6_rank=8, fc7_rank=4)
    state = source.state_dict()
    assert {"fc6.weight_sv", "fc6.weight_u", "fc6.bias"} <= set(state) and "fc6.weight" not in state
    target.load_state_dict(state)
    images, rois = rng.standard_normal((1, 3, 32, 32)), random_rois(rng, 4, 1, 32, 32)
    np.testing.assert_array_equal(target.forward(images, rois)[0], source.forward(images, rois)[0])
    with pytest.raises(KeyError, match="fc6.weight_sv"):
        small_model().load_state_dict(state)
