"""The whole Fast R-CNN: gradients against finite differences and torch, freezing, state dicts, scoring."""
import numpy as np
import pytest

from minidet.backend import gpu_available
from minidet.gradcheck import FixedMaskDropout, relative_error
from minidet.losses import fast_rcnn_loss
from minidet.detect import score_and_decode
from minidet.checkpoint import fold_bbox_normalization, unfold_bbox_normalization
from minidet.models.fast_rcnn import FastRCNN, unique_pooled_rois
from minidet.nn.roi_pool import RoIPool
from minidet.models.vgg16 import conv_names, conv_output_size, vgg16_channels, vgg16_trunk
from tests.reference import as_torch, assert_close, require_torch, require_torchvision, to_numpy


def random_rois(rng, num_rois, num_images, height, width):
    """(R, 5) [batch index, x1, y1, x2, y2] inside the image, at least 1 pixel wide."""
    x1 = rng.uniform(0, width - 2, num_rois)
    y1 = rng.uniform(0, height - 2, num_rois)
    x2 = np.minimum(x1 + rng.uniform(1, width, num_rois), width - 1)
    y2 = np.minimum(y1 + rng.uniform(1, height, num_rois), height - 1)
    return np.stack([rng.integers(0, num_images, num_rois), x1, y1, x2, y2], axis=1)


def training_targets(rng, num_rois, num_classes):
    labels = rng.integers(0, num_classes, num_rois)
    bbox_targets = rng.standard_normal((num_rois, 4 * num_classes))
    bbox_weights = np.zeros((num_rois, 4 * num_classes))
    columns = 4 * labels[:, None] + np.arange(4)
    bbox_weights[np.arange(num_rois)[:, None], columns] = labels[:, None] > 0
    return labels, bbox_targets, bbox_weights


def tiny_model(**kw):
    args = dict(num_classes=3, width=1 / 32, fc_dim=16, trainable_from="conv1_1", dtype=np.float64, seed=1)
    return FastRCNN(**(args | kw))


def perturb_biases(model, rng, std=0.1):
    """Random biases: with the zero biases of the initialisation, a unit whose inputs are all zero
    (a dead RoI feature) sits exactly on ReLU's kink, where finite differences see half a slope."""
    for _, layer in model.named_layers():
        if "bias" in layer.params:
            layer.params["bias"][...] += rng.normal(0, std, layer.params["bias"].shape)


def directional_errors(params, grads, loss_value, rng, entries=8, eps=1e-5):
    """{name: relative error} of each parameter's gradient against central differences.

    For each parameter array, a direction v that is N(0, 1) on `entries` random elements and 0
    elsewhere: (L(p + eps v) - L(p - eps v)) / (2 eps) against sum(grad * v), one pair of loss
    evaluations per array. The arrays are perturbed in place and restored.
    """
    errors = {}
    for name, value in params.items():
        picks = rng.choice(value.size, size=min(entries, value.size), replace=False)
        v = np.zeros(value.size)
        v[picks] = rng.standard_normal(len(picks))
        v = v.reshape(value.shape)
        value += eps * v
        up = loss_value()
        value -= 2 * eps * v
        down = loss_value()
        value += eps * v
        errors[name] = relative_error(np.sum(grads[name] * v), (up - down) / (2 * eps))
    return errors


def test_conv5_3_size_follows_caffe_ceil_pooling():
    assert conv_output_size((600, 1000)) == (38, 63)          # SPEC: torch's floor would give 37x62
    assert conv_output_size((35, 50)) == (3, 4)               # 35 -> 18 -> 9 -> 5 -> 3, 50 -> 25 -> 13 -> 7 -> 4
    features = vgg16_trunk(width=1 / 32, dtype=np.float64).forward(np.ones((1, 3, 35, 50)))
    assert features.shape == (1, 16, 3, 4)


def test_layer_names_are_caffes_in_forward_order():
    model = FastRCNN(num_classes=21, width=1 / 16, fc_dim=32)
    names = [name for name, _ in model.named_layers()]
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert [n for n in names if n.startswith("conv")] == list(conv_names())
    assert "pool5" not in names
    assert names[-10:] == ["roi_pool5", "flatten", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7",
                           "cls_score", "bbox_pred"]
    state = model.state_dict()
    assert state["conv5_3.weight"].shape == (32, 32, 3, 3)
    assert state["fc6.weight"].shape == (32, 32 * 49)
    assert state["cls_score.weight"].shape == (21, 32) and state["bbox_pred.weight"].shape == (84, 32)


@pytest.mark.slow
def test_full_vgg16_shapes_and_new_layer_initialisation():
    model = FastRCNN(num_classes=21)
    state = model.state_dict()
    assert state["fc6.weight"].shape == (4096, 25088) and state["fc7.weight"].shape == (4096, 4096)
    assert state["conv4_1.weight"].shape == (512, 256, 3, 3)
    assert sum(v.size for v in state.values()) == 14_714_688 + 102_764_544 + 16_781_312 + 21 * 4097 * 5
    assert abs(state["cls_score.weight"].std() - 0.01) < 0.001
    assert abs(state["bbox_pred.weight"].std() - 0.001) < 0.0001
    assert not state["cls_score.bias"].any() and not state["bbox_pred.bias"].any()
    assert abs(state["fc7.weight"].std() - np.sqrt(2 / 4096)) < 0.001   # He


def test_whole_model_gradient_matches_finite_differences(rng):
    model = tiny_model()
    perturb_biases(model, rng)
    for name in ("drop6", "drop7"):   # the same dropout mask on every forward
        model.replace_layer(name, FixedMaskDropout(0.5, seed=int(rng.integers(1000))))
    images = rng.standard_normal((2, 3, 48, 64))
    rois = random_rois(rng, 7, 2, 48, 64)
    targets = training_targets(rng, len(rois), model.num_classes)

    def loss_value():
        cls_score, bbox_pred = model.train().forward(images, rois)
        return float(fast_rcnn_loss(cls_score, bbox_pred, *targets)[0])

    cls_score, bbox_pred = model.train().forward(images, rois)
    _, dcls, dbbox = fast_rcnn_loss(cls_score, bbox_pred, *targets)
    model.backward(dcls, dbbox)
    grads = {k: v.copy() for k, v in model.grads().items()}
    params = model.trainable_params()
    assert sorted(grads) == sorted(params) == sorted(model.params())   # everything is trained here

    errors = directional_errors(params, grads, loss_value, rng)
    assert max(errors.values()) < 1e-6, errors


def test_layers_below_trainable_from_do_no_backward_work(rng, monkeypatch):
    model = FastRCNN(num_classes=3, width=1 / 32, fc_dim=16, dtype=np.float64)   # trainable_from="conv3_1"
    layers = model.named_layers()
    lowest = [name for name, _ in layers].index("conv3_1")
    for name, layer in layers[:lowest]:
        monkeypatch.setattr(layer, "backward", lambda dy, name=name: pytest.fail(f"backward reached {name}"))
    called = []
    conv3_1 = model.layer("conv3_1")
    original = conv3_1.backward
    monkeypatch.setattr(conv3_1, "backward", lambda dy: called.append(original(dy)))
    rois = random_rois(rng, 5, 1, 40, 40)
    cls_score, bbox_pred = model.train().forward(rng.standard_normal((1, 3, 40, 40)), rois)
    model.backward(np.ones_like(cls_score), np.ones_like(bbox_pred))

    assert called == [None]                        # conv3_1 trained, but computes no input gradient
    assert not conv3_1.needs_input_grad and not conv3_1.frozen
    assert all(model.layer(n).frozen for n in ("conv1_1", "conv1_2", "conv2_1", "conv2_2"))
    trained = sorted({k.split(".")[0] for k in model.grads()})
    assert trained == sorted(["conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2", "conv4_3", "conv5_1",
                              "conv5_2", "conv5_3", "fc6", "fc7", "cls_score", "bbox_pred"])
    assert sorted(model.grads()) == sorted(model.trainable_params())


def test_training_only_the_heads_and_fcs(rng):
    model = tiny_model(trainable_from="fc6")
    rois = random_rois(rng, 4, 1, 32, 32)
    cls_score, bbox_pred = model.train().forward(rng.standard_normal((1, 3, 32, 32)), rois)
    model.backward(np.ones_like(cls_score), np.ones_like(bbox_pred))
    assert sorted({k.split(".")[0] for k in model.grads()}) == ["bbox_pred", "cls_score", "fc6", "fc7"]
    model.set_trainable_from("cls_score")
    model.backward(np.ones_like(cls_score), np.ones_like(bbox_pred))
    assert sorted({k.split(".")[0] for k in model.grads()}) == ["bbox_pred", "cls_score"]
    with pytest.raises(ValueError, match="trainable_from"):
        model.set_trainable_from("relu5_3")


def torch_fast_rcnn(params, images, rois, masks, trained):
    """The same VGG16 Fast R-CNN from torch.nn.functional and torchvision's roi_pool: returns
    (cls_score, bbox_pred, leaf tensors). masks: {"drop6": array, "drop7": array} (scaled keep masks)."""
    torch = require_torch()
    torchvision = require_torchvision()
    F = torch.nn.functional
    leaves = {k: as_torch(v, grad=k.split(".")[0] in trained) for k, v in params.items()}
    x = as_torch(images)
    for stage, count in enumerate((2, 2, 3, 3, 3), 1):
        for i in range(1, count + 1):
            name = f"conv{stage}_{i}"
            x = F.relu(F.conv2d(x, leaves[name + ".weight"], leaves[name + ".bias"], padding=1))
        if stage < 5:
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    x = torchvision.ops.roi_pool(x, as_torch(rois), (7, 7), 1 / 16).flatten(1)
    x = F.relu(F.linear(x, leaves["fc6.weight"], leaves["fc6.bias"])) * as_torch(masks["drop6"])
    x = F.relu(F.linear(x, leaves["fc7.weight"], leaves["fc7.bias"])) * as_torch(masks["drop7"])
    return (F.linear(x, leaves["cls_score.weight"], leaves["cls_score.bias"]),
            F.linear(x, leaves["bbox_pred.weight"], leaves["bbox_pred.bias"]), leaves)


def test_scores_loss_and_gradients_match_torch(rng):
    torch = require_torch()
    model = FastRCNN(num_classes=4, width=1 / 16, fc_dim=32, dtype=np.float64, seed=3)   # conv3_1 and above
    images = rng.standard_normal((2, 3, 50, 70))          # odd sizes: ceil pooling matters (-> 4x5)
    rois = random_rois(rng, 12, 2, 50, 70)
    labels, bbox_targets, bbox_weights = training_targets(rng, len(rois), model.num_classes)
    cls_score, bbox_pred = model.train().forward(images, rois)
    loss, dcls, dbbox = fast_rcnn_loss(cls_score, bbox_pred, labels, bbox_targets, bbox_weights)
    model.backward(dcls, dbbox)

    masks = {name: model.layer(name).mask for name in ("drop6", "drop7")}
    trained = {k.split(".")[0] for k in model.trainable_params()}
    t_cls, t_bbox, leaves = torch_fast_rcnn(model.state_dict(), images, rois, masks, trained)
    t_loss = (torch.nn.functional.cross_entropy(t_cls, as_torch(labels))
              + (as_torch(bbox_weights) * torch.nn.functional.smooth_l1_loss(
                  t_bbox, as_torch(bbox_targets), reduction="none", beta=1.0)).sum() / len(rois))
    t_loss.backward()

    assert_close(cls_score, t_cls)
    assert_close(bbox_pred, t_bbox)
    assert_close(loss, t_loss)
    grads = model.grads()
    assert sorted(grads) == sorted(k for k, t in leaves.items() if t.requires_grad)
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, to_numpy(leaves[name].grad), rtol=1e-9, atol=1e-12, err_msg=name)


def test_dropout_is_identity_at_test_time(rng):
    model = tiny_model()
    images, rois = rng.standard_normal((1, 3, 32, 32)), random_rois(rng, 5, 1, 32, 32)
    first = model.forward(images, rois)
    second = model.forward(images, rois)
    np.testing.assert_array_equal(first[0], second[0])
    trained = model.train().forward(images, rois)
    assert not np.allclose(trained[0], first[0])


def test_state_dict_round_trip_reproduces_outputs(rng):
    source, target = tiny_model(seed=1), tiny_model(seed=2)
    images, rois = rng.standard_normal((1, 3, 32, 48)), random_rois(rng, 6, 1, 32, 48)
    params_before = target.trainable_params()
    assert target.load_state_dict(source.state_dict()) == []
    for name, value in target.state_dict().items():
        np.testing.assert_array_equal(value, source.state_dict()[name])
    for a, b in zip(source.forward(images, rois), target.forward(images, rois)):
        np.testing.assert_array_equal(a, b)
    after = target.trainable_params()       # the same arrays: an optimiser keeps working on them
    assert all(after[k] is params_before[k] for k in after)
    state = source.state_dict()
    state["fc6.weight"][...] = 0              # state_dict hands out copies
    assert source.params()["fc6.weight"].any()


def test_load_state_dict_error_names_every_bad_key():
    model = tiny_model()
    state = model.state_dict()
    del state["conv2_1.bias"]
    state["fc8.weight"] = np.zeros((3, 3))
    state["fc7.weight"] = np.zeros((5, 5))
    with pytest.raises(KeyError) as err:
        model.load_state_dict(state)
    message = str(err.value)
    assert "conv2_1.bias" in message and "fc8.weight" in message
    assert "fc7.weight: (5, 5) given, (16, 16) expected" in message


def test_imagenet_weights_load_non_strict_and_report_the_heads(rng):
    model = tiny_model()
    backbone_and_fcs = {k: v for k, v in tiny_model(seed=5).state_dict().items()
                        if not k.startswith(("cls_score", "bbox_pred"))}
    with pytest.raises(KeyError, match="cls_score.weight"):
        model.load_state_dict(backbone_and_fcs)
    heads_before = {k: v for k, v in model.state_dict().items() if k.startswith(("cls_score", "bbox_pred"))}
    missing = model.load_state_dict(backbone_and_fcs, strict=False)
    assert missing == ["bbox_pred.bias", "bbox_pred.weight", "cls_score.bias", "cls_score.weight"]
    state = model.state_dict()
    for key, value in heads_before.items():
        np.testing.assert_array_equal(state[key], value)
    np.testing.assert_array_equal(state["fc6.weight"], backbone_and_fcs["fc6.weight"])


def test_float32_model_casts_loaded_arrays():
    model = FastRCNN.small(3)
    state = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert all(v.dtype == np.float32 for v in model.params().values())


def test_small_preset_is_narrow_and_fully_trained():
    model = FastRCNN.small(4)
    assert vgg16_channels(model.width) == (16, 32, 64, 128, 128)
    assert [n for n, _ in model.named_layers() if n.startswith("conv")] == ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
    assert model.fc_dim == 256 and model.trainable_from == "conv1_1"
    assert sorted(model.trainable_params()) == sorted(model.params())
    rebuilt = FastRCNN(**model.config)
    assert sorted(rebuilt.trainable_params()) == sorted(model.trainable_params())


def test_score_and_decode_decodes_and_clips_a_hand_computed_box():
    model = FastRCNN(num_classes=2, width=1 / 32, fc_dim=8, dtype=np.float64)
    model.cls_score.params["weight"][...] = 0
    model.cls_score.params["bias"][...] = [0, np.log(3)]           # softmax -> (0.25, 0.75)
    model.bbox_pred.params["weight"][...] = 0
    model.bbox_pred.params["bias"][...] = [0, 0, 0, 0, 0.1, 0.2, np.log(2), 0]
    proposals = np.array([[10, 20, 29, 39]], np.float64)   # w = h = 20, centre (20, 30)
    scores, boxes = score_and_decode(model, np.zeros((1, 3, 40, 40)), proposals, [1.0], (40, 40))
    np.testing.assert_allclose(scores, [[0.25, 0.75]])
    # class 0: the RoI itself; class 1: centre (22, 34), size 40x20 -> (2, 24, 41, 43), clipped to 39
    np.testing.assert_allclose(boxes, [[10, 20, 29, 39, 2, 24, 39, 39]], atol=1e-12)


def test_dedup_gives_the_same_scores_and_boxes(rng):
    model = tiny_model()
    base = random_rois(rng, 20, 1, 64, 96)
    jitter = np.concatenate([np.zeros((60, 1)), rng.uniform(-3, 3, (60, 4))], axis=1)
    rois = np.concatenate([base, base[rng.integers(0, 20, 60)] + jitter])
    rois[:, 1:] = np.clip(rois[:, 1:], 0, 63)
    unique, inverse = unique_pooled_rois(rois, model.roi_pool, np.float64)
    assert len(unique) < len(rois)
    images = rng.standard_normal((1, 3, 64, 96))
    scores, boxes = score_and_decode(model, images, rois[:, 1:], [1.0], (64, 96), dedup=False)
    scores_dedup, boxes_dedup = score_and_decode(model, images, rois[:, 1:], [1.0], (64, 96), dedup=True)
    np.testing.assert_allclose(scores_dedup, scores, rtol=1e-12, atol=1e-15)   # the same pooled cells
    np.testing.assert_allclose(boxes_dedup, boxes, rtol=0, atol=1e-9)


def test_unique_pooled_rois_rounds_halves_away_from_zero():
    # x1 = 8 and 24 scale to 0.5 and 1.5: C rounds both up (1, 2), np.round would give 0 and 2
    rois = np.array([[0, 8, 0, 40, 40], [0, 16, 0, 40, 40], [0, 24, 0, 40, 40], [0, 32, 0, 40, 40]], np.float32)
    unique, inverse = unique_pooled_rois(rois, RoIPool(), np.float32)
    assert inverse[0] == inverse[1] and inverse[2] == inverse[3] and inverse[0] != inverse[2]


def test_fold_bbox_normalization_predicts_raw_deltas(rng):
    model = tiny_model()
    state = model.state_dict()
    state["bbox_pred.bias"] = rng.standard_normal(12)
    means, stds = (0.1, -0.2, 0.0, 0.3), (0.1, 0.1, 0.2, 0.2)
    folded = fold_bbox_normalization(state, means, stds)
    x = rng.standard_normal((5, 16))
    normalised = x @ state["bbox_pred.weight"].T + state["bbox_pred.bias"]
    raw = x @ folded["bbox_pred.weight"].T + folded["bbox_pred.bias"]
    np.testing.assert_allclose(raw, normalised * np.tile(stds, 3) + np.tile(means, 3), rtol=1e-12)
    assert folded["fc6.weight"] is state["fc6.weight"]
    with pytest.raises(ValueError, match="stds"):
        fold_bbox_normalization(state, means, (1, 2, 3))


def test_unfold_bbox_normalization_inverts_the_fold(rng):
    state = tiny_model().state_dict()
    state["bbox_pred.bias"] = rng.standard_normal(12).astype(np.float32)
    means, stds = (0.1, -0.2, 0.0, 0.3), (0.1, 0.1, 0.2, 0.2)
    back = unfold_bbox_normalization(fold_bbox_normalization(state, means, stds), means, stds)
    for name in ("bbox_pred.weight", "bbox_pred.bias"):
        np.testing.assert_allclose(back[name], state[name], rtol=1e-6, atol=1e-7)


def test_cpu_move_is_a_no_op_and_gpu_needs_cupy(rng):
    model = tiny_model()
    images, rois = rng.standard_normal((1, 3, 32, 32)), random_rois(rng, 3, 1, 32, 32)
    before = model.forward(images, rois)[0]
    np.testing.assert_array_equal(model.to("cpu").forward(images, rois)[0], before)
    if not gpu_available():
        with pytest.raises(RuntimeError, match="CuPy"):
            model.to("gpu")


def test_unique_pooled_rois_groups_exactly_the_rois_with_identical_pooled_outputs(rng):
    from minidet.ops.roi_pool import roi_pool

    base = random_rois(rng, 30, 2, 96, 128)
    rois = np.concatenate([base, base + np.concatenate([np.zeros((30, 1)), rng.uniform(-6, 6, (30, 4))], axis=1)])
    rois[:, 1::2] = np.clip(rois[:, 1::2], 0, 119)     # corners round into the 6x8 map: no RoI is empty
    rois[:, 2::2] = np.clip(rois[:, 2::2], 0, 87)
    unique, inverse = unique_pooled_rois(rois, RoIPool(), np.float32)
    x = rng.standard_normal((2, 3, 6, 8)).astype(np.float32)       # 96x128 at stride 16
    y, _ = roi_pool(x, rois.astype(np.float32), (7, 7), 1 / 16)
    for i in range(len(rois)):                                       # brute force over all pairs
        for j in range(len(rois)):
            assert (inverse[i] == inverse[j]) == bool(np.array_equal(y[i], y[j])), (i, j)
    assert len(unique) == len(set(inverse.tolist()))


def test_conv4_3_model_pools_from_the_stride_8_map_and_drops_conv5(rng):
    model = FastRCNN(num_classes=3, width=1 / 32, fc_dim=16, roi_layer="conv4_3", dtype=np.float64)
    names = [name for name, _ in model.named_layers()]
    assert "conv5_1" not in names and "pool4" not in names and names[names.index("roi_pool5") - 1] == "relu4_3"
    assert model.roi_pool.spatial_scale == 1 / 8
    assert model.trunk.forward(np.zeros((1, 3, 64, 96))).shape == (1, 16, 8, 12)
    assert model.state_dict()["fc6.weight"].shape == (16, 16 * 49)
    rebuilt = FastRCNN(**model.config)
    assert rebuilt.roi_layer == "conv4_3" and [n for n, _ in rebuilt.named_layers()] == names


def test_conv4_3_small_model_gradient_matches_finite_differences(rng):
    model = FastRCNN.small(3, width=1 / 16, fc_dim=16, roi_layer="conv4_3", dtype=np.float64, dropout=0.0)
    perturb_biases(model, rng)
    images, rois = rng.standard_normal((2, 3, 32, 48)), random_rois(rng, 6, 2, 32, 48)
    targets = training_targets(rng, len(rois), model.num_classes)

    def loss_value():
        return float(fast_rcnn_loss(*model.train().forward(images, rois), *targets)[0])

    _, dcls, dbbox = fast_rcnn_loss(*model.train().forward(images, rois), *targets)
    model.backward(dcls, dbbox)
    grads = {k: v.copy() for k, v in model.grads().items()}
    errors = directional_errors(model.trainable_params(), grads, loss_value, rng)
    assert max(errors.values()) < 1e-6, errors


def test_roialign_model_trains_and_dedups_only_identical_rois(rng):
    model = FastRCNN.small(3, width=1 / 16, fc_dim=16, roi_op="align", dtype=np.float64, dropout=0.0)
    perturb_biases(model, rng)
    images, rois = rng.standard_normal((1, 3, 48, 64)), random_rois(rng, 8, 1, 48, 64)
    rois = np.concatenate([rois, rois[:3], rois[:2] + [0, 0.5, 0, 0, 0]])     # 3 exact repeats, 2 shifted
    unique, inverse = unique_pooled_rois(rois, model.roi_pool, np.float64)
    assert len(unique) == 10 and list(inverse[8:11]) == list(inverse[:3])
    scores, boxes = score_and_decode(model, images, rois[:, 1:], [1.0], (48, 64), dedup=False)
    scores_dedup, boxes_dedup = score_and_decode(model, images, rois[:, 1:], [1.0], (48, 64), dedup=True)
    np.testing.assert_array_equal(scores_dedup, scores)
    targets = training_targets(rng, len(rois), model.num_classes)

    def loss_value():
        return float(fast_rcnn_loss(*model.train().forward(images, rois), *targets)[0])

    _, dcls, dbbox = fast_rcnn_loss(*model.train().forward(images, rois), *targets)
    model.backward(dcls, dbbox)
    grads = {k: v.copy() for k, v in model.grads().items()}
    errors = directional_errors(model.trainable_params(), grads, loss_value, rng)
    assert max(errors.values()) < 1e-6, errors
