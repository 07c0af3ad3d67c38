"""The embedded synthetic set: a readable VOC folder, written once, atomically, and not solvable by colour."""
import json
import os

import numpy as np
import pytest

from minidet.data import synthetic
from minidet.data.synthetic import CLASSES, render_scene, write_synthetic_voc
from minidet.data.voc import VOCDataset

SMALL = dict(num_trainval=6, num_test=4, image_size=(120, 160))


def test_writes_a_voc_folder_the_reader_accepts(tmp_path):
    root = write_synthetic_voc(tmp_path / "syn", seed=3, **SMALL)
    train, test = VOCDataset(root, "trainval"), VOCDataset(root, "test")
    assert train.class_names == CLASSES and len(train) == 6 and len(test) == 4
    assert not set(train.ids) & set(test.ids)
    for ds in (train, test):
        for i in range(len(ds)):
            ex = ds[i]
            assert ex["image"].shape == (120, 160, 3)
            b = ex["boxes"]
            assert len(b) >= 1 and (b[:, :2] >= 0).all() and (b[:, 2] <= 159).all() and (b[:, 3] <= 119).all()
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
            assert ((ex["labels"] >= 1) & (ex["labels"] <= len(CLASSES))).all()
    manifest = json.load(open(os.path.join(root, "manifest.json")))
    assert manifest["settings"]["seed"] == 3 and manifest["counts"]["test"]["images"] == 4


def test_second_call_with_same_settings_writes_nothing(tmp_path, monkeypatch):
    root = write_synthetic_voc(tmp_path / "syn", **SMALL)
    images = os.path.join(root, "JPEGImages")
    before = {f: os.path.getmtime(os.path.join(images, f)) for f in os.listdir(images)}
    monkeypatch.setattr(synthetic, "_write_all", lambda *a: pytest.fail("rewrote a complete data set"))
    assert write_synthetic_voc(tmp_path / "syn", **SMALL) == root
    after = {f: os.path.getmtime(os.path.join(images, f)) for f in before}
    assert before == after


def test_other_settings_replace_an_older_synthetic_set(tmp_path):
    root = write_synthetic_voc(tmp_path / "syn", seed=0, **SMALL)
    write_synthetic_voc(root, seed=0, num_trainval=3, num_test=2, image_size=(120, 160))
    assert len(VOCDataset(root, "trainval")) == 3
    assert not os.path.exists(os.path.join(root, "JPEGImages", "000010.jpg"))


def test_interrupted_write_leaves_no_folder_behind(tmp_path, monkeypatch):
    calls = []

    def failing(rng, image_size):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return render_scene(rng, image_size)

    monkeypatch.setattr(synthetic, "render_scene", failing)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_voc(tmp_path / "syn", **SMALL)
    assert os.listdir(tmp_path) == []


def test_a_folder_that_is_not_a_synthetic_set_is_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mine"):
        write_synthetic_voc(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a = write_synthetic_voc(tmp_path / "a", seed=5, **SMALL)
    b = write_synthetic_voc(tmp_path / "b", seed=5, **SMALL)
    c = write_synthetic_voc(tmp_path / "c", seed=6, **SMALL)
    read = lambda root: open(os.path.join(root, "JPEGImages", "000001.jpg"), "rb").read()
    assert read(a) == read(b) != read(c)
    xml = lambda root: open(os.path.join(root, "Annotations", "000007.xml")).read()
    assert xml(a) == xml(b)


def test_scenes_have_every_class_varied_sizes_overlaps_and_difficult_objects():
    labels, sizes, difficult, overlapping = [], [], 0, 0
    for k in range(80):
        image, boxes, names, diff = render_scene(np.random.default_rng([9, k]), (240, 320))
        labels += names
        sizes += list(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1)
        difficult += int(diff.sum())
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
                ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
                overlapping += iw > 0 and ih > 0
    assert set(labels) == set(CLASSES)
    assert 1 <= len(labels) / 80 <= 4
    assert np.percentile(sizes, 10) >= 30 and np.percentile(sizes, 90) <= 125 and max(sizes) - min(sizes) > 60
    assert difficult > 0 and overlapping > 0


def test_colour_alone_does_not_tell_the_classes_apart():
    # Nearest class-mean classifier on an object's mean colour, fitted on half, scored on the rest:
    # near chance (1/5) because every class draws its colours from the same distribution.
    features, labels = [], []
    for k in range(120):
        image, boxes, names, diff = render_scene(np.random.default_rng([11, k]), (120, 160))
        for box, name, d in zip(boxes.astype(int), names, diff):
            if not d:
                features.append(image[box[1]:box[3] + 1, box[0]:box[2] + 1].reshape(-1, 3).mean(0))
                labels.append(CLASSES.index(name))
    x, y = np.array(features), np.array(labels)
    half = len(y) // 2
    means = np.stack([x[:half][y[:half] == c].mean(0) for c in range(len(CLASSES))])
    predicted = np.argmin(((x[half:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == y[half:]).mean() < 0.35
