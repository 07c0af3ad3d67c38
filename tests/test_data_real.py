"""The data pipeline on real files (../shared/data): BCCD's VOC folder and the original demo proposals."""
import os

import numpy as np
import pytest

from minidet.boxes import bbox_overlaps
from minidet.data.proposals import load_mat_proposals, selective_search
from minidet.data.sampler import sample_rois
from minidet.data.voc import VOCDataset

BCCD_CLASSES = ["RBC", "WBC", "Platelets"]


@pytest.fixture
def bccd(shared_data):
    with pytest.warns(UserWarning) as record:
        dataset = VOCDataset(os.path.join(shared_data, "BCCD"), "trainval", BCCD_CLASSES)
    return dataset, [str(w.message) for w in record]


def test_bccd_single_point_boxes_are_dropped_with_warnings_naming_the_files(bccd):
    dataset, messages = bccd
    assert len(dataset) == 292 and dataset.class_names == tuple(BCCD_CLASSES)
    point = [m for m in messages if "no extent" in m]
    assert len(point) == 2
    assert any("BloodImage_00338.xml" in m and "(RBC)" in m for m in point)
    assert any("BloodImage_00343.xml" in m and "(RBC)" in m for m in point)
    a = dataset.annotation(dataset.ids.index("BloodImage_00338"))
    assert len(a["boxes"]) == 13                                  # 14 objects in the file, the point dropped
    written = dataset.annotation(dataset.ids.index("BloodImage_00338"), as_written=True)
    assert len(written["boxes"]) == 14                            # evaluation sees all 14, the point too
    b = written["boxes"]
    assert ((b[:, 2] == b[:, 0]) & (b[:, 3] == b[:, 1])).sum() == 1
    assert not ((a["boxes"][:, 2] == a["boxes"][:, 0]) & (a["boxes"][:, 3] == a["boxes"][:, 1])).any()


def test_bccd_boxes_lie_inside_their_images_and_give_finite_targets(bccd, rng):
    dataset, _ = bccd
    counts = np.zeros(4, int)
    for i in range(len(dataset)):
        a = dataset.annotation(i)
        h, w = dataset.image_size(i)
        b = a["boxes"]
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= w - 1).all() and (b[:, 3] <= h - 1).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        counts += np.bincount(a["labels"], minlength=4)
        if i % 20 == 0:
            props = np.repeat(b, 4, 0) + rng.normal(0, 6, (4 * len(b), 4))
            props[:, 0::2] = np.clip(props[:, 0::2], 0, w - 1)
            props[:, 1::2] = np.clip(props[:, 1::2], 0, h - 1)
            _, labels, targets, _ = sample_rois(props, b, a["labels"], 4, rng=rng)
            assert np.isfinite(targets).all() and (labels > 0).any()
    assert counts[1] > counts[2] > 0 and counts[3] > 0               # RBC most common; WBC and Platelets present
    ex = dataset[0]
    assert ex["image"].shape == (480, 640, 3)


def test_demo_proposals_load_with_their_shapes(shared_data):
    folder = os.path.join(shared_data, "fast-rcnn-demo")
    for name, shape, size in (("000004", (2888, 4), (406, 500)), ("001551", (2057, 4), (375, 500))):
        boxes = load_mat_proposals(os.path.join(folder, f"{name}_boxes.mat"), layout="xyxy0")
        assert boxes.shape == shape and boxes.dtype == np.float32
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= size[1] - 1).all() and (boxes[:, 3] <= size[0] - 1).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        cleaned = load_mat_proposals(os.path.join(folder, f"{name}_boxes.mat"), layout="xyxy0", clean=True)
        assert 0 < shape[0] - len(cleaned) < 20                    # a few 1-pixel-wide boxes go


@pytest.mark.slow
def test_selective_search_finds_most_of_the_original_demo_proposals(shared_data):
    import cv2

    folder = os.path.join(shared_data, "fast-rcnn-demo")
    image = cv2.imread(os.path.join(folder, "000004.jpg"))
    original = load_mat_proposals(os.path.join(folder, "000004_boxes.mat"), layout="xyxy0")
    mine = selective_search(image, mode="fast")
    assert 500 < len(mine) <= 2000
    covered = (bbox_overlaps(original.astype(np.float64), mine.astype(np.float64)).max(axis=1) >= 0.5).mean()
    assert covered > 0.7


@pytest.mark.parametrize("name", ["000004", "001551"])
def test_demo_image_blob_is_the_originals_bit_for_bit(shared_data, name):
    # lib/utils/blob.py prep_im_for_blob at the test scale 600 / 1000: float32, minus the means, resized
    import cv2

    from minidet.convention import CAFFE
    from minidet.data.transforms import prepare_image

    image = cv2.imread(os.path.join(shared_data, "fast-rcnn-demo", f"{name}.jpg"))
    original = image.astype(np.float32)
    original -= np.array([[[102.9801, 115.9465, 122.7717]]])
    scale = 600 / min(image.shape[:2])
    original = cv2.resize(original, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    chw, im_scale = prepare_image(image, CAFFE, 600, 1000)
    assert im_scale == scale and chw.shape == (3, 600, original.shape[1])
    np.testing.assert_array_equal(chw.transpose(1, 2, 0), original)


@pytest.mark.slow
def test_bccd_proposals_of_the_default_mode_find_every_class_on_the_test_split(shared_data, tmp_path):
    # What train_voc.py does by default on BCCD: proposal_mode "auto" measures the candidate modes on
    # 24 training images and takes the best; its boxes must then find >= 95% of each class's test boxes
    # at IoU 0.5 within the 2000 per image that training and detection use.
    import warnings

    from minidet.data.proposals import proposals_cache_dir
    from minidet.data.recall import choose_mode, measure_modes

    root = os.path.join(shared_data, "BCCD")
    cache = proposals_cache_dir(root, str(tmp_path))      # the data folder's cache, as a run's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                   # the two point boxes, tested above
        mode, _ = choose_mode(VOCDataset(root, "trainval", BCCD_CLASSES), cache, progress=False)
        test = VOCDataset(root, "test", BCCD_CLASSES)
    recall = measure_modes(test, [mode], cache, thresholds=(0.5,), budgets=(2000,), progress=False,
                           max_boxes=2000)[mode]["recall"]["0.5"]
    found = {name: recall[name]["2000"] for name in BCCD_CLASSES}
    assert mode == "fine" and min(found.values()) >= 0.95, found
