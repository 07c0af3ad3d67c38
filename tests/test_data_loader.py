"""The batch loader: well-formed batches, epochs doubled by flips, every entry once per epoch across
restarts, batches that depend on (seed, iteration) only, ranks that split a global batch, difficult
objects as non-objects, images without RoIs left out, a clean stop."""
import os
import threading
import warnings

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


def visits_per_epoch(batches, epoch_size):
    """{epoch: sorted [(id, flipped)]} of the images the batches hold, by the epoch of their slot."""
    epochs = {}
    for batch in batches:
        for slot, image_id, flipped in zip(batch["slots"], batch["ids"], batch["flipped"]):
            epochs.setdefault(slot // epoch_size, []).append((image_id, flipped))
    return {e: sorted(v) for e, v in epochs.items()}


@pytest.mark.parametrize("flip, images_per_batch", [(True, 2), (False, 2), (True, 5)])
def test_every_entry_is_visited_once_per_epoch_across_restarts(data, flip, images_per_batch):
    # E = 12 (6 images and their mirrors) or 6, B = 2 or 5: with B = 5 batches straddle two epochs.
    dataset, proposals = data
    entries = sorted((i, f) for i in dataset.ids for f in ((False, True) if flip else (False,)))
    epoch_size = len(entries)
    total = -(-2 * epoch_size // images_per_batch)                # enough batches for two whole epochs
    restarts = [0, 1, 4, 5, total]                               # a new loader at each of these iterations
    batches = []
    for start, stop in zip(restarts, restarts[1:]):
        with BatchLoader(dataset, proposals, CAFFE, 6, images_per_batch=images_per_batch, scales=(24,),
                         flip=flip, rois_per_image=4, seed=7, start_iteration=start) as loader:
            assert loader.epoch_size == epoch_size
            batches += take(loader, stop - start)
    assert [b["iteration"] for b in batches] == list(range(total))
    assert [s for b in batches for s in b["slots"]] == list(range(total * images_per_batch))
    epochs = visits_per_epoch(batches, epoch_size)
    assert epochs[0] == entries and epochs[1] == entries
    assert [e for b in batches for e in zip(b["ids"], b["flipped"])][:epoch_size] != entries  # shuffled
    first, second = ([e for b in batches for e in zip(b["ids"], b["flipped"])][k * epoch_size:(k + 1) * epoch_size]
                     for k in (0, 1))
    assert first != second                                       # each epoch has its own order


def test_a_loader_started_at_any_iteration_gives_the_batches_of_one_started_at_zero(data):
    dataset, proposals = data
    settings = dict(scales=(36, 48, 72), seed=11, rois_per_image=8)
    with BatchLoader(dataset, proposals, CAFFE, 6, **settings) as loader:
        whole = take(loader, 9)
    for start in (3, 6, 8):       # 6 batches an epoch: 6 starts the second epoch, 8 is inside it
        with BatchLoader(dataset, proposals, CAFFE, 6, start_iteration=start, **settings) as loader:
            resumed = take(loader, 9 - start)
        for x, y in zip(whole[start:], resumed):
            assert x["ids"] == y["ids"] and x["flipped"] == y["flipped"] and x["scales"] == y["scales"]
            for key in ("images", "rois", "labels", "bbox_targets", "bbox_weights"):
                np.testing.assert_array_equal(x[key], y[key])


def test_ranks_split_the_global_batch_of_one_process(data):
    # One process with N = 2 and two ranks with N = 1 see the same images with the same draws.
    dataset, proposals = data
    settings = dict(scales=(36, 72), seed=3, rois_per_image=8)
    with BatchLoader(dataset, proposals, CAFFE, 6, images_per_batch=2, **settings) as one, \
            BatchLoader(dataset, proposals, CAFFE, 6, images_per_batch=1, rank=0, world_size=2, **settings) as r0, \
            BatchLoader(dataset, proposals, CAFFE, 6, images_per_batch=1, rank=1, world_size=2, **settings) as r1:
        for whole, parts in zip(take(one, 7), zip(take(r0, 7), take(r1, 7))):
            for n, part in enumerate(parts):
                mine = whole["rois"][:, 0] == n
                assert part["ids"] == whole["ids"][n:n + 1] and part["flipped"] == whole["flipped"][n:n + 1]
                assert part["slots"] == whole["slots"][n:n + 1] and part["scales"] == whole["scales"][n:n + 1]
                np.testing.assert_array_equal(part["rois"][:, 1:], whole["rois"][mine, 1:])
                assert (part["rois"][:, 0] == 0).all()
                for key in ("labels", "bbox_targets", "bbox_weights"):
                    np.testing.assert_array_equal(part[key], whole[key][mine])
                h, w = part["images"].shape[2:]
                np.testing.assert_array_equal(part["images"][0], whole["images"][n, :, :h, :w])
    with pytest.raises(ValueError, match="rank 2"):
        BatchLoader(dataset, proposals, CAFFE, 6, rank=2, world_size=2)


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
        assert batch["rois"][batch["rois"][:, 0] == n, 1:].max() <= 95 * s      # x2 <= W - 1, scaled


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


def rois_of(batch, image_id):
    """(rois (R, 4), labels (R,)) of one image of a batch."""
    mine = batch["rois"][:, 0] == batch["ids"].index(image_id)
    return batch["rois"][mine, 1:], batch["labels"][mine]


def test_difficult_objects_are_simply_not_ground_truth_unless_asked(tmp_path):
    # a (class 1) and a difficult b (class 2) side by side, overlapping: IoU(a, b) = 600 / 1200 = 0.5.
    a, b = (10, 10, 39, 39), (20, 10, 49, 39)
    both = (15, 10, 44, 39)      # IoU 0.714 with a and with b: a's foreground, even though it covers b
    on_b = (25, 10, 54, 39)      # IoU 0.714 with b, 0.333 with a: background while b is not ground truth
    dataset = make_folder(str(tmp_path / "d"), {"pair": [("a", a, False), ("b", b, True)],
                                                "other": [("a", (5, 30, 30, 55), False)]})
    proposals = [np.array([both, on_b], np.float32), np.zeros((0, 4), np.float32)]
    settings = dict(scales=(60,), flip=False, images_per_batch=1)
    with BatchLoader(dataset, proposals, CAFFE, 3, **settings) as loader:
        batch = next(b for b in take(loader, 2) if "pair" in b["ids"])
    rois, labels = rois_of(batch, "pair")
    found = {tuple(r): int(l) for r, l in zip(rois, labels)}
    assert found == {a: 1, both: 1, on_b: 0}                     # b itself is no candidate
    with BatchLoader(dataset, proposals, CAFFE, 3, use_difficult=True, **settings) as loader:
        batch = next(b for b in take(loader, 2) if "pair" in b["ids"])
    rois, labels = rois_of(batch, "pair")
    found = {tuple(r): int(l) for r, l in zip(rois, labels)}
    assert found == {a: 1, b: 2, both: 1, on_b: 2}               # `both` is nearer a: ties go to the first


def test_images_that_can_give_no_roi_are_left_out_with_a_warning(tmp_path):
    hard = (10, 10, 39, 39)
    dataset = make_folder(str(tmp_path / "e"), {"empty": [], "normal": [("b", (40, 20, 70, 50), False)],
                                                "only_difficult": [("a", hard, True)],
                                                "other": [("a", (5, 5, 30, 30), False)]})
    near_hard = np.array([[10, 10, 39, 39], [12, 10, 40, 38], [50, 5, 70, 25]], np.float32)
    proposals = [near_hard, np.zeros((0, 4), np.float32), near_hard, np.zeros((0, 4), np.float32)]
    with pytest.warns(UserWarning, match="2 of 4 images have no RoI to train on"):
        loader = BatchLoader(dataset, proposals, CAFFE, 3, scales=(60,))
    with loader:
        assert [dataset.ids[i] for i in loader.usable] == ["normal", "other"] and loader.batches_per_epoch == 2
        for batch in take(loader, 6):
            assert set(batch["ids"]) <= {"normal", "other"} and len(batch["rois"]) == 2   # each gt alone
    with warnings.catch_warnings():
        warnings.simplefilter("error")                            # all four usable: no warning
        with pytest.warns(UserWarning, match="1 of 4"):
            loader = BatchLoader(dataset, proposals, CAFFE, 3, scales=(60,), use_difficult=True)
        with loader:
            assert "only_difficult" in [dataset.ids[i] for i in loader.usable]
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="a batch needs 5"):
        BatchLoader(dataset, proposals, CAFFE, 3, images_per_batch=5, flip=False)
