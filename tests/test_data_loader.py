"""The batch loader: well-formed batches, epochs doubled by flips, determinism per seed, a clean stop."""
import os
import threading

import cv2
import numpy as np
import pytest

from minidet.convention import CAFFE
from minidet.data.loader import BatchLoader
from minidet.data.synthetic import write_synthetic_voc
from minidet.data.transforms import flip_image, prepare_image
from minidet.data.voc import VOCDataset, write_voc_xml


def jittered_proposals(dataset, seed=0):
    """Boxes near each object (foreground) and random boxes (mostly background), per image."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(dataset)):
        h, w = dataset.image_size(i)
        gt = dataset.annotation(i)["boxes"]
        near = np.repeat(gt, 6, axis=0) + rng.normal(0, 3, (6 * len(gt), 4))
        xy = rng.uniform(0, [w - 12, h - 12], (60, 2))
        boxes = np.concatenate([near, np.concatenate([xy, xy + rng.uniform(6, 50, (60, 2))], 1)])
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w - 1)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h - 1)
        keep = (boxes[:, 2] > boxes[:, 0] + 2) & (boxes[:, 3] > boxes[:, 1] + 2)
        out.append(np.round(boxes[keep]).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_synthetic_voc(tmp_path_factory.mktemp("data") / "syn", num_trainval=6, num_test=1,
                               image_size=(72, 96))
    dataset = VOCDataset(root, "trainval")
    return dataset, jittered_proposals(dataset)


def take(loader, n):
    return [next(loader) for _ in range(n)]


def test_batches_are_well_formed(data):
    dataset, proposals = data
    with BatchLoader(dataset, proposals, CAFFE, 6, scales=(144,), max_size=1000, seed=1) as loader:
        for batch in take(loader, 4):
            images, rois, labels = batch["images"], batch["rois"], batch["labels"]
            assert images.shape == (2, 3, 144, 192) and images.dtype == np.float32
            assert rois.dtype == np.float32 and rois.shape[1] == 5 and 0 < len(rois) <= 128
            assert labels.dtype == np.int64 and labels.shape == (len(rois),)
            assert batch["bbox_targets"].shape == batch["bbox_weights"].shape == (len(rois), 24)
            assert set(np.unique(rois[:, 0])) <= {0.0, 1.0}
            assert (rois[:, 1:] >= 0).all() and (rois[:, [1, 3]] <= 191).all() and (rois[:, [2, 4]] <= 143).all()
            for n in range(2):
                assert (labels[rois[:, 0] == n] > 0).sum() <= 16
            assert batch["scales"] == [2.0, 2.0]
            fg = labels > 0
            assert (batch["bbox_weights"][fg].sum(1) == 4).all() and not batch["bbox_weights"][~fg].any()


def test_an_epoch_visits_every_image_once_plain_and_once_flipped(data):
    dataset, proposals = data
    with BatchLoader(dataset, proposals, CAFFE, 6, scales=(72,), seed=2) as loader:
        assert loader.batches_per_epoch == 6
        seen = [(i, f) for b in take(loader, 6) for i, f in zip(b["ids"], b["flipped"])]
    assert sorted(seen) == sorted([(i, f) for i in dataset.ids for f in (False, True)])


def test_flipped_images_and_their_rois_are_mirrored(data):
    dataset, proposals = data
    with BatchLoader(dataset, proposals, CAFFE, 6, scales=(72,), seed=3) as loader:
        for batch in take(loader, 6):
            for n, (image_id, flipped) in enumerate(zip(batch["ids"], batch["flipped"])):
                i = dataset.ids.index(image_id)
                image = dataset[i]["image"]
                expected, _ = prepare_image(flip_image(image) if flipped else image, CAFFE, 72)
                np.testing.assert_array_equal(batch["images"][n], expected)
                # Foreground RoIs carry gt boxes mirrored the same way.
                gt = dataset.annotation(i)["boxes"]
                if flipped:
                    gt = np.stack([95 - gt[:, 2], gt[:, 1], 95 - gt[:, 0], gt[:, 3]], 1)
                mine = batch["rois"][batch["rois"][:, 0] == n, 1:]
                ious = [max(np.minimum(r[2], g[2]) - np.maximum(r[0], g[0]) + 1, 0) *
                        max(np.minimum(r[3], g[3]) - np.maximum(r[1], g[1]) + 1, 0) > 0 for r in mine for g in gt]
                assert any(ious)


def test_several_scales_pick_one_per_image(data):
    dataset, proposals = data
    with BatchLoader(dataset, proposals, CAFFE, 6, scales=(36, 72, 108), max_size=1000, seed=4) as loader:
        scales = {s for b in take(loader, 12) for s in b["scales"]}
        batch = next(loader)
    assert scales == {0.5, 1.0, 1.5}
    for n in range(2):
        s = batch["scales"][n]
        assert batch["rois"][batch["rois"][:, 0] == n, 1:].max() <= 96 * s - 1


def test_same_seed_same_batches_other_seed_other_batches(data):
    dataset, proposals = data
    with BatchLoader(dataset, proposals, CAFFE, 6, scales=(48, 72), seed=5) as a, \
            BatchLoader(dataset, proposals, CAFFE, 6, scales=(48, 72), seed=5) as b, \
            BatchLoader(dataset, proposals, CAFFE, 6, scales=(48, 72), seed=6) as c:
        batches_a, batches_b, batches_c = take(a, 5), take(b, 5), take(c, 5)
    for x, y in zip(batches_a, batches_b):
        assert x["ids"] == y["ids"] and x["flipped"] == y["flipped"]
        for key in ("images", "rois", "labels", "bbox_targets", "bbox_weights"):
            np.testing.assert_array_equal(x[key], y[key])
    assert any(x["ids"] != z["ids"] or not np.array_equal(x["rois"], z["rois"])
               for x, z in zip(batches_a, batches_c))


def test_close_stops_the_thread(data):
    dataset, proposals = data
    loader = BatchLoader(dataset, proposals, CAFFE, 6, scales=(72,), prefetch=1)
    next(loader)
    thread = loader._thread
    assert thread.is_alive()
    loader.close()
    assert not thread.is_alive()
    with pytest.raises(StopIteration):
        next(loader)
    with BatchLoader(dataset, proposals, CAFFE, 6, scales=(72,)) as loader:
        thread = loader._thread
    assert not thread.is_alive()
    assert not any(t.name == "minidet-batch-loader" and t.is_alive() for t in threading.enumerate())


def test_an_error_in_the_thread_reaches_the_caller(tmp_path, data):
    dataset, proposals = data
    import shutil
    root = str(tmp_path / "copy")
    shutil.copytree(dataset.root, root)
    copy = VOCDataset(root, "trainval")
    for image_id in copy.ids:
        os.remove(os.path.join(root, "JPEGImages", f"{image_id}.jpg"))
    loader = BatchLoader(copy, proposals, CAFFE, 6, scales=(72,))
    with pytest.raises(ValueError, match="cannot be decoded"):
        next(loader)
    loader.close()
    assert not loader._thread.is_alive()


def make_folder(root, objects):
    """objects: {id: [(name, box 0-based, difficult)]} on 60x80 images."""
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for image_id, objs in objects.items():
        cv2.imwrite(os.path.join(root, "JPEGImages", f"{image_id}.jpg"), np.full((60, 80, 3), 90, np.uint8))
        write_voc_xml(os.path.join(root, "Annotations", f"{image_id}.xml"), f"{image_id}.jpg", (60, 80),
                      [o[1] for o in objs], [o[0] for o in objs], [o[2] for o in objs])
    with open(os.path.join(root, "ImageSets", "Main", "trainval.txt"), "w") as f:
        f.write("\n".join(objects) + "\n")
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("a\nb\n")
    return VOCDataset(root, "trainval")


def test_difficult_objects_are_neither_object_nor_background_unless_asked(tmp_path):
    hard = (10, 10, 39, 39)
    dataset = make_folder(str(tmp_path / "d"), {"only_difficult": [("a", hard, True)],
                                                "normal": [("b", (40, 20, 70, 50), False)]})
    on_hard = np.array([[10, 10, 39, 39], [12, 10, 40, 38]], np.float32)
    elsewhere = np.array([[50, 5, 70, 25], [0, 40, 30, 59], [45, 30, 79, 59]], np.float32)
    proposals = [np.concatenate([on_hard, elsewhere]), elsewhere]
    with BatchLoader(dataset, proposals, CAFFE, 3, scales=(60,), flip=False) as loader:
        for batch in take(loader, 3):
            n = batch["ids"].index("only_difficult")
            mine = batch["rois"][batch["rois"][:, 0] == n]
            assert (batch["labels"][batch["rois"][:, 0] == n] == 0).all() and len(mine) == 3
            assert not any((mine[:, 1:] == box).all(1).any() for box in on_hard)
    with BatchLoader(dataset, proposals, CAFFE, 3, scales=(60,), flip=False, use_difficult=True) as loader:
        batch = next(loader)
        n = batch["ids"].index("only_difficult")
        assert (batch["labels"][batch["rois"][:, 0] == n] == 1).sum() == 3   # the gt and both covering boxes


def test_image_with_nothing_to_sample_is_left_out_without_crashing(tmp_path):
    dataset = make_folder(str(tmp_path / "e"), {"empty": [], "normal": [("b", (40, 20, 70, 50), False)],
                                                "other": [("a", (5, 5, 30, 30), False)]})
    proposals = [np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32)]
    with BatchLoader(dataset, proposals, CAFFE, 3, scales=(60,)) as loader:
        assert loader.batches_per_epoch == 2
        for batch in take(loader, 6):
            assert "empty" not in batch["ids"] and len(batch["rois"]) == 2
    with pytest.raises(ValueError, match="batch needs"):
        BatchLoader(dataset, proposals, CAFFE, 3, images_per_batch=5, flip=False)
