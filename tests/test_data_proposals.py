"""Selective search, its setups (against OpenCV's own modes), and the per-image proposal cache (hit, miss,
interrupted, corrupt)."""
import os
import threading

import cv2
import numpy as np
import pytest

from minidet.data import proposals as P
from minidet.data.proposals import (MODES, SearchSetup, clean_boxes, filter_small_boxes, load_proposals,
                                    selective_search, unique_boxes)
from minidet.data.synthetic import render_scene, write_synthetic_voc
from minidet.data.voc import VOCDataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = write_synthetic_voc(tmp_path_factory.mktemp("data") / "syn", num_trainval=3, num_test=1,
                               image_size=(72, 96))
    return VOCDataset(root, "trainval")


@pytest.fixture
def counted(monkeypatch):
    """Count selective_search calls made in this process (workers=1)."""
    calls = []
    real = P.selective_search

    def counting(image, *args, **kwargs):
        calls.append(image.shape)
        return real(image, *args, **kwargs)

    monkeypatch.setattr(P, "selective_search", counting)
    return calls


def test_selective_search_boxes_lie_inside_the_image_without_duplicates():
    image, *_ = render_scene(np.random.default_rng(1), (90, 120))
    for mode in ("fast", "compact", "single"):
        boxes = selective_search(image, mode=mode)
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 10
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= 119).all() and (boxes[:, 3] <= 89).all()
        assert (boxes[:, 2] - boxes[:, 0] + 1 >= 2).all() and (boxes[:, 3] - boxes[:, 1] + 1 >= 2).all()
        assert len(np.unique(boxes, axis=0)) == len(boxes)


def test_selective_search_is_repeatable_and_respects_max_boxes():
    image, *_ = render_scene(np.random.default_rng(2), (90, 120))
    a, b = selective_search(image, mode="fast"), selective_search(image, mode="fast")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(selective_search(image, max_boxes=7, mode="fast"), a[:7])


def test_large_image_is_searched_smaller_and_boxes_scaled_back():
    image, *_ = render_scene(np.random.default_rng(3), (150, 200))
    boxes = selective_search(image, mode="single", max_side=100)
    assert (boxes[:, 2] <= 199).all() and (boxes[:, 3] <= 149).all() and boxes[:, 2].max() >= 190
    with pytest.raises(ValueError, match="mode"):
        selective_search(image, mode="slow")


@pytest.mark.parametrize("mode, switch", [("fast", "switchToSelectiveSearchFast"),
                                          ("quality", "switchToSelectiveSearchQuality"),
                                          ("single", "switchToSingleStrategy")])
def test_named_setups_are_opencvs_own_modes(mode, switch, monkeypatch):
    # The setups spell out what OpenCV's switchTo* functions build; the boxes must agree to the last one.
    image, *_ = render_scene(np.random.default_rng(4), (60, 80))
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(image)
    getattr(ss, switch)()
    P._seed_c_rand()
    rects = np.asarray(ss.process(), np.float32).reshape(-1, 4)
    expected = clean_boxes(np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:] - 1], axis=1), 2)
    setup = MODES[mode]
    if mode == "quality":
        # OpenCV splits the BGR image into the Mats that hold the hue channel it has just added, so
        # its quality mode segments the blue channel where Uijlings et al.'s segments the hue.
        from minidet.data import search_setups

        monkeypatch.setitem(search_setups.COLOUR_SPACES, "blue", lambda bgr: np.ascontiguousarray(bgr[:, :, 0]))
        setup = SearchSetup(tuple("blue" if s == "hue" else s for s in setup.spaces), setup.ks, setup.strategies)
        assert len(selective_search(image, None, mode)) != len(expected)
    np.testing.assert_array_equal(selective_search(image, max_boxes=None, mode=setup), expected)


def test_a_setup_can_be_passed_directly_and_is_checked():
    image, *_ = render_scene(np.random.default_rng(5), (60, 80))
    np.testing.assert_array_equal(selective_search(image, mode=SearchSetup(("hsv",), (200,), ("cfts",))),
                                  selective_search(image, mode="single"))
    assert SearchSetup(["hsv"], [200], ["cfts"]) == MODES["single"]        # lists from JSON compare equal
    for bad in [dict(spaces=("rgb",)), dict(strategies=("cx",)), dict(strategies=("cc",)), dict(ks=())]:
        with pytest.raises(ValueError, match="SearchSetup needs"):
            SearchSetup(**{**dict(spaces=("hsv",), ks=(200,), strategies=("cfts",)), **bad})


def test_cache_key_holds_the_setup_so_a_changed_mode_is_recomputed(dataset, tmp_path):
    same = P._settings(2000, SearchSetup(("hsv",), (200,), ("cfts",)), 2, 500)
    other = P._settings(2000, SearchSetup(("hsv",), (201,), ("cfts",)), 2, 500)
    named = P._settings(2000, "single", 2, 500)
    path = lambda s: P.cache_path(str(tmp_path), dataset.ids[0], dataset.image_path(0), s)  # noqa: E731
    assert named["setup"] == same["setup"] and path(named) != path(other)
    assert P._settings(None, "fast", 2, None)["max_boxes"] is None


def test_unique_and_small_box_filters_keep_order():
    boxes = np.array([[5, 5, 9, 9], [0, 0, 0, 7], [5, 5, 9, 9], [1, 1, 3, 3], [0, 0, 0, 7]], np.float32)
    np.testing.assert_array_equal(unique_boxes(boxes), [0, 1, 3])
    np.testing.assert_array_equal(filter_small_boxes(boxes, 2), [0, 2, 3])     # [0,0,0,7] is 1 pixel wide
    np.testing.assert_array_equal(clean_boxes(boxes, 2), [[5, 5, 9, 9], [1, 1, 3, 3]])
    np.testing.assert_array_equal(clean_boxes(boxes, 4), [[5, 5, 9, 9]])


def test_cache_hit_computes_nothing(dataset, tmp_path, counted):
    first = load_proposals(dataset, tmp_path, workers=1, mode="single", progress=False)
    assert len(counted) == 3
    second = load_proposals(dataset, tmp_path, workers=1, mode="single", progress=False)
    assert len(counted) == 3
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_cache_miss_on_other_settings_or_changed_image(dataset, tmp_path, counted, tmp_path_factory):
    load_proposals(dataset, tmp_path, workers=1, mode="single", progress=False)
    load_proposals(dataset, tmp_path, workers=1, mode="single", max_boxes=5, progress=False)
    assert len(counted) == 6
    # Same ids, one image changed: only that one is recomputed.
    import shutil
    copy = str(tmp_path_factory.mktemp("copy") / "syn")
    shutil.copytree(dataset.root, copy)
    with open(os.path.join(copy, "JPEGImages", f"{dataset.ids[1]}.jpg"), "ab") as f:
        f.write(b"\0")
    load_proposals(VOCDataset(copy, "trainval"), tmp_path, workers=1, mode="single", progress=False)
    assert len(counted) == 7


def test_leftover_temporary_file_of_an_interrupted_write_is_ignored(dataset, tmp_path, counted):
    settings = P._settings(2000, "single", 2, 500)
    path = P.cache_path(str(tmp_path), dataset.ids[0], dataset.image_path(0), settings)
    with open(path + ".999.tmp", "wb") as f:
        f.write(b"\x93NUMPY half a file")
    boxes = load_proposals(dataset, tmp_path, workers=1, mode="single", progress=False)
    assert len(counted) == 3 and len(boxes[0]) > 0
    np.testing.assert_array_equal(np.load(path), boxes[0])


def test_corrupt_cache_file_is_reported_and_recomputed(dataset, tmp_path, counted):
    good = load_proposals(dataset, tmp_path, workers=1, mode="single", progress=False)
    settings = P._settings(2000, "single", 2, 500)
    path = P.cache_path(str(tmp_path), dataset.ids[2], dataset.image_path(2), settings)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])          # a truncated .npy
    with pytest.warns(UserWarning, match="damaged"):
        again = load_proposals(dataset, tmp_path, workers=1, mode="single", progress=False)
    assert len(counted) == 4
    np.testing.assert_array_equal(again[2], good[2])
    np.testing.assert_array_equal(np.load(path), good[2])


@pytest.mark.parametrize("other_thread", [False, True], ids=["alone", "beside_a_thread"])
def test_worker_processes_give_the_same_boxes(dataset, tmp_path, other_thread):
    # Workers are always spawned: a fork would copy the locks of native thread pools (OpenCV's,
    # OpenMP's) that no Python thread shows, and a worker could wait on them forever.
    release = threading.Event()
    thread = threading.Thread(target=release.wait) if other_thread else None
    if thread:
        thread.start()
    try:
        assert P._pool_context().get_start_method() == "spawn"
        pooled = load_proposals(dataset, tmp_path / "b", workers=2, mode="single", progress=False)
    finally:
        release.set()
    inline = load_proposals(dataset, tmp_path / "a", workers=1, mode="single", progress=False)
    for a, b in zip(inline, pooled):
        np.testing.assert_array_equal(a, b)


def test_command_line_reports_counts_and_recall(dataset, tmp_path, capsys):
    assert P.main(["--data-dir", dataset.root, "--split", "trainval", "--cache-dir", str(tmp_path),
                   "--workers", "1", "--mode", "single"]) == 0
    out = capsys.readouterr().out
    assert "proposals/image" in out and "seconds/image" in out and "recall" in out
    assert P.main(["--data-dir", str(tmp_path / "nowhere"), "--workers", "1"]) == 2
    assert "split file is missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        P.main(["--help"])
    assert e.value.code == 0


def test_proposal_mode_of_the_synthetic_set_finds_its_objects(tmp_path):
    from minidet.boxes import bbox_overlaps
    from minidet.data.synthetic import PROPOSAL_MODE

    root = write_synthetic_voc(tmp_path / "syn", num_trainval=1, num_test=8)
    test = VOCDataset(root, "test")
    found = total = 0
    for i in range(len(test)):
        a = test.annotation(i)
        gt = a["boxes"][~a["difficult"]]
        boxes = selective_search(test.load_image(i), mode=PROPOSAL_MODE)
        assert len(boxes) < 600
        if len(gt):
            found += int((bbox_overlaps(gt, boxes).max(axis=1) >= 0.5).sum())
            total += len(gt)
    assert found >= 0.9 * total


def test_fine_mode_finds_the_touching_cells_of_real_microscopy_that_fast_merges(shared_data):
    # BCCD's red cells touch one another: fast's coarse initial regions merge them (docs/PROPOSALS.md).
    from minidet.data.dataset import DatasetSubset
    from minidet.data.recall import NO_HIT, dataset_boxes_needed

    bccd = VOCDataset(os.path.join(shared_data, "BCCD"), "test", ("RBC", "WBC", "Platelets"))
    images = DatasetSubset(bccd, range(3))
    found = {}
    for mode in ("fast", "fine"):
        proposals = [selective_search(bccd.load_image(i), max_boxes=2000, mode=mode) for i in range(3)]
        needed, _, _ = dataset_boxes_needed(proposals, images, (0.5,))
        found[mode] = float(np.mean(needed[0] != NO_HIT))
    assert found["fine"] >= 0.95 and found["fast"] < 0.85    # measured: 0.98 and 0.77 of 53 boxes
