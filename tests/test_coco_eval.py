"""COCO evaluation: minidet's coco_evaluate against pycocotools' COCOeval run directly on the same files,
and cases worked out by hand for VOC's difficult objects and COCO's crowds."""
import contextlib
import io
import json

import numpy as np
import pytest

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from minidet.coco_eval import STAT_NAMES, coco_evaluate, format_coco_table  # noqa: E402
from minidet.data.coco import COCODataset  # noqa: E402
from minidet.data.voc import VOCDataset  # noqa: E402
from minidet.detections_io import DetectionsError, write_detections  # noqa: E402
from tests.test_data_coco import write_coco  # noqa: E402
from tests.test_data_voc import write_folder  # noqa: E402


def random_set(rng, n_images=6, size=(200, 240)):
    """A COCO ground truth with objects of every area range and some crowds, and detections near and far
    from them, in COCO form as the test writes them itself: (gt dict, results list)."""
    height, width = size
    gt = dict(images=[], annotations=[], categories=[dict(id=4, name="cat"), dict(id=1, name="dog"),
                                                     dict(id=9, name="emu")])
    results = []
    for n in range(n_images):
        gt["images"].append(dict(id=100 + n, file_name=f"{n}.jpg", width=width, height=height))
        for _ in range(rng.integers(1, 6)):
            w, h = (float(v) for v in rng.choice([8, 20, 40, 70, 120, 160], 2))
            x, y = float(rng.integers(0, width - w)), float(rng.integers(0, height - h))
            cat = int(rng.choice([4, 1, 9], p=[0.5, 0.4, 0.1]))
            gt["annotations"].append(dict(id=len(gt["annotations"]) + 1, image_id=100 + n, category_id=cat,
                                          bbox=[x, y, w, h], area=w * h, iscrowd=int(rng.random() < 0.1)))
            for _ in range(rng.integers(0, 3)):
                dx, dy, dw, dh = rng.normal(0, 0.15 * min(w, h), 4).round() / 4
                results.append(dict(image_id=100 + n, category_id=cat if rng.random() < 0.8 else 4,
                                    bbox=[max(x + dx, 0), max(y + dy, 0), max(w + dw, 1), max(h + dh, 1)],
                                    score=float(rng.random())))
        for _ in range(rng.integers(0, 4)):
            w, h = float(rng.integers(4, 100)), float(rng.integers(4, 100))
            results.append(dict(image_id=100 + n, category_id=int(rng.choice([4, 1])),
                                bbox=[float(rng.integers(0, width - w)), float(rng.integers(0, height - h)), w, h],
                                score=float(rng.random())))
    return gt, results


def pycocotools_directly(gt_path, results_path, cat_ids=None):
    """COCOeval on the files, as its own documentation runs it: the twelve stats."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        evaluator = COCOeval(gt, gt.loadRes(results_path), "bbox")
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(s) for s in evaluator.stats]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_evaluate_equals_cocoeval_run_on_the_files(tmp_path, seed):
    gt, results = random_set(np.random.default_rng(seed))
    gt_path, images = write_coco(str(tmp_path), gt)
    results_path = str(tmp_path / "results.json")
    with open(results_path, "w") as f:
        json.dump(results, f)
    expected = pycocotools_directly(gt_path, results_path)
    dataset = COCODataset(gt_path, images)
    # the same detections as minidet holds them: per image, (x1, y1, x2, y2) with x2 = x + w - 1
    index = {image_id: i for i, image_id in enumerate(dataset.ids)}
    label = {c: k + 1 for k, c in enumerate(dataset.category_ids)}
    boxes, labels, scores = ([[] for _ in dataset.ids] for _ in range(3))
    for r in results:
        x, y, w, h = r["bbox"]
        boxes[index[r["image_id"]]].append([x, y, x + w - 1, y + h - 1])
        labels[index[r["image_id"]]].append(label[r["category_id"]])
        scores[index[r["image_id"]]].append(r["score"])
    arrays = ([np.array(b, np.float64).reshape(-1, 4) for b in boxes], [np.array(l) for l in labels],
              [np.array(s) for s in scores])
    for detections in (results_path, arrays):
        out = coco_evaluate(dataset, detections)
        assert out["stats"] == expected
        assert [out[name] for name in STAT_NAMES] == [None if s == -1 else s for s in expected]
        assert list(out["ap_by_class"]) == ["dog", "cat", "emu"]            # category id order: 1, 4, 9
        for name, cat_id in (("dog", 1), ("cat", 4), ("emu", 9)):
            alone = pycocotools_directly(gt_path, results_path, [cat_id])
            assert out["ap_by_class"][name] == (None if alone[0] == -1 else alone[0]), name
            assert out["ap50_by_class"][name] == (None if alone[1] == -1 else alone[1]), name
    assert 0 < out["AP"] < 1 and out["detections"] == len(results) and out["images"] == 6
    assert out["summary"].count("Average Precision") == 6 and out["summary"].count("Average Recall") == 6
    # the ground truth as a dict or a path, the results as a list: the same numbers
    assert coco_evaluate(gt, results)["stats"] == expected
    assert coco_evaluate(gt_path, results)["stats"] == expected


def test_voc_folder_is_scored_as_its_coco_conversion_is_by_cocoeval(tmp_path):
    from minidet.convert import main as convert

    rng = np.random.default_rng(3)
    images = {}
    for n in range(5):
        objects = []
        for _ in range(rng.integers(1, 5)):
            x1, y1 = rng.integers(1, 60, 2)
            w, h = rng.integers(5, 60, 2)
            objects.append((str(rng.choice(["cat", "dog"])), x1, y1, x1 + w, y1 + h, int(rng.random() < 0.25)))
        images[f"im{n}"] = (130, 130, objects)
    root = write_folder(tmp_path / "voc", images)
    dataset = VOCDataset(root)
    boxes, labels, scores = [], [], []
    for i in range(len(dataset)):
        a = dataset.annotation(i)
        jitter = rng.normal(0, 2, a["boxes"].shape).round()
        boxes.append(np.concatenate([a["boxes"] + jitter, [[0, 0, 30, 30]]]).astype(np.float32))
        labels.append(np.concatenate([a["labels"], [1]]))
        scores.append(rng.random(len(a["boxes"]) + 1).astype(np.float32))
    gt_path, results_path = str(tmp_path / "gt.json"), str(tmp_path / "det.json")
    assert convert(["voc2coco", root, "--out", gt_path]) == 0
    write_detections(results_path, dataset, boxes, labels, scores)
    out = coco_evaluate(dataset, (boxes, labels, scores))
    assert out["stats"] == pycocotools_directly(gt_path, results_path)
    assert list(out["ap_by_class"]) == ["cat", "dog"]


def test_detection_of_a_difficult_object_is_neither_counted_nor_penalised(tmp_path):
    # a normal cat (10x10 at 1, 1) and a difficult one far away; detections on both, exact.
    # The difficult one is iscrowd=1: its detection is ignored, so precision stays 1 and AP is 1.
    root = write_folder(tmp_path / "voc", {"a": (100, 100, [("cat", 1, 1, 10, 10, 0), ("cat", 50, 50, 79, 79, 1)])})
    dataset = VOCDataset(root)
    boxes = [np.array([[49, 49, 78, 78], [0, 0, 9, 9]], np.float32)]      # 0-based pixel-inclusive
    out = coco_evaluate(dataset, (boxes, [np.array([1, 1])], [np.array([0.9, 0.8], np.float32)]))
    assert out["AP"] == pytest.approx(1.0) and out["AP50"] == pytest.approx(1.0) and out["AR100"] == 1.0
    # both boxes are small (area < 32^2); dog has no object at all
    assert out["ap_by_class"]["dog"] is None and out["APm"] is None and out["APs"] == pytest.approx(1.0)


def test_detections_inside_a_crowd_are_ignored(tmp_path):
    # one cat (20x20 at 0, 0) and a crowd of cats (100x100 at 100, 100): two small detections inside the
    # crowd (IoU with a crowd = intersection / detection area = 1) are ignored; a stray one is a false positive
    gt = dict(images=[dict(id=1, file_name="a.jpg", width=300, height=300)], categories=[dict(id=1, name="cat")],
              annotations=[dict(id=1, image_id=1, category_id=1, bbox=[0, 0, 20, 20], area=400, iscrowd=0),
                           dict(id=2, image_id=1, category_id=1, bbox=[100, 100, 100, 100], area=1e4, iscrowd=1)])
    inside = [dict(image_id=1, category_id=1, bbox=[110 + 30 * k, 120, 20, 20], score=0.9 - 0.1 * k) for k in range(2)]
    hit = dict(image_id=1, category_id=1, bbox=[0, 0, 20, 20], score=0.5)
    assert coco_evaluate(gt, inside + [hit])["AP"] == pytest.approx(1.0)
    stray = dict(image_id=1, category_id=1, bbox=[250, 250, 20, 20], score=0.95)
    # the stray first: precision 0 at the top, then 1/2 when the cat is found -> recall 1 at precision 1/2
    assert coco_evaluate(gt, [stray, hit])["AP50"] == pytest.approx(0.5)


def test_no_detections_score_zero(tmp_path):
    gt, _ = random_set(np.random.default_rng(0), n_images=2)
    out = coco_evaluate(gt, [])
    assert out["AP"] == 0.0 and out["AR100"] == 0.0 and out["detections"] == 0
    assert all(v in (0.0, None) for v in out["ap_by_class"].values())


def test_detections_of_unknown_images_or_categories_are_named(tmp_path):
    gt, results = random_set(np.random.default_rng(0), n_images=2)
    with pytest.raises(DetectionsError, match=r"detection 1 is of image_id 999"):
        coco_evaluate(gt, [results[0], dict(results[0], image_id=999)])
    with pytest.raises(DetectionsError, match=r"detection 0 has category_id 7; the categories are \[1, 4, 9\]"):
        coco_evaluate(gt, [dict(results[0], category_id=7)])
    with pytest.raises(ValueError, match="need a data set"):
        coco_evaluate(gt, ([], [], []))


def test_table_shows_the_twelve_numbers_and_every_class(tmp_path):
    gt, results = random_set(np.random.default_rng(1))
    out = coco_evaluate(gt, results)
    table = format_coco_table(out)
    assert f"AP @[IoU=0.50:0.95]  {100 * out['AP']:5.1f}" in table
    assert len(table.splitlines()) == 12 + 2 + 3
    for name in ("cat", "dog", "emu"):
        assert any(line.startswith(name) for line in table.splitlines())


def test_results_in_memory_are_checked_like_a_file():
    gt, results = random_set(np.random.default_rng(0), n_images=2)
    with pytest.raises(DetectionsError, match=r"detections: detection 1 is \{'image_id': 100\}, not an object with"):
        coco_evaluate(gt, [results[0], {"image_id": 100}])
    with pytest.raises(DetectionsError, match="a list of detections, not a dict"):
        coco_evaluate(gt, results[0])
