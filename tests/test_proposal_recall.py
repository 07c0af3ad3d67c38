"""Proposal recall against boxes per image: the vectorised count against a brute-force loop, and the command."""
import json
import os

import numpy as np
import pytest

from minidet.data.dataset import DatasetSubset
from minidet.data.recall import (NO_HIT, best_mode, boxes_needed, choose_mode, dataset_boxes_needed,
                                 proposal_recall, recall_table)


def iou_by_hand(a, b):
    """IoU of two pixel-inclusive boxes, one at a time."""
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(w, 0) * max(h, 0)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def needed_by_loop(gt, proposals, thresh):
    """The smallest k whose top-k proposals hold a box with IoU >= thresh, by trying k = 1, 2, ..."""
    out = []
    for g in gt:
        k_found = NO_HIT
        for k in range(1, len(proposals) + 1):
            if any(iou_by_hand(g, p) >= thresh for p in proposals[:k]):
                k_found = k
                break
        out.append(k_found)
    return out


def random_boxes(rng, n, size=60):
    xy = rng.integers(0, size - 5, (n, 2))
    wh = rng.integers(2, 30, (n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, size - 1)], axis=1).astype(np.float32)


@pytest.mark.parametrize("seed", range(5))
def test_boxes_needed_matches_a_brute_force_loop(seed):
    rng = np.random.default_rng(seed)
    gt = random_boxes(rng, 6)
    # Proposals: near copies of some ground-truth boxes among random ones, so that hits happen at many ranks.
    near = gt[rng.integers(0, len(gt), 8)] + rng.integers(-3, 4, (8, 4))
    proposals = np.concatenate([random_boxes(rng, 30), near])[rng.permutation(38)]
    proposals = np.sort(proposals.reshape(-1, 2, 2), axis=1).reshape(-1, 4)   # keep x1 <= x2, y1 <= y2
    needed = boxes_needed(gt, proposals, (0.3, 0.5, 0.7))
    assert needed.shape == (3, 6) and needed.dtype == np.int64
    for t, thresh in enumerate((0.3, 0.5, 0.7)):
        assert needed[t].tolist() == needed_by_loop(gt.tolist(), proposals.tolist(), thresh)


def test_boxes_needed_counts_an_exact_half_overlap_as_found():
    gt = np.array([[0, 0, 9, 9]], np.float32)                       # 10 x 10
    proposals = np.array([[50, 50, 60, 60], [0, 0, 9, 4], [0, 0, 9, 9]], np.float32)   # none, IoU 0.5, IoU 1
    np.testing.assert_array_equal(boxes_needed(gt, proposals, (0.5, 0.7)), [[2], [3]])
    np.testing.assert_array_equal(boxes_needed(gt, proposals[:1], (0.5,)), [[NO_HIT]])
    np.testing.assert_array_equal(boxes_needed(gt, np.zeros((0, 4)), (0.5,)), [[NO_HIT]])
    assert boxes_needed(np.zeros((0, 4)), proposals, (0.5,)).shape == (1, 0)


def test_recall_table_counts_per_class_and_budget():
    # Five boxes of two classes, found after 1, 3, never | 2, 10 proposals.
    needed = np.array([[1, 3, NO_HIT, 2, 10]])
    labels = np.array([1, 1, 1, 2, 2])
    table = recall_table(needed, labels, ("a", "b"), (0.5,), (1, 2, 5, None))["0.5"]
    assert table["a"] == {"1": 1 / 3, "2": 1 / 3, "5": 2 / 3, "all": 2 / 3}
    assert table["b"] == {"1": 0.0, "2": 0.5, "5": 0.5, "all": 1.0}
    assert table["all"] == {"1": 0.2, "2": 0.4, "5": 0.6, "all": 0.8}
    empty = recall_table(needed, labels, ("a", "b", "c"), (0.5,), (1,))["0.5"]["c"]["1"]
    assert empty != empty      # a class without boxes: NaN


class TwoImages:
    """A data set of two annotated images, without pixels."""
    ids = ["p", "q"]
    class_names = ("a", "b")

    def __len__(self):
        return 2

    def annotation(self, i):
        boxes = [np.array([[0, 0, 9, 9], [20, 20, 29, 29]], np.float32), np.array([[5, 5, 14, 14]], np.float32)][i]
        labels = [np.array([1, 2]), np.array([2])][i]
        difficult = [np.array([False, True]), np.array([False])][i]
        return dict(id=self.ids[i], boxes=boxes, labels=labels, difficult=difficult)


def test_dataset_recall_leaves_difficult_boxes_out_unless_asked():
    proposals = [np.array([[0, 0, 9, 9]], np.float32), np.array([[40, 40, 50, 50]], np.float32)]
    needed, labels, best = dataset_boxes_needed(proposals, TwoImages(), (0.5,))
    np.testing.assert_array_equal(needed, [[1, NO_HIT]])
    np.testing.assert_array_equal(labels, [1, 2])
    np.testing.assert_allclose(best, [1.0, 0.0])
    assert proposal_recall(proposals, TwoImages()) == 0.5
    assert proposal_recall(proposals, TwoImages(), use_difficult=True) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="1 proposal sets for 2 images"):
        dataset_boxes_needed(proposals[:1], TwoImages())


def test_recall_command_writes_table_json_and_plot(tmp_path, capsys):
    from minidet.data import proposals as P
    from minidet.data.synthetic import write_synthetic_voc

    root = write_synthetic_voc(tmp_path / "syn", num_trainval=1, num_test=3, image_size=(72, 96))
    out = tmp_path / "recall"
    assert P.main(["--recall", "--data-dir", root, "--split", "test", "--cache-dir", str(tmp_path / "cache"),
                   "--workers", "1", "--modes", "single,compact", "--limit", "2", "--budgets", "5,50,all",
                   "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "recall at IoU 0.5" in text and "recall at IoU 0.7" in text and "compact" in text
    report = json.load(open(out / "recall.json"))
    assert report["images"] == 2 and set(report["modes"]) == {"single", "compact"}
    single = report["modes"]["single"]
    assert set(single["recall"]["0.5"]["all"]) == {"5", "50", "all"}
    assert single["recall"]["0.5"]["all"]["5"] <= single["recall"]["0.5"]["all"]["all"]
    assert single["seconds_per_image"] > 0 and single["boxes_per_image"] > 5
    assert os.path.getsize(out / "recall.png") > 1000
    # Everything now comes from the cache: no time to report, the same figures.
    assert P.main(["--recall", "--data-dir", root, "--split", "test", "--cache-dir", str(tmp_path / "cache"),
                   "--workers", "1", "--modes", "single", "--limit", "2", "--budgets", "5,50,all"]) == 0
    first_row = capsys.readouterr().out.split("\n")[3].split()
    assert first_row[:4] == ["single", "all", f"{single['boxes_per_image']:.0f}", "-"]


def test_recall_command_refuses_unknown_modes_and_has_help(tmp_path, capsys):
    from minidet.data import proposals as P

    with pytest.raises(SystemExit) as e:
        P.main(["--recall", "--data-dir", str(tmp_path), "--modes", "slow"])
    assert e.value.code == 2 and "unknown ['slow']" in capsys.readouterr().err
    assert P.main(["--recall", "--data-dir", str(tmp_path / "nowhere"), "--modes", "single"]) == 2
    assert "split file is missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        P.main(["--recall", "--help"])
    assert e.value.code == 0 and "--budgets" in capsys.readouterr().out


def results_of(objects=(20, 20), **modes):
    """measure_modes-like results: per mode, (recall of class a, of class b) at 0.5 within 2000 boxes, boxes/image."""
    return {mode: dict(recall={"0.5": {"all": {"2000": (a + b) / 2}, "a": {"2000": a}, "b": {"2000": b}}},
                       boxes_per_image=n, objects=dict(zip("ab", objects)))
            for mode, (a, b, n) in modes.items()}


def test_best_mode_goes_by_the_worst_found_class_then_by_fewer_boxes():
    assert best_mode(results_of(fast=(1.0, 0.84, 900), fine=(0.98, 0.97, 4500))) == "fine"
    assert best_mode(results_of(fine=(1.0, 0.97, 4500), fast=(0.99, 0.96, 900))) == "fast"   # within the margin
    assert best_mode(results_of(fine=(1.0, 0.97, 4500), fast=(0.99, 0.96, 900)), margin=0.0) == "fine"
    # Class b has too few boxes in the sample to decide: a does; with neither, all boxes together.
    assert best_mode(results_of((20, 3), fast=(0.99, 0.5, 900), fine=(0.96, 1.0, 4500))) == "fast"
    assert best_mode(results_of((2, 3), fast=(0.99, 0.5, 900), fine=(0.96, 1.0, 4500))) == "fine"


def test_choose_mode_measures_a_spread_sample_and_caches_its_boxes_for_training(tmp_path):
    from minidet.data.proposals import load_proposals
    from minidet.data.synthetic import write_synthetic_voc
    from minidet.data.voc import VOCDataset

    dataset = VOCDataset(write_synthetic_voc(tmp_path / "syn", num_trainval=5, num_test=1, image_size=(72, 96)))
    sample = DatasetSubset.spread(dataset, 3)
    assert sample.ids == [dataset.ids[i] for i in (0, 2, 4)]
    np.testing.assert_array_equal(sample.annotation(1)["boxes"], dataset.annotation(2)["boxes"])
    mode, results = choose_mode(dataset, tmp_path / "cache", ("single", "compact"), budget=300, sample=3,
                                workers=1, progress=False)
    assert mode == best_mode(results, 300) and set(results) == {"single", "compact"}
    stats = {}
    load_proposals(sample, tmp_path / "cache", workers=1, max_boxes=300, mode=mode, progress=False, stats=stats)
    assert stats["computed"] == 0 and stats["cached"] == 3
