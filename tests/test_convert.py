"""`minidet convert`: VOC -> COCO keeps every object as written, COCO -> VOC writes a whole folder or nothing,
and both round trips give back the annotations."""
import json
import os
import warnings

import cv2
import numpy as np
import pytest

from minidet.convert import coco_to_voc_folder, main, voc_folder_to_coco, voc_to_coco_dict
from minidet.data.coco import COCODataset
from minidet.data.voc import AnnotationError, VOCDataset
from tests.test_data_coco import write_coco
from tests.test_data_voc import write_folder

# 1-based VOC boxes: a normal one, a difficult one, a point (xmax == xmin), one a pixel past the border
IMAGES = {
    "a": (40, 60, [("cat", 1, 2, 30, 20, 0), ("dog", 10, 10, 61, 41, 1)]),
    "b": (50, 30, [("dog", 5, 6, 5, 6, 0), ("cat", 3, 4, 12, 30, 0)]),
    "c": (20, 20, []),
}


@pytest.fixture
def voc(tmp_path):
    return write_folder(tmp_path / "voc", IMAGES)


def voc_dataset(root, split="trainval"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # the point box is dropped with a warning
        return VOCDataset(root, split)


def assert_same_annotations(a, b):
    assert a.ids == b.ids and a.class_names == b.class_names
    for i in range(len(a)):
        x, y = a.annotation(i), b.annotation(i)
        for key in ("boxes", "labels", "difficult"):
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{key} of {a.ids[i]}")
        assert a.image_size(i) == b.image_size(i)


def test_voc2coco_keeps_every_object_as_written(voc, tmp_path, capsys):
    out = str(tmp_path / "out" / "trainval.json")
    assert main(["voc2coco", voc, "--split", "trainval", "--out", out]) == 0
    assert "3 images, 4 objects, 2 categories" in capsys.readouterr().out
    with open(out) as f:
        coco = json.load(f)
    assert coco["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert coco["images"][1] == {"id": 2, "file_name": "b.jpg", "width": 30, "height": 50}
    bboxes = [(a["image_id"], a["category_id"], a["bbox"], a["iscrowd"], a["difficult"]) for a in coco["annotations"]]
    assert bboxes == [(1, 1, [0, 1, 30, 19], 0, 0),
                      (1, 2, [9, 9, 52, 32], 1, 1),          # past the border by a pixel: not clamped
                      (2, 2, [4, 5, 1, 1], 0, 0),            # the point: one pixel in COCO
                      (2, 1, [2, 3, 10, 27], 0, 0)]
    assert [a["area"] for a in coco["annotations"]] == [570, 52 * 32, 1, 270]
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3, 4]


def test_voc2coco_classes_from_the_option_when_there_is_no_classes_txt(tmp_path):
    root = write_folder(tmp_path / "voc", {"a": (40, 60, [("emu", 1, 2, 30, 20, 0)])}, classes=None)
    coco = voc_folder_to_coco(root, "trainval", ["kiwi", "emu"])
    assert coco["categories"] == [{"id": 1, "name": "kiwi"}, {"id": 2, "name": "emu"}]
    assert coco["annotations"][0]["category_id"] == 2
    with pytest.raises(AnnotationError, match=r"a.xml: object 0 \(emu\) has unknown class name"):
        voc_folder_to_coco(root, "trainval")          # VOC's 20 classes have no emu


def test_in_memory_conversion_is_the_dataset_as_it_reads(voc):
    ds = voc_dataset(voc)
    coco = voc_to_coco_dict(ds)
    # the point box is gone and the border box clipped, as VOCDataset reads them
    assert [(a["image_id"], a["bbox"], a["iscrowd"]) for a in coco["annotations"]] == [
        (1, [0, 1, 30, 19], 0), (1, [9, 9, 51, 31], 1), (2, [2, 3, 10, 27], 0)]
    assert [im["file_name"] for im in coco["images"]] == ["a.jpg", "b.jpg", "c.jpg"]


def test_voc_to_coco_to_voc_gives_the_same_annotations(voc, tmp_path):
    json_path = str(tmp_path / "trainval.json")
    assert main(["voc2coco", voc, "--out", json_path]) == 0
    back = str(tmp_path / "back")
    assert main(["coco2voc", json_path, "--images", os.path.join(voc, "JPEGImages"), "--out", back,
                 "--split", "trainval", "--no-progress"]) == 0
    assert_same_annotations(voc_dataset(voc), voc_dataset(back))
    for image_id in IMAGES:
        with open(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), "rb") as f, \
                open(os.path.join(back, "JPEGImages", f"{image_id}.jpg"), "rb") as g:
            assert f.read() == g.read()
    with open(os.path.join(back, "classes.txt")) as f:
        assert f.read() == "cat\ndog\n"


def test_coco_to_voc_to_coco_gives_the_same_boxes(tmp_path):
    data = {"images": [{"id": 11, "file_name": "x.jpg", "width": 60, "height": 40},
                       {"id": 12, "file_name": "y.jpg", "width": 30, "height": 50}],
            "categories": [{"id": 3, "name": "cat"}, {"id": 8, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 11, "category_id": 8, "bbox": [2, 3, 20, 10], "area": 200},
                            {"id": 2, "image_id": 11, "category_id": 3, "bbox": [0, 0, 60, 40], "area": 2400,
                             "iscrowd": 1},
                            {"id": 5, "image_id": 12, "category_id": 3, "bbox": [29, 49, 1, 1], "area": 1}]}
    path, images = write_coco(str(tmp_path / "coco"), data)
    folder, split = coco_to_voc_folder(path, images, str(tmp_path / "voc"), progress=False)
    assert split == "instances" and os.path.isfile(os.path.join(folder, "ImageSets", "Main", "instances.txt"))
    again = voc_folder_to_coco(folder, split)
    assert [im["file_name"] for im in again["images"]] == ["x.jpg", "y.jpg"]
    assert [c["name"] for c in again["categories"]] == ["cat", "dog"]
    names = {c["id"]: c["name"] for c in data["categories"]}
    names_again = {c["id"]: c["name"] for c in again["categories"]}
    files = {im["id"]: im["file_name"] for im in data["images"]}
    files_again = {im["id"]: im["file_name"] for im in again["images"]}
    before = sorted((files[a["image_id"]], names[a["category_id"]], a["bbox"], a.get("iscrowd", 0))
                    for a in data["annotations"])
    after = sorted((files_again[a["image_id"]], names_again[a["category_id"]], a["bbox"], a["iscrowd"])
                   for a in again["annotations"])
    assert before == after


def test_coco2voc_rounds_fractional_boxes_to_whole_pixels_without_turning_them_inside_out(tmp_path):
    data = {"images": [{"id": 1, "file_name": "x.jpg", "width": 60, "height": 40}],
            "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2.4, 3.6, 20.2, 10.0]},
                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10.6, 5, 0.3, 4]}]}
    path, images = write_coco(str(tmp_path / "coco"), data)
    folder, split = coco_to_voc_folder(path, images, str(tmp_path / "voc"), split="train", progress=False)
    coco = voc_folder_to_coco(folder, "train")
    # (2.4, 3.6, 21.6, 12.6) -> (2, 4, 22, 13); the sliver (10.6, 5, 9.9, 8) -> (11, 5, 11, 8)
    assert [a["bbox"] for a in coco["annotations"]] == [[2, 4, 21, 10], [11, 5, 1, 4]]


def test_coco2voc_links_or_reencodes_images(tmp_path):
    data = {"images": [{"id": 1, "file_name": "x.jpg", "width": 16, "height": 8},
                       {"id": 2, "file_name": "deep/y z.png", "width": 8, "height": 16}],
            "categories": [{"id": 1, "name": "cat"}], "annotations": []}
    path, images = write_coco(str(tmp_path / "coco"), data)
    folder, _ = coco_to_voc_folder(path, images, str(tmp_path / "voc"), split="all", link=True, progress=False)
    assert os.path.islink(os.path.join(folder, "JPEGImages", "x.jpg"))
    png_as_jpeg = os.path.join(folder, "JPEGImages", "y_z.jpg")       # whitespace cannot be in a split file
    with open(png_as_jpeg, "rb") as f:
        assert f.read(2) == b"\xff\xd8"                               # a JPEG now
    ds = VOCDataset(folder, "all")
    assert ds.ids == ["x", "y_z"] and ds[1]["image"].shape == (16, 8, 3)


def test_coco2voc_leaves_nothing_when_it_fails_and_never_overwrites(tmp_path, capsys):
    data = {"images": [{"id": 1, "file_name": "x.jpg", "width": 16, "height": 8},
                       {"id": 2, "file_name": "y.png", "width": 16, "height": 8}],
            "categories": [{"id": 1, "name": "cat"}], "annotations": []}
    path, images = write_coco(str(tmp_path / "coco"), data)
    with open(os.path.join(images, "y.png"), "wb") as f:
        f.write(b"not a picture")
    out = tmp_path / "voc"
    assert main(["coco2voc", path, "--images", images, "--out", str(out), "--no-progress"]) == 2
    assert "y.png: cannot be decoded" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["coco"]                   # no folder, no temporary one
    out.mkdir()
    assert main(["coco2voc", path, "--images", images, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_coco2voc_refuses_two_images_of_one_name(tmp_path):
    data = {"images": [{"id": 1, "file_name": "a/x.jpg", "width": 16, "height": 8},
                       {"id": 2, "file_name": "b/x.jpg", "width": 16, "height": 8}],
            "categories": [{"id": 1, "name": "cat"}], "annotations": []}
    path, images = write_coco(str(tmp_path / "coco"), data)
    with pytest.raises(AnnotationError, match=r"images 'a/x.jpg' and 'b/x.jpg' would both be x.jpg"):
        coco_to_voc_folder(path, images, str(tmp_path / "voc"), progress=False)


def test_voc2coco_leaves_the_old_file_when_it_fails(voc, tmp_path, capsys):
    out = tmp_path / "trainval.json"
    out.write_text("old")
    with open(os.path.join(voc, "Annotations", "b.xml"), "w") as f:
        f.write("<annotation><size>")
    assert main(["voc2coco", voc, "--out", str(out)]) == 2
    assert "b.xml: malformed XML" in capsys.readouterr().err
    assert out.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["trainval.json", "voc"]


def test_voc2coco_rejects_an_inside_out_box(tmp_path):
    root = write_folder(tmp_path / "voc", {"a": (40, 60, [("cat", 20, 2, 10, 20, 0)])})
    with pytest.raises(AnnotationError, match=r"a.xml: object 0 \(cat\) has xmax < xmin"):
        voc_folder_to_coco(root)


def test_voc2coco_checks_the_xml_as_the_voc_reader_does(tmp_path):
    root = write_folder(tmp_path / "voc", {"a": (40, 60, [("cat", 1, 2, 64, 20, 0)])})
    for read in (voc_folder_to_coco, VOCDataset):
        with pytest.raises(AnnotationError, match=r"a.xml: object 0 \(cat\) box \(1, 2, 64, 20\) lies outside "
                                                  r"the 60x40 image"):
            read(root)


def test_convert_help_names_both_directions(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "voc2coco" in text and "coco2voc" in text
    for command in ("voc2coco", "coco2voc"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--out" in capsys.readouterr().out


def test_converted_folder_reads_the_same_through_both_readers(voc, tmp_path):
    coco = voc_folder_to_coco(voc)
    path = str(tmp_path / "x.json")
    with open(path, "w") as f:
        json.dump(coco, f)
    a = voc_dataset(voc)
    with pytest.warns(UserWarning, match="pixel wide or high"):
        b = COCODataset(path, os.path.join(voc, "JPEGImages"))
    # the one-pixel box (a point in VOC's XML) is counted as written and, by both readers, not trained on
    np.testing.assert_array_equal(b.annotation(1, as_written=True)["boxes"], [[4, 5, 4, 5], [2, 3, 11, 29]])
    for i in (0, 1, 2):
        for key in ("boxes", "labels", "difficult"):
            np.testing.assert_array_equal(a.annotation(i)[key], b.annotation(i)[key])
    np.testing.assert_array_equal(b.annotation(0)["crowd"], [False, True])
    assert cv2.imread(b.image_path(0)).shape == (40, 60, 3)
