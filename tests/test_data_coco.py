"""The COCO reader on small files written here: the box convention, classes, crowds, and errors that name the entry."""
import copy
import json
import os

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidet.data.coco import COCODataset, box_to_coco, coco_ids, coco_to_box
from minidet.data.voc import AnnotationError, VOCDataset

BASE = {
    "images": [{"id": 7, "file_name": "a.jpg", "width": 60, "height": 40},
               {"id": 3, "file_name": "sub/b.png", "width": 30, "height": 50},
               {"id": 9, "file_name": "c.jpg", "width": 20, "height": 20}],
    "categories": [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}],
    "annotations": [
        {"id": 1, "image_id": 7, "category_id": 2, "bbox": [0, 1, 30, 19], "area": 570, "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 5, "bbox": [9.5, 9, 50.5, 31], "area": 1565.5, "iscrowd": 1},
        {"id": 4, "image_id": 3, "category_id": 5, "bbox": [4, 5, 3, 3], "area": 9, "iscrowd": 0, "difficult": 1},
    ],
}


def write_coco(root, data=BASE, images=True):
    """Write data as ROOT/instances.json and a blank image of the right size per entry; returns (json, images dir)."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "instances.json")
    with open(path, "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
    images_dir = os.path.join(root, "images")
    if images and isinstance(data, dict) and isinstance(data.get("images"), list):
        for image in data["images"]:
            try:
                shape = (int(image["height"]), int(image["width"]), 3)
            except (KeyError, TypeError, ValueError):
                continue                     # a broken entry: the reader fails before it needs the image
            target = os.path.join(images_dir, image["file_name"])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            cv2.imwrite(target, np.full(shape, 90, np.uint8))
    return path, images_dir


@pytest.fixture
def coco(tmp_path):
    return write_coco(str(tmp_path))


def test_box_convention_by_hand():
    # a one-pixel box at (3, 4) covers [3, 4) x [4, 5): COCO [3, 4, 1, 1]; a 10 x 5 box from (0, 0)
    np.testing.assert_array_equal(box_to_coco([[3, 4, 3, 4], [0, 0, 9, 4]]), [[3, 4, 1, 1], [0, 0, 10, 5]])
    np.testing.assert_array_equal(coco_to_box([[3, 4, 1, 1], [0.5, 2, 10, 5]]), [[3, 4, 3, 4], [0.5, 2, 9.5, 6]])


@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 2000), st.integers(0, 500), st.integers(0, 500),
                          st.integers(0, 7)), min_size=0, max_size=20))
def test_box_convention_round_trips_both_ways(rows):
    quarters = np.array(rows, np.float64).reshape(-1, 5)
    boxes = np.stack([quarters[:, 0], quarters[:, 1], quarters[:, 0] + quarters[:, 2],
                      quarters[:, 1] + quarters[:, 3]], axis=1) + quarters[:, 4:5] / 4
    np.testing.assert_array_equal(coco_to_box(box_to_coco(boxes)), boxes)
    bboxes = box_to_coco(boxes)
    np.testing.assert_array_equal(box_to_coco(coco_to_box(bboxes)), bboxes)
    # the widths agree: minidet's x2 - x1 + 1 is COCO's w
    np.testing.assert_array_equal(bboxes[:, 2], boxes[:, 2] - boxes[:, 0] + 1)


def test_reads_images_in_file_order_and_classes_in_category_id_order(coco):
    ds = COCODataset(*coco)
    assert ds.class_names == ("cat", "dog") and ds.category_ids == (2, 5) and ds.num_classes == 3
    assert ds.ids == [7, 3, 9] and len(ds) == 3 and ds.image_size(1) == (50, 30)
    assert ds.image_path(1).endswith(os.path.join("images", "sub", "b.png"))
    ex = ds[0]
    # [0, 1, 30, 19] -> (0, 1, 29, 19); [9.5, 9, 50.5, 31] -> (9.5, 9, 59, 39)
    np.testing.assert_array_equal(ex["boxes"], [[0, 1, 29, 19], [9.5, 9, 59, 39]])
    assert ex["boxes"].dtype == np.float32 and ex["labels"].dtype == np.int64
    np.testing.assert_array_equal(ex["labels"], [1, 2])
    np.testing.assert_array_equal(ex["crowd"], [False, True])
    np.testing.assert_array_equal(ex["difficult"], [False, True])      # a crowd is ignored in training
    assert ex["id"] == 7 and ex["image"].shape == (40, 60, 3) and ex["image"].dtype == np.uint8
    b = ds.annotation(1)
    np.testing.assert_array_equal(b["difficult"], [True])                # flagged "difficult": 1, not a crowd
    np.testing.assert_array_equal(b["crowd"], [False])
    assert len(ds.annotation(2)["boxes"]) == 0 and ds.annotation(2)["boxes"].shape == (0, 4)
    assert ds[-1]["id"] == 9
    with pytest.raises(IndexError):
        ds[3]
    assert coco_ids(ds) == ([7, 3, 9], [2, 5])


def test_class_names_choose_the_label_order(coco):
    ds = COCODataset(*coco, class_names=("dog", "cat"))
    assert ds.class_names == ("dog", "cat") and ds.category_ids == (5, 2)
    np.testing.assert_array_equal(ds.annotation(0)["labels"], [2, 1])
    with pytest.raises(AnnotationError, match=r"\['bird'\] are not among"):
        COCODataset(*coco, class_names=("dog", "bird"))
    with pytest.raises(AnnotationError, match="category 'dog' \\(id 5\\) is not among the classes"):
        COCODataset(*coco, class_names=("cat",))


def test_boxes_a_pixel_over_the_border_are_clipped_further_out_rejected(tmp_path):
    data = copy.deepcopy(BASE)
    data["annotations"][0]["bbox"] = [-1, -0.5, 61, 41]           # x2 = 59 + 1, y2 = 39.5 + 0.5
    ds = COCODataset(*write_coco(str(tmp_path / "ok"), data))
    np.testing.assert_array_equal(ds.annotation(0)["boxes"][0], [0, 0, 59, 39])
    assert ds.coco_ground_truth()["annotations"][0]["bbox"] == [-1, -0.5, 61, 41]   # as written, for COCOeval
    data["annotations"][0]["bbox"] = [0, 0, 62.5, 10]
    with pytest.raises(AnnotationError, match=r"annotations\[0\] \(id 1\): bbox .* outside the 60x40 image 7"):
        COCODataset(*write_coco(str(tmp_path / "bad"), data))


def test_missing_area_defaults_to_box_area_in_the_ground_truth(tmp_path):
    data = copy.deepcopy(BASE)
    del data["annotations"][2]["area"]
    gt = COCODataset(*write_coco(str(tmp_path), data)).coco_ground_truth()
    assert gt["annotations"][2]["area"] == 9 and gt["annotations"][1]["iscrowd"] == 1
    assert [c["name"] for c in gt["categories"]] == ["cat", "dog"]


def _broken(change):
    data = copy.deepcopy(BASE)
    change(data)
    return data


BAD = {
    "malformed JSON": ('{"images": [', r"instances.json: malformed JSON"),
    "not an object": ("[1, 2]", r"holds a list, not a COCO object"),
    "missing section": (_broken(lambda d: d.pop("annotations")), r"instances.json has no 'annotations'"),
    "missing key": (_broken(lambda d: d["annotations"][1].pop("bbox")), r"annotations\[1\] \(id 2\) has no 'bbox'"),
    "missing image size": (_broken(lambda d: d["images"][2].pop("height")), r"images\[2\] \(id 9\) has no 'height'"),
    "non-positive size": (_broken(lambda d: d["annotations"][0].update(bbox=[1, 1, 0, 5])),
                          r"annotations\[0\] \(id 1\): bbox \[1, 1, 0, 5\] has no size"),
    "negative size": (_broken(lambda d: d["annotations"][0].update(bbox=[10, 10, 5, -2])), r"has no size"),
    "outside": (_broken(lambda d: d["annotations"][2].update(bbox=[25, 5, 10, 5])),
                r"annotations\[2\] \(id 4\): bbox \[25, 5, 10, 5\] lies outside the 30x50 image 3"),
    "unknown category": (_broken(lambda d: d["annotations"][0].update(category_id=4)),
                         r"annotations\[0\] \(id 1\): category_id 4 is not among the categories \[2, 5\]"),
    "unknown image": (_broken(lambda d: d["annotations"][2].update(image_id=8)),
                      r"annotations\[2\] \(id 4\): image_id 8 is not among the images"),
    "duplicate image id": (_broken(lambda d: d["images"][2].update(id=7)),
                           r"images\[2\] \(id 7\): image id 7 is repeated"),
    "duplicate annotation id": (_broken(lambda d: d["annotations"][2].update(id=1)), r"annotation id 1 is repeated"),
    "repeated category name": (_broken(lambda d: d["categories"].append({"id": 8, "name": "dog"})),
                               r"categories\[2\]: category name 'dog' is repeated"),
    "repeated category id": (_broken(lambda d: d["categories"].append({"id": 5, "name": "emu"})),
                             r"categories\[2\]: category id 5 is repeated"),
    "bbox of strings": (_broken(lambda d: d["annotations"][0].update(bbox=["0", 1, 30, 19])),
                        r"'bbox' is \['0', 1, 30, 19\], not four finite numbers"),
    "bbox of three": (_broken(lambda d: d["annotations"][0].update(bbox=[0, 1, 30])), r"not four finite numbers"),
    "id a string": (_broken(lambda d: d["images"][0].update(id="7")), r"images\[0\]: 'id' is '7', not an integer"),
    "width a float": (_broken(lambda d: d["images"][0].update(width=60.5)), r"'width' is 60.5, not an integer"),
    "iscrowd 2": (_broken(lambda d: d["annotations"][0].update(iscrowd=2)), r"'iscrowd' is 2, not 0 or 1"),
    "name empty": (_broken(lambda d: d["categories"][0].update(name=" ")), r"'name' is ' ', not a non-empty string"),
    "entry not an object": (_broken(lambda d: d["annotations"].append(3)),
                            r"annotations\[3\] is a int, not an object"),
    "images not a list": (_broken(lambda d: d.update(images={"id": 1})), r"'images' is .*, not a list"),
}


@pytest.mark.parametrize("kind", BAD)
def test_bad_file_raises_one_message_naming_file_and_entry(tmp_path, kind):
    data, message = BAD[kind]
    path, images = write_coco(str(tmp_path), data)
    with pytest.raises(AnnotationError, match=message) as info:
        COCODataset(path, images)
    assert str(info.value).startswith(path)


def test_missing_image_file_is_named(tmp_path):
    path, images = write_coco(str(tmp_path))
    os.remove(os.path.join(images, "c.jpg"))
    with pytest.raises(FileNotFoundError, match=r"c.jpg: image file is missing \(image 9 of .*instances.json\)"):
        COCODataset(path, images)
    with pytest.raises(FileNotFoundError, match="nowhere.json: annotation file is missing"):
        COCODataset(str(tmp_path / "nowhere.json"), images)


def test_image_of_another_size_than_the_file_says_is_an_error(tmp_path):
    path, images = write_coco(str(tmp_path))
    cv2.imwrite(os.path.join(images, "a.jpg"), np.zeros((10, 10, 3), np.uint8))
    ds = COCODataset(path, images)
    with pytest.raises(AnnotationError, match=r"a.jpg: image is 10x10 but .*instances.json says 60x40"):
        ds[0]


def test_serves_the_loader_like_a_voc_dataset(coco):
    from minidet.convention import CAFFE
    from minidet.data.loader import BatchLoader

    ds = COCODataset(*coco)
    proposals = [np.array([[0, 0, 20, 20], [5, 5, 25, 30]], np.float32) for _ in range(len(ds))]
    with BatchLoader(ds, proposals, CAFFE, ds.num_classes, images_per_batch=2, rois_per_image=8,
                     scales=(40,), max_size=100, prefetch=1) as loader:
        batch = next(loader)
        # the crowd box of image 7 and the difficult one of image 3 are no training targets
        np.testing.assert_array_equal(loader.gt_boxes[0], [[0, 1, 29, 19]])
        assert len(loader.gt_boxes[1]) == 0
    assert batch["images"].shape[:2] == (2, 3) and set(batch["ids"]) <= {7, 3, 9}


def test_agrees_with_voc_reader_on_a_converted_folder(tmp_path):
    from minidet.convert import voc_folder_to_coco
    from minidet.data.synthetic import write_synthetic_voc

    root = write_synthetic_voc(tmp_path / "syn", num_trainval=4, num_test=1, image_size=(48, 64))
    voc = VOCDataset(root, "trainval")
    path = str(tmp_path / "trainval.json")
    with open(path, "w") as f:
        json.dump(voc_folder_to_coco(root, "trainval"), f)
    ds = COCODataset(path, os.path.join(root, "JPEGImages"))
    assert ds.class_names == voc.class_names and len(ds) == len(voc)
    for i in range(len(voc)):
        a, b = voc.annotation(i), ds.annotation(i)
        for key in ("boxes", "labels", "difficult"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} of image {i}")
        np.testing.assert_array_equal(voc[i]["image"], ds[i]["image"])


def test_serves_proposals_and_voc_evaluation_like_a_voc_dataset(coco, tmp_path):
    from minidet.data.proposals import load_proposals
    from minidet.inference import evaluate_detections

    ds = COCODataset(*coco)
    proposals = load_proposals(ds, str(tmp_path / "cache"), workers=0, mode="single", progress=False)
    assert len(proposals) == 3 and all(p.ndim == 2 and p.shape[1] == 4 for p in proposals)
    assert len(os.listdir(tmp_path / "cache")) == 3
    # the ground truth as detections: AP 1 for both classes, the crowd and difficult boxes ignored
    a = [ds.annotation(i) for i in range(len(ds))]
    result = evaluate_detections(ds, [x["boxes"] for x in a], [x["labels"] for x in a],
                                 [np.ones(len(x["boxes"]), np.float32) for x in a])
    assert result["ap_by_class"]["cat"] == pytest.approx(1.0)
    assert result["ap_by_class"]["dog"] is None                     # dog has only ignored boxes


def test_trains_like_a_voc_dataset(tmp_path):
    from minidet.convert import voc_folder_to_coco
    from minidet.data.synthetic import write_synthetic_voc
    from minidet.checkpoint import load_npz
    from minidet.train import train
    from minidet.train_config import TrainConfig

    root = write_synthetic_voc(tmp_path / "syn", num_trainval=4, num_test=1, image_size=(64, 80))
    path = str(tmp_path / "trainval.json")
    with open(path, "w") as f:
        json.dump(voc_folder_to_coco(root, "trainval"), f)
    ds = COCODataset(path, os.path.join(root, "JPEGImages"))
    rng = np.random.default_rng(0)
    proposals = []
    for i in range(len(ds)):
        xy = rng.uniform(0, [60, 44], (30, 2))
        proposals.append(np.concatenate([xy, xy + rng.uniform(8, 20, (30, 2))], axis=1).astype(np.float32))
    config = TrainConfig(data_dir=ds.root, out=str(tmp_path / "run"), preset="small", iters=2, scales=(64,),
                         max_size=200, rois_per_image=16, checkpoint_every=2, progress=False,
                         model_kwargs=dict(width=0.0625, fc_dim=32))
    summary = train(config, ds, proposals, log=lambda *a: None)
    assert summary["iterations"] == 2
    _, meta = load_npz(os.path.join(config.out, "final.npz"))
    assert meta["class_names"] == list(ds.class_names)
