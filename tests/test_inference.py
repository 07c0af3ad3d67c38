"""A model over a data set: ground truth as written, detection at one or several scales, the table, the commands."""
import json

import numpy as np
import pytest

from minidet.convention import CAFFE
from minidet.data.voc import VOCDataset
from minidet.inference import detect_dataset, evaluate_detections, format_table, ground_truth, scales_from_arguments
from minidet.nn.roi_pool import RoIPool
from tests.test_data_voc import write_folder


@pytest.fixture
def written_folder(tmp_path):
    # image "a" (30x40): a cat, a one-pixel point of a dog (1-based 5,7,5,7), and a 2x2 cat in the
    # corner written one pixel past the border (1-based 0,0,1,1: 0-based -1,-1,0,0)
    return write_folder(tmp_path / "voc", {
        "a": (30, 40, [("cat", 3, 3, 9, 9, 0), ("dog", 5, 7, 5, 7, 0), ("cat", 0, 0, 1, 1, 0)]),
        "b": (30, 40, [("dog", 10, 10, 20, 20, 0)]),
    })


def test_ground_truth_is_every_object_as_written(written_folder):
    with pytest.warns(UserWarning, match="no extent"):
        dataset = VOCDataset(written_folder)
    boxes, labels, difficult = ground_truth(dataset)
    np.testing.assert_array_equal(boxes[0], [[2, 2, 8, 8], [4, 6, 4, 6], [-1, -1, 0, 0]])
    np.testing.assert_array_equal(labels[0], [1, 2, 1])
    np.testing.assert_array_equal(boxes[1], [[9, 9, 19, 19]])
    assert not np.concatenate(difficult).any()


def test_evaluation_counts_the_objects_as_the_devkit_does(written_folder):
    # Detections: the cat exactly (TP), the dog's point exactly (TP: the devkit counts it, +1 areas
    # make it one pixel), the corner cat as training sees it, clipped to (0, 0, 0, 0): against the
    # written 2x2 box its IoU is 1/4 -> FP, and that cat stays missed; image b's dog exactly (TP).
    # cat: 0.9 TP, 0.7 FP over 2 objects: precision 1, 1/2; recall 1/2, 1/2 -> 11-point AP 6/11
    # dog: 0.8 TP, 0.6 TP over 2 objects -> AP 1
    with pytest.warns(UserWarning):
        dataset = VOCDataset(written_folder)
    boxes = [np.array([[2, 2, 8, 8], [4, 6, 4, 6], [0, 0, 0, 0]], np.float32), np.array([[9, 9, 19, 19]], np.float32)]
    labels = [np.array([1, 2, 1]), np.array([2])]
    scores = [np.array([0.9, 0.8, 0.7], np.float32), np.array([0.6], np.float32)]
    result = evaluate_detections(dataset, boxes, labels, scores)
    assert result["ap_by_class"]["cat"] == pytest.approx(6 / 11)
    assert result["ap_by_class"]["dog"] == pytest.approx(1.0)
    assert result["map"] == pytest.approx((6 / 11 + 1) / 2)
    table = format_table(result, dataset.class_names)
    assert table.splitlines()[1].split() == ["cat", "54.5"] and table.splitlines()[-1].split() == ["mAP", "77.3"]


class ConstantModel:
    """forward() that scores class 1 at 0.9 for every RoI and predicts zero deltas."""

    dtype = np.float32
    roi_pool = RoIPool()          # which RoIs read the same cells, for the dedup

    def forward(self, images, rois):
        cls_score = np.tile(np.log(np.array([0.1, 0.9], np.float32)), (len(rois), 1))
        return cls_score, np.zeros((len(rois), 8), np.float32)


@pytest.mark.parametrize("scale", [30, (30,), (20, 30, 60)])
def test_detect_dataset_runs_every_image_at_one_or_several_scales(written_folder, scale):
    with pytest.warns(UserWarning):
        dataset = VOCDataset(written_folder)
    proposals = [np.array([[2, 2, 8, 8], [20, 5, 35, 25]], np.float32), np.array([[9, 9, 19, 19]], np.float32)]
    boxes, labels, scores = detect_dataset(ConstantModel(), dataset, proposals, CAFFE, scale, 100,
                                           progress=False)
    # zero deltas: every proposal is its own detection of class 1 at 0.9, whatever the scales
    np.testing.assert_array_equal(boxes[0], proposals[0])
    np.testing.assert_array_equal(boxes[1], proposals[1])
    assert [len(l) for l in labels] == [2, 1] and all((s == np.float32(0.9)).all() for s in scores)


def test_detect_dataset_needs_one_proposal_set_per_image(written_folder):
    with pytest.warns(UserWarning):
        dataset = VOCDataset(written_folder)
    with pytest.raises(ValueError, match="1 proposal sets for 2 images"):
        detect_dataset(ConstantModel(), dataset, [np.zeros((0, 4))], CAFFE, progress=False)


def test_test_scales_from_the_command_line():
    class Args:
        scale, test_scales = 300, "180,240"

    with pytest.raises(ValueError, match="not both"):
        scales_from_arguments(Args)
    Args.scale, Args.test_scales = None, "0,240"
    with pytest.raises(ValueError, match="test scales must be positive"):
        scales_from_arguments(Args)
    Args.test_scales = "180,240"
    Args.scale = None
    assert scales_from_arguments(Args) == (180, 240)
    Args.test_scales, Args.scale = None, 300
    assert scales_from_arguments(Args) == 300


@pytest.mark.parametrize("module", ["examples/eval_voc.py", "minidet.inference"])
def test_eval_commands_offer_multi_scale_testing(module, capsys):
    import importlib.util
    import os

    if module.endswith(".py"):
        path = os.path.join(os.path.dirname(__file__), "..", module)
        spec = importlib.util.spec_from_file_location("eval_voc", path)
        main = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(main)
    else:
        main = importlib.import_module(module)
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--test-scales" in text and "--max-size" in text
    assert main.main(["--checkpoint", "nowhere.npz", "--data-dir", ".", "--scale", "300",
                      "--test-scales", "180,240"]) == 2
    assert "not both" in capsys.readouterr().err


def test_eval_takes_the_training_folder_recorded_in_the_model(tiny_voc, tmp_path, capsys):
    from minidet.inference import main
    from tests.test_train import run

    dataset, proposals = tiny_voc
    run(dataset, proposals, tmp_path, iters=1)
    assert main(["--checkpoint", str(tmp_path / "final.npz"), "--split", "trainval", "--no-progress",
                 "--proposals-dir", str(tmp_path / "cache")]) == 0
    assert f"data: {dataset.root} (recorded in the checkpoint)" in capsys.readouterr().out
    assert main(["--checkpoint", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz: no such file" in capsys.readouterr().err


def test_eval_takes_the_models_nms_and_cap_or_the_options_and_a_proposals_file(tiny_voc, tmp_path):
    """The recorded test_nms / test_max_per_image by default, --nms / --max-per-image when given, and
    --proposals FILE in place of selective search: each equal to detect_dataset run directly."""
    from minidet.data.external_proposals import save_npz_proposals
    from minidet.detect import load_model
    from minidet.inference import detect_dataset, evaluate_checkpoint, main
    from tests.test_train import run

    dataset, proposals = tiny_voc
    run(dataset, proposals, tmp_path, iters=2, test_nms=0.45, test_max_per_image=7)
    final, boxes_file = str(tmp_path / "final.npz"), str(tmp_path / "boxes.npz")
    save_npz_proposals(boxes_file, dataset, proposals)
    model, info = load_model(final)
    assert (info["nms"], info["max_per_image"]) == (0.45, 7)

    def direct(nms, cap):
        return detect_dataset(model, dataset, proposals, info["convention"], info["scale"], info["max_size"],
                              progress=False, nms_thresh=nms, max_per_image=cap)

    for given, expected in [({}, (0.45, 7)), ({"nms": 0.3, "max_per_image": 2}, (0.3, 2))]:
        summary = evaluate_checkpoint(final, dataset.root, "trainval", proposals_file=boxes_file, progress=False,
                                      log=lambda *a: None, **given)
        assert (summary["nms"], summary["max_per_image"]) == expected
        for got, want in zip(summary["detections"], direct(*expected)):
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b)
    assert max(len(s) for s in summary["detections"][2]) <= 2
    out = tmp_path / "eval"
    assert main(["--checkpoint", final, "--split", "trainval", "--no-progress", "--proposals", boxes_file,
                 "--nms", "0.3", "--max-per-image", "2", "--out", str(out)]) == 0
    with open(out / "eval_trainval.json") as f:
        written = json.load(f)
    assert (written["nms"], written["max_per_image"]) == (0.3, 2) and written["map"] == summary["map"]
    assert main(["--detections", str(out / "detections_trainval.json"), "--data-dir", str(dataset.root),
                 "--split", "trainval", "--nms", "0.5"]) == 2
