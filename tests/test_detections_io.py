"""Detections as files: COCO results and CSV round trips, pycocotools reads the results, bad files are named."""
import contextlib
import io
import json

import numpy as np
import pytest

from minidet.data.coco import COCODataset
from minidet.data.voc import VOCDataset
from minidet.detections_io import DetectionsError, load_detections, read_coco_results, write_detections
from tests.test_data_coco import write_coco
from tests.test_data_voc import write_folder


@pytest.fixture
def voc(tmp_path):
    return VOCDataset(write_folder(tmp_path / "voc", {"a,1": (40, 60, []), "b": (50, 30, []), "c": (20, 20, [])}))


@pytest.fixture
def coco(tmp_path):
    return COCODataset(*write_coco(str(tmp_path / "coco")))


def detections(rng, n_images, n_classes):
    """Per image: random float32 boxes with fractional coordinates, labels 1..K, scores; image 1 has none."""
    boxes, labels, scores = [], [], []
    for i in range(n_images):
        d = 0 if i == 1 else int(rng.integers(1, 6))
        xy = rng.uniform(0, 30, (d, 2))
        boxes.append(np.concatenate([xy, xy + rng.uniform(0.3, 20, (d, 2))], axis=1).astype(np.float32))
        labels.append(rng.integers(1, n_classes + 1, d).astype(np.int64))
        scores.append(rng.random(d).astype(np.float32))
    return boxes, labels, scores


@pytest.mark.parametrize("ext", [".json", ".csv"])
@pytest.mark.parametrize("which", ["voc", "coco"])
def test_detections_come_back_exactly(tmp_path, request, ext, which):
    dataset = request.getfixturevalue(which)
    written = detections(np.random.default_rng(0), len(dataset), len(dataset.class_names))
    path = write_detections(str(tmp_path / f"det{ext}"), dataset, *written)
    read = load_detections(path, dataset)
    for a, b in zip(written, read):
        assert len(a) == len(b) == len(dataset)
        for x, y in zip(a, b):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
    assert read[0][1].shape == (0, 4)


def test_csv_is_one_line_per_box_with_ids_and_class_names(tmp_path, voc):
    boxes = [np.array([[1, 2, 3.5, 4]], np.float32), np.zeros((0, 4), np.float32),
             np.array([[0, 0, 9, 9], [5, 5, 6, 7]], np.float32)]
    path = write_detections(str(tmp_path / "d.csv"), voc, boxes, [np.array([2]), np.array([], np.int64),
                                                                   np.array([1, 2])],
                            [np.array([0.5], np.float32), np.array([], np.float32), np.array([1, 0.25], np.float32)])
    with open(path) as f:
        assert f.read() == ("image_id,class,score,x1,y1,x2,y2\n"
                            '"a,1",dog,0.5,1.0,2.0,3.5,4.0\n'
                            "c,cat,1.0,0.0,0.0,9.0,9.0\nc,dog,0.25,5.0,5.0,6.0,7.0\n")


def test_coco_results_use_the_file_ids_and_continuous_boxes(tmp_path, coco):
    boxes = [np.array([[1, 2, 10, 4]], np.float32), np.zeros((0, 4), np.float32), np.array([[0, 0, 0, 0]], np.float32)]
    path = write_detections(str(tmp_path / "d.json"), coco, boxes, [np.array([2]), np.array([], np.int64),
                                                                    np.array([1])],
                            [np.array([0.5]), np.array([]), np.array([0.25])])
    with open(path) as f:
        assert json.load(f) == [dict(image_id=7, category_id=5, bbox=[1, 2, 10, 3], score=0.5),
                                dict(image_id=9, category_id=2, bbox=[0, 0, 1, 1], score=0.25)]


@pytest.mark.parametrize("which", ["voc", "coco"])
def test_pycocotools_loads_the_results_file(tmp_path, request, which):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    from minidet.coco_eval import coco_ground_truth

    dataset = request.getfixturevalue(which)
    written = detections(np.random.default_rng(1), len(dataset), len(dataset.class_names))
    path = write_detections(str(tmp_path / "det.json"), dataset, *written)
    gt = coco_ground_truth(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        results = gt.loadRes(path)
    assert isinstance(results, COCO) and len(results.getAnnIds()) == sum(len(b) for b in written[0])
    first = results.loadAnns(results.getAnnIds(imgIds=[gt.getImgIds()[0]]))[0]
    assert first["area"] == pytest.approx(first["bbox"][2] * first["bbox"][3])


def test_unknown_images_and_classes_are_named(tmp_path, voc):
    path = tmp_path / "d.csv"
    path.write_text("image_id,class,score,x1,y1,x2,y2\nb,cat,0.5,1,2,3,4\nz,cat,0.5,1,2,3,4\n")
    with pytest.raises(DetectionsError, match=r"d.csv: line 3 is of image 'z'"):
        load_detections(str(path), voc)
    path.write_text("image_id,class,score,x1,y1,x2,y2\nb,emu,0.5,1,2,3,4\n")
    with pytest.raises(DetectionsError, match=r"line 2 has class 'emu'; the classes are cat, dog"):
        load_detections(str(path), voc)
    path = tmp_path / "d.json"
    path.write_text(json.dumps([dict(image_id=4, category_id=1, bbox=[1, 2, 3, 4], score=0.5)]))
    with pytest.raises(DetectionsError, match=r"d.json: detection 0 is of image_id 4, which is not among"):
        load_detections(str(path), voc)
    path.write_text(json.dumps([dict(image_id=1, category_id=3, bbox=[1, 2, 3, 4], score=0.5)]))
    with pytest.raises(DetectionsError, match=r"detection 0 has category_id 3; the categories are \[1, 2\]"):
        load_detections(str(path), voc)


@pytest.mark.parametrize("text, message", [
    ("[{", "malformed JSON"),
    ('{"image_id": 1}', "a list of detections, not a dict"),
    ('[{"image_id": 1, "category_id": 1, "score": 1}]', "not an object with image_id, category_id, bbox and score"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 1}]', r"bbox \[1, 2, 3\] is not four"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": "high"}]', "score 'high' is not a finite"),
])
def test_malformed_results_file_is_named(tmp_path, text, message):
    path = tmp_path / "d.json"
    path.write_text(text)
    with pytest.raises(DetectionsError, match=message):
        read_coco_results(str(path))


@pytest.mark.parametrize("text, message", [
    ("", "the first line must be the header"),
    ("image,label\n", "the first line must be the header"),
    ("image_id,class,score,x1,y1,x2,y2\nb,cat,0.5,1,2,3\n", "line 2 has 6 fields, not 7"),
    ("image_id,class,score,x1,y1,x2,y2\nb,cat,x,1,2,3,4\n", "line 2: score and box are not numbers"),
    ("image_id,class,score,x1,y1,x2,y2\nb,cat,nan,1,2,3,4\n", "line 2: score and box must be finite"),
])
def test_malformed_csv_is_named(tmp_path, voc, text, message):
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(DetectionsError, match=f"d.csv: {message}"):
        load_detections(str(path), voc)


def test_other_formats_and_missing_files_are_refused(tmp_path, voc):
    with pytest.raises(ValueError, match=r"d.txt: detections are written as .json"):
        write_detections(str(tmp_path / "d.txt"), voc, [], [], [])
    with pytest.raises(DetectionsError, match=r"d.txt: detections are read from .json"):
        load_detections(str(tmp_path / "d.txt"), voc)
    with pytest.raises(FileNotFoundError, match="nothing.csv: detections file is missing"):
        load_detections(str(tmp_path / "nothing.csv"), voc)
    with pytest.raises(ValueError, match="3 image ids for 0 images"):
        write_detections(str(tmp_path / "d.json"), voc, [], [], [])
    assert not list(tmp_path.glob("d.*"))
