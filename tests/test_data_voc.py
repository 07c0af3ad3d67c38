"""The VOC reader on small folders written here: coordinates, classes, flags, and errors that name the file."""
import os

import cv2
import numpy as np
import pytest

from minidet.data.voc import (VOC_CLASSES, AnnotationError, VOCDataset, drop_difficult, parse_voc_xml,
                              write_voc_xml)

XML = """<annotation>
  <filename>{id}.jpg</filename>
  <path>/somewhere/else/{id}.jpg</path>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  {objects}
</annotation>"""
OBJECT = """<object><name>{name}</name><difficult>{difficult}</difficult>
  <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"""


def write_folder(root, images, classes=("cat", "dog"), split="trainval"):
    """images: {id: (h, w, [(name, x1, y1, x2, y2 1-based, difficult), ...])}; returns root."""
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for image_id, (h, w, objects) in images.items():
        body = "".join(OBJECT.format(name=n, x1=x1, y1=y1, x2=x2, y2=y2, difficult=int(d))
                       for n, x1, y1, x2, y2, d in objects)
        with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(XML.format(id=image_id, w=w, h=h, objects=body))
        image = np.full((h, w, 3), 7 * len(image_id), np.uint8)
        cv2.imwrite(os.path.join(root, "JPEGImages", f"{image_id}.jpg"), image)
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("\n".join(images) + "\n")
    if classes is not None:
        with open(os.path.join(root, "classes.txt"), "w") as f:
            f.write("\n".join(classes) + "\n")
    return str(root)


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "voc", {
        "a": (40, 60, [("cat", 1, 2, 30, 20, 0), ("dog", 10, 10, 60, 40, 1)]),
        "b": (50, 30, [("dog", 5, 6, 7, 8, 0)]),
    })


def test_boxes_become_zero_based_pixel_inclusive(folder):
    ds = VOCDataset(folder)
    ex = ds[0]
    np.testing.assert_array_equal(ex["boxes"], [[0, 1, 29, 19], [9, 9, 59, 39]])
    assert ex["boxes"].dtype == np.float32
    np.testing.assert_array_equal(ex["labels"], [1, 2])
    assert ex["labels"].dtype == np.int64
    np.testing.assert_array_equal(ex["difficult"], [False, True])
    assert ex["id"] == "a" and ex["image"].shape == (40, 60, 3) and ex["image"].dtype == np.uint8
    assert len(ds) == 2 and ds.ids == ["a", "b"] and ds.image_size(1) == (50, 30)


def test_class_names_from_classes_txt_then_argument_then_voc(tmp_path):
    images = {"a": (20, 20, [("person", 1, 1, 10, 10, 0)])}
    with_file = write_folder(tmp_path / "f", {"a": (20, 20, [("b", 1, 1, 10, 10, 0)])}, classes=("a", "b"))
    assert VOCDataset(with_file, class_names=["x", "b"]).class_names == ("a", "b")
    plain = write_folder(tmp_path / "p", images, classes=None)
    assert VOCDataset(plain).class_names == VOC_CLASSES and len(VOC_CLASSES) == 20
    assert VOCDataset(plain).annotation(0)["labels"][0] == VOC_CLASSES.index("person") + 1
    assert VOCDataset(plain, class_names=["person"]).annotation(0)["labels"][0] == 1


def test_difficult_objects_are_flagged_and_can_be_dropped(folder):
    ex = drop_difficult(VOCDataset(folder)[0])
    np.testing.assert_array_equal(ex["boxes"], [[0, 1, 29, 19]])
    np.testing.assert_array_equal(ex["labels"], [1])
    assert not ex["difficult"].any()


def test_single_point_box_is_dropped_with_a_warning_naming_file_and_object(tmp_path):
    root = write_folder(tmp_path / "v", {"p": (30, 30, [("cat", 3, 3, 9, 9, 0), ("dog", 5, 7, 5, 7, 0)])})
    with pytest.warns(UserWarning) as record:
        ds = VOCDataset(root)
    message = " ".join(str(w.message) for w in record)
    assert os.path.join("Annotations", "p.xml") in message and "object 1 (dog)" in message
    np.testing.assert_array_equal(ds.annotation(0)["boxes"], [[2, 2, 8, 8]])


def test_as_written_keeps_every_object_with_its_box_as_annotated(tmp_path):
    # a point (5, 7, 5, 7), a one-pixel-wide line (12, 2, 12, 20), a box one past the border
    # (xmin 0 and ymax 31 in a 40x30 image, 1-based), a difficult one: the devkit counts all four
    objects = [("cat", 3, 3, 9, 9, 0), ("dog", 5, 7, 5, 7, 0), ("cat", 12, 2, 12, 20, 0),
               ("dog", 0, 2, 41, 31, 0), ("cat", 20, 5, 30, 15, 1)]
    root = write_folder(tmp_path / "v", {"w": (30, 40, objects)})
    with pytest.warns(UserWarning, match="no extent"):
        ds = VOCDataset(root)
    written = ds.annotation(0, as_written=True)
    np.testing.assert_array_equal(written["boxes"], [[2, 2, 8, 8], [4, 6, 4, 6], [11, 1, 11, 19],
                                                     [-1, 1, 40, 30], [19, 4, 29, 14]])
    np.testing.assert_array_equal(written["labels"], [1, 2, 1, 2, 1])
    np.testing.assert_array_equal(written["difficult"], [False, False, False, False, True])
    assert written["id"] == "w"
    training = ds.annotation(0)          # the point and the line left out, the border box clipped
    np.testing.assert_array_equal(training["boxes"], [[2, 2, 8, 8], [0, 1, 39, 29], [19, 4, 29, 14]])
    np.testing.assert_array_equal(training["labels"], [1, 2, 1])
    np.testing.assert_array_equal(ds[0]["boxes"], training["boxes"])
    written["boxes"][:] = 0               # copies: the data set keeps its own
    assert ds.annotation(0, as_written=True)["boxes"][1, 0] == 4


def test_box_touching_the_border_is_read_and_clipped(tmp_path):
    # 1-based xmax == W is the last column; W + 1 (one past) is within the tolerance and is clipped.
    root = write_folder(tmp_path / "v", {"e": (30, 40, [("cat", 1, 1, 40, 30, 0), ("dog", 0, 2, 41, 31, 0)])})
    np.testing.assert_array_equal(VOCDataset(root).annotation(0)["boxes"], [[0, 0, 39, 29], [0, 1, 39, 29]])


@pytest.mark.parametrize("box", [(1, 1, 45, 10), (-3, 1, 10, 10), (1, 1, 10, 35)])
def test_box_outside_the_image_is_an_error_naming_the_file(tmp_path, box):
    root = write_folder(tmp_path / "v", {"o": (30, 40, [("cat", *box, 0)])})
    with pytest.raises(AnnotationError, match=r"o\.xml.*outside"):
        VOCDataset(root)


def test_unknown_class_is_an_error_naming_file_and_class(tmp_path):
    root = write_folder(tmp_path / "v", {"u": (30, 40, [("horse", 1, 1, 10, 10, 0)])})
    with pytest.raises(AnnotationError, match=r"u\.xml.*'horse'"):
        VOCDataset(root)


def test_malformed_xml_is_an_error_naming_the_file(folder):
    with open(os.path.join(folder, "Annotations", "b.xml"), "w") as f:
        f.write("<annotation><size><width>3</width></annotation")
    with pytest.raises(AnnotationError, match=r"b\.xml.*malformed"):
        VOCDataset(folder)


def test_missing_size_is_an_error_naming_the_file(tmp_path):
    root = write_folder(tmp_path / "v", {"s": (30, 40, [])})
    with open(os.path.join(root, "Annotations", "s.xml"), "w") as f:
        f.write("<annotation><filename>s.jpg</filename></annotation>")
    with pytest.raises(AnnotationError, match=r"s\.xml.*size"):
        VOCDataset(root)


def test_inverted_box_is_an_error(tmp_path):
    root = write_folder(tmp_path / "v", {"i": (30, 40, [("cat", 10, 1, 5, 10, 0)])})
    with pytest.raises(AnnotationError, match=r"i\.xml.*xmax < xmin"):
        VOCDataset(root)


@pytest.mark.parametrize("missing", [os.path.join("ImageSets", "Main", "trainval.txt"),
                                     os.path.join("Annotations", "b.xml"), os.path.join("JPEGImages", "b.jpg")])
def test_missing_file_is_an_error_naming_it(folder, missing):
    os.remove(os.path.join(folder, missing))
    with pytest.raises(FileNotFoundError, match=missing.replace("\\", "\\\\").replace(".", r"\.")):
        VOCDataset(folder)


def test_image_that_disagrees_with_its_annotation_is_an_error(folder):
    cv2.imwrite(os.path.join(folder, "JPEGImages", "b.jpg"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(AnnotationError, match=r"b\.jpg.*10x10"):
        VOCDataset(folder)[1]


def test_xml_path_is_ignored_and_split_lines_with_flags_are_read(folder):
    with open(os.path.join(folder, "ImageSets", "Main", "cat_trainval.txt"), "w") as f:
        f.write("a  1\nb -1\n")
    ds = VOCDataset(folder, split="cat_trainval")
    assert ds.ids == ["a", "b"] and ds[1]["image"].shape == (50, 30, 3)


def test_write_voc_xml_round_trips(tmp_path):
    path = str(tmp_path / "x.xml")
    boxes = np.array([[0, 0, 9, 4], [3, 2, 17, 11]], np.float32)
    write_voc_xml(path, "x.jpg", (12, 20), boxes, ["dog", "cat"], difficult=[True, False])
    a = parse_voc_xml(path, {"cat": 1, "dog": 2})
    assert a["size"] == (12, 20)
    np.testing.assert_array_equal(a["boxes"], boxes)
    np.testing.assert_array_equal(a["labels"], [2, 1])
    np.testing.assert_array_equal(a["difficult"], [True, False])
