"""The exact identity of minidet.study.conflicts against the ops themselves, a hand-made case, and a
small run of the study on the synthetic set."""
import json
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidet.ops.roi_align import roi_align
from minidet.ops.roi_pool import roi_pool
from minidet.study.conflicts import (ALIGN_SETTINGS, align_keys, conflicting_pair, feature_size, identity_groups,
                                     main, pool_keys, roi_keys, run_conflict_study)


def groups_of(keys):
    return identity_groups(keys, np.zeros(len(keys), np.int64))[0]


def output_groups(outputs):
    """Group ids of the RoIs whose outputs (R, ...) are equal element for element (on every given map)."""
    rows = np.concatenate([o.reshape(len(o), -1) for o in outputs], axis=1)
    return np.unique(np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))),
                     return_inverse=True)[1].reshape(-1)


def same_partition(a, b):
    return np.array_equal(a[:, None] == a[None, :], b[:, None] == b[None, :])


@st.composite
def one_image_rois(draw, dtype=None):
    """(rois (R, 5), map size, dtype): clusters of nearly equal boxes (shifted by fractions of a cell,
    so that some round together and some do not), exact copies, and boxes across and beyond the border."""
    dtype = dtype or draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    height, width = draw(st.integers(3, 14)), draw(st.integers(3, 14))
    stride = draw(st.sampled_from([8, 16]))
    centres = rng.uniform(-0.2, 1.2, (draw(st.integers(1, 5)), 2)) * [width * stride, height * stride]
    sizes = rng.uniform(0.5, 6, (len(centres), 2)) * stride
    pick = rng.integers(0, len(centres), draw(st.integers(2, 30)))
    jitter = rng.choice([0, 0.25, 0.5, 1, 2, 5], (len(pick), 4)) * rng.choice([-1, 1], (len(pick), 4))
    boxes = np.concatenate([centres[pick] - sizes[pick] / 2, centres[pick] + sizes[pick] / 2], axis=1) + jitter
    boxes = np.concatenate([boxes, boxes[: len(boxes) // 4]])              # exact copies
    rois = np.concatenate([np.zeros((len(boxes), 1)), boxes], axis=1).astype(dtype)
    return rois, (height, width), 1 / stride, dtype


@given(one_image_rois())
def test_pool_keys_are_equal_exactly_when_roi_pool_gives_equal_outputs(case):
    rois, (height, width), scale, dtype = case
    keys = pool_keys(rois, scale, (height, width), (7, 7), dtype)
    # one random map with 16 channels: equal outputs on it <=> equal bins (16 chances to see a difference)
    x = np.random.default_rng(0).standard_normal((1, 16, height, width)).astype(dtype)
    y, argmax = roi_pool(x, rois, (7, 7), scale)
    assert same_partition(groups_of(keys), output_groups([y, argmax]))


@given(one_image_rois())
def test_align_keys_are_equal_exactly_when_roi_align_gives_equal_outputs(case):
    rois, (height, width), scale, dtype = case
    for settings in (ALIGN_SETTINGS, dict(sampling_ratio=0, aligned=False)):
        keys = align_keys(rois, scale, (height, width), (7, 7), dtype=dtype, **settings)
        x = np.random.default_rng(1).standard_normal((1, 4, height, width)).astype(dtype)
        y = roi_align(x, rois, (7, 7), scale, **settings)
        assert same_partition(groups_of(keys), output_groups([y]))
        # and identical keys stay identical on other maps
        x2 = np.random.default_rng(2).integers(-3, 4, (1, 4, height, width)).astype(dtype)
        y2 = roi_align(x2, rois, (7, 7), scale, **settings)
        group = groups_of(keys)
        for i, j in zip(*np.nonzero(group[:, None] == group[None, :])):
            np.testing.assert_array_equal(y2[i], y2[j])


def test_hand_made_conflicts_at_stride_16():
    # A 40 x 40 map (a 640 x 640 image) at 1/16. Rounded corners (C round, halves away from zero):
    #   a: 0, 0, 100, 100      -> cells 0, 0, 6, 6          label 1
    #   b: 1, 1, 101, 101      -> 0, 0, 6, 6   (= a)        label 0: a conflict with a
    #   c: = a                                               label 1: identical to a, and to b, whose label differs
    #   d: 200, 200, 300, 300  -> 13, 13, 19, 19 (12.5 -> 13, 18.75 -> 19)   label 2
    #   e: 207, 207, 303, 303  -> 13, 13, 19, 19 (= d)      label 2: identical, same label: no conflict
    #   f: 199, 199, 300, 300  -> 12, 12, 19, 19            label 0: its own input
    rois = np.array([[0, 0, 0, 100, 100], [0, 1, 1, 101, 101], [0, 0, 0, 100, 100],
                     [0, 200, 200, 300, 300], [0, 207, 207, 303, 303], [0, 199, 199, 300, 300]], np.float32)
    labels = np.array([1, 0, 1, 2, 2, 0])
    group, identical, conflict = identity_groups(roi_keys(rois, "pool", "conv5_3", (40, 40)), labels)
    assert identical.tolist() == [True, True, True, True, True, False]
    assert conflict.tolist() == [True, True, True, False, False, False]
    assert conflicting_pair(group, conflict, labels) == (0, 1)
    # RoIAlign reads different points for all of them, except the exact copy c of a, whose label is a's
    group, identical, conflict = identity_groups(roi_keys(rois, "align", "conv5_3", (40, 40)), labels)
    assert identical.tolist() == [True, False, True, False, False, False] and not conflict.any()
    assert conflicting_pair(group, conflict, labels) is None
    # two RoIs wholly beyond the map read nothing, hence the same: a conflict for both ops
    beyond = np.array([[0, 700, 0, 800, 100], [0, 650, 650, 700, 700], [0, 0, 0, 100, 100]], np.float32)
    for op in ("pool", "align"):
        _, identical, conflict = identity_groups(roi_keys(beyond, op, "conv5_3", (40, 40)), [0, 3, 3])
        assert conflict.tolist() == [True, True, False] and identical.tolist() == [True, True, False]


def test_feature_sizes_are_vgg16s_with_ceil_mode_pools():
    assert feature_size(600, 1000, "conv5_3") == (38, 63)
    assert feature_size(600, 1000, "conv4_3") == (75, 125)
    assert feature_size(224, 299, "conv5_3") == (14, 19)


def test_study_on_the_synthetic_set_measures_real_batches(tmp_path):
    from minidet.data.synthetic import write_synthetic_voc

    root = tmp_path / "synthetic"
    write_synthetic_voc(str(root), num_trainval=6, num_test=2)
    result = run_conflict_study(str(root), "trainval", scales=(224, 480), images=4, seed=1,
                                proposals_dir=str(tmp_path / "cache"), proposal_mode="single", workers=1,
                                progress=False)
    assert len(result["rows"]) == 2 * 2 * 2 and result["images"] == 4
    # each chosen image plain and flipped, but for those with only difficult objects (left out of training)
    from minidet.data.voc import VOCDataset

    dataset = VOCDataset(str(root), "trainval")
    chosen = np.sort(np.random.default_rng(1).choice(len(dataset), 4, replace=False))
    usable = sum(bool((~dataset.annotation(int(i))["difficult"]).any()) for i in chosen)
    for row in result["rows"]:
        assert row["images"] == 2 * usable and 0 < row["rois"] <= 2 * usable * 64
        assert 0 <= row["conflict"] <= row["identical"] <= 1
    # the same RoIs at every scale: the same counts
    assert len({row["rois"] for row in result["rows"]}) == 1
    exit_code = main(["--data-dir", str(root), "--images", "4", "--scales", "224", "--roi-op", "pool",
                      "--roi-layer", "conv5_3", "--proposals-dir", str(tmp_path / "cache"), "--proposal-mode", "single",
                      "--workers", "1",
                      "--out", str(tmp_path / "out")])
    assert exit_code == 0
    saved = json.loads((tmp_path / "out" / "conflicts.json").read_text())
    assert [(r["roi_op"], r["roi_layer"], r["scale"]) for r in saved["rows"]] == [("pool", "conv5_3", 224)]
    assert os.path.getsize(tmp_path / "out" / "conflicts.png") > 1000


def test_study_command_explains_a_missing_folder(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data-dir", str(tmp_path), "--scales", "a,b"])
