"""Proposals from other tools' files (.npz, .pkl, .mat): round trips, layouts, errors, and a pickle that runs
no code."""
import os
import pickle

import numpy as np
import pytest
import scipy.io

from minidet.data.external_proposals import (ProposalsFileError, load_external_proposals, load_mat_proposals,
                                             save_npz_proposals)
from minidet.data.safe_pickle import UnsafePickleError, load_numpy_pickle


class ThreeImages:
    """A split of three images of 40x60 (H x W) with string ids; external proposals use ids and sizes only."""
    ids = ["img_a", "img_b", "img_c"]

    def __len__(self):
        return 3

    def image_size(self, i):
        return (40, 60)


@pytest.fixture
def boxes():
    """One (P, 4) float32 array per image, 0-based (x1, y1, x2, y2), inside 60 x 40."""
    return [np.array([[0, 0, 9, 9], [10, 5, 59, 39]], np.float32), np.zeros((0, 4), np.float32),
            np.array([[3, 4, 5, 6]], np.float32)]


def test_npz_round_trip(tmp_path, boxes):
    path = tmp_path / "props.npz"
    save_npz_proposals(path, ThreeImages(), boxes)
    back = load_external_proposals(path, ThreeImages(), clean=False)
    assert len(back) == 3
    for a, b in zip(boxes, back):
        assert b.dtype == np.float32 and b.shape == a.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickled_dict_and_list_round_trip(tmp_path, boxes, protocol):
    as_dict = tmp_path / "dict.pkl"
    with open(as_dict, "wb") as f:
        # float64 arrays and one list of lists, as other tools write them
        pickle.dump({"img_a": boxes[0].astype(np.float64), "img_b": boxes[1], "img_c": boxes[2].tolist(),
                     "other_split": boxes[0]}, f, protocol=protocol)
    as_list = tmp_path / "list.pkl"
    with open(as_list, "wb") as f:
        pickle.dump([b.astype(np.int32) for b in boxes], f, protocol=protocol)
    for path in (as_dict, as_list):
        for a, b in zip(boxes, load_external_proposals(path, ThreeImages(), clean=False)):
            assert b.dtype == np.float32
            np.testing.assert_array_equal(a, b)


def test_integer_ids_match_string_keys(tmp_path, boxes):
    class IntIds(ThreeImages):
        ids = [7, 8, 9]

    path = tmp_path / "props.npz"
    np.savez(path, **{"7": boxes[0], "8": boxes[1], "9": boxes[2]})
    np.testing.assert_array_equal(load_external_proposals(path, IntIds())[0], boxes[0])


def test_one_based_layouts_are_shifted_and_reordered(tmp_path, boxes):
    one_based = [b + 1 for b in boxes]
    path = tmp_path / "matlab.npz"
    np.savez(path, **dict(zip(ThreeImages.ids, one_based)))
    np.testing.assert_array_equal(load_external_proposals(path, ThreeImages(), "xyxy1")[0], boxes[0])
    yx = tmp_path / "yx.npz"
    np.savez(yx, **{i: b[:, [1, 0, 3, 2]] for i, b in zip(ThreeImages.ids, one_based)})
    np.testing.assert_array_equal(load_external_proposals(yx, ThreeImages(), "ss_original")[2], boxes[2])


def test_original_mat_file_is_read_by_its_image_names(tmp_path, boxes):
    # The original's per-split files: boxes (y1, x1, y2, x2) 1-based, and an `images` cell array,
    # here in another order than the split's.
    order = [2, 0, 1]
    cells = np.empty((len(order), 1), dtype=object)
    names = np.empty((len(order), 1), dtype=object)
    for row, i in enumerate(order):
        cells[row, 0] = (boxes[i][:, [1, 0, 3, 2]] + 1).astype(np.float64)
        names[row, 0] = ThreeImages.ids[i]
    path = str(tmp_path / "ss.mat")
    scipy.io.savemat(path, {"boxes": cells, "images": names})
    for a, b in zip(boxes, load_external_proposals(path, ThreeImages(), clean=False)):
        np.testing.assert_array_equal(a, b)
    # Without names the cells follow the split.
    scipy.io.savemat(path, {"boxes": cells})
    np.testing.assert_array_equal(load_external_proposals(path, ThreeImages(), clean=False)[0], boxes[2])


def test_boxes_reaching_past_the_image_are_clipped_and_cleaned(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, img_a=np.array([[-3, 5, 70, 45], [-3, 5, 70, 45], [1, 1, 1, 9]], np.float32),
             img_b=np.zeros((0, 4)), img_c=np.zeros((0, 4)))
    np.testing.assert_array_equal(load_external_proposals(path, ThreeImages())[0], [[0, 5, 59, 39]])
    assert len(load_external_proposals(path, ThreeImages(), clean=False)[0]) == 3
    assert len(load_external_proposals(path, ThreeImages(), max_boxes=0)[0]) == 0


@pytest.mark.parametrize("bad, message", [
    (np.array([[0, 0, 5]], np.float32), r"image 'img_b': boxes of shape \(1, 3\), not \(P, 4\)"),
    (np.array([[5, 0, 4, 9]], np.float32), r"box 0 \[5.0, 0.0, 4.0, 9.0\] \(read as xyxy0\) has x2 < x1"),
    (np.array([[0, 0, 9, 9], [61, 0, 70, 9]], np.float32), "box 1 .* lies outside the 60x40 image"),
    (np.array([[0, np.nan, 9, 9]], np.float32), "is not finite"),
    (np.array([["a", "b", "c", "d"]]), "not numbers"),
])
def test_bad_boxes_are_errors_that_name_file_image_and_box(tmp_path, boxes, bad, message):
    path = tmp_path / "p.npz"
    np.savez(path, img_a=boxes[0], img_b=bad, img_c=boxes[2])
    with pytest.raises(ProposalsFileError, match=message) as e:
        load_external_proposals(path, ThreeImages())
    assert str(path) in str(e.value)


def test_files_that_do_not_fit_the_split_are_errors(tmp_path, boxes):
    path = tmp_path / "p.npz"
    np.savez(path, img_a=boxes[0], img_c=boxes[2])
    with pytest.raises(ProposalsFileError, match="no proposals for image 'img_b'; the file has 2 images"):
        load_external_proposals(path, ThreeImages())
    short = tmp_path / "short.pkl"
    with open(short, "wb") as f:
        pickle.dump(boxes[:2], f)
    with pytest.raises(ProposalsFileError, match="holds 2 proposal sets in a list, but the split has 3"):
        load_external_proposals(short, ThreeImages())
    with open(short, "wb") as f:
        pickle.dump(boxes[0], f)
    with pytest.raises(ProposalsFileError, match="holds a ndarray, not a dict"):
        load_external_proposals(short, ThreeImages())
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(ProposalsFileError, match="unknown proposals format '.json'"):
        load_external_proposals(tmp_path / "p.json", ThreeImages())
    with pytest.raises(FileNotFoundError, match="proposals file is missing"):
        load_external_proposals(tmp_path / "none.npz", ThreeImages())
    with pytest.raises(ValueError, match="layout must be one of"):
        load_external_proposals(path, ThreeImages(), layout="yxyx0")
    scipy.io.savemat(str(tmp_path / "one.mat"), {"boxes": boxes[0]})
    with pytest.raises(ProposalsFileError, match="not a cell array with one array per image"):
        load_external_proposals(tmp_path / "one.mat", ThreeImages())


class RunsCode:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"img_a": RunsCode(marker)}, f)
    with pytest.raises(UnsafePickleError, match=r"evil.pkl: refused: the pickle names (posix|nt)\.system"):
        load_numpy_pickle(path)
    with pytest.raises(UnsafePickleError):
        load_external_proposals(path, ThreeImages())
    assert not marker.exists()
    # the unrestricted unpickler would have run it: the test's pickle is a real threat
    pickle.load(open(path, "rb"))
    assert marker.exists()


def test_restricted_unpickler_refuses_object_arrays_and_other_classes(tmp_path):
    path = tmp_path / "obj.pkl"
    with open(path, "wb") as f:
        pickle.dump({"img_a": np.array([None, 1], dtype=object)}, f)
    with pytest.raises(UnsafePickleError, match="dtype object"):
        load_numpy_pickle(path)
    with open(path, "wb") as f:
        pickle.dump({"img_a": np.float32}, f)
    with pytest.raises(UnsafePickleError, match="numpy.float32"):
        load_numpy_pickle(path)
    path.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_numpy_pickle(path)


def test_mat_proposals_in_the_original_layout(tmp_path):
    # Per image (y1, x1, y2, x2), 1-based, as the original per-split files.
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0] = np.array([[2, 1, 10, 20], [5, 5, 6, 6]], np.float64)
    cells[0, 1] = np.array([[1, 1, 3, 4]], np.float64)
    path = str(tmp_path / "voc_2007_trainval.mat")
    scipy.io.savemat(path, {"boxes": cells, "images": np.array(["a", "b"], dtype=object)})
    boxes = load_mat_proposals(path, layout="ss_original")
    assert len(boxes) == 2 and boxes[0].dtype == np.float32
    np.testing.assert_array_equal(boxes[0], [[0, 1, 19, 9], [4, 4, 5, 5]])
    np.testing.assert_array_equal(boxes[1], [[0, 0, 3, 2]])
    cleaned = load_mat_proposals(path, layout="ss_original", clean=True, min_size=3)
    np.testing.assert_array_equal(cleaned[0], [[0, 1, 19, 9]])


def test_mat_proposals_already_xyxy_zero_based(tmp_path):
    path = str(tmp_path / "demo_boxes.mat")
    scipy.io.savemat(path, {"boxes": np.array([[0, 1, 19, 9], [4, 4, 5, 5]], np.uint16)})
    np.testing.assert_array_equal(load_mat_proposals(path, layout="xyxy0"), [[0, 1, 19, 9], [4, 4, 5, 5]])
    np.testing.assert_array_equal(load_mat_proposals(path, layout="xyxy1"), [[-1, 0, 18, 8], [3, 3, 4, 4]])
    with pytest.raises(ValueError, match="cell array"):
        load_mat_proposals(path, layout="ss_original")
    with pytest.raises(KeyError, match="'rois'"):
        load_mat_proposals(path, layout="xyxy0", key="rois")


def test_old_import_of_the_mat_reader_still_works():
    from minidet.data import proposals

    assert proposals.load_mat_proposals is load_mat_proposals
