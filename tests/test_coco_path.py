"""COCO files through training and evaluation: a VOC folder converted to COCO reads, trains and scores
the same as the folder itself; detection files score as the evaluation that wrote them; the COCO
metrics written are pycocotools' own on the written files; missing or contradictory options are named."""
import contextlib
import io
import json
import os
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from minidet.checkpoint import load_npz
from minidet.convert import main as convert
from minidet.data.coco import COCODataset
from minidet.data.open import open_dataset
from minidet.data.voc import VOCDataset
from minidet.inference import main as evaluate
from tests.conftest import make_tiny_voc
from tests.examples import import_example
from tests.test_train import TINY_MODEL

TRAINING = ["--preset", "small", "--iters", "30", "--scales", "64", "--max-size", "200", "--rois-per-image", "16",
            "--model-kwargs", json.dumps(TINY_MODEL), "--progress", "false", "--proposal-workers", "0",
            "--proposal-mode", "single", "--checkpoint-every", "30"]


def read(path):
    with open(path) as f:
        return json.load(f)


def quiet(main, argv):
    """main(argv) -> (exit code, what it printed to stdout and stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


def converted(root, folder, splits=("trainval", "test")):
    """FOLDER/SPLIT.json of a VOC folder's splits, by `minidet convert voc2coco`."""
    os.makedirs(folder, exist_ok=True)
    for split in splits:
        argv = ["voc2coco", root, "--split", split, "--out", os.path.join(folder, f"{split}.json")]
        assert quiet(convert, argv)[0] == 0
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same short run of train_voc.py on the tiny VOC folder and on its COCO files."""
    from minidet.data.synthetic import write_synthetic_voc

    tmp = tmp_path_factory.mktemp("coco_path")
    root = write_synthetic_voc(str(tmp / "voc"), num_trainval=6, num_test=4, image_size=(64, 80))
    coco = converted(root, str(tmp / "coco"))
    images = os.path.join(root, "JPEGImages")
    voc_run, coco_run = str(tmp / "runs" / "voc"), str(tmp / "runs" / "coco")
    main = import_example("train_voc").main
    code, text = quiet(main, ["--data-dir", root, "--out", voc_run] + TRAINING)
    assert code == 0, text
    code, text = quiet(main, ["--coco-json", os.path.join(coco, "trainval.json"), "--images", images,
                              "--test-coco-json", os.path.join(coco, "test.json"), "--out", coco_run] + TRAINING)
    assert code == 0, text
    return SimpleNamespace(root=root, coco=coco, images=images, voc=voc_run, coco_run=coco_run, tmp=tmp)


def test_a_converted_voc_folder_reads_the_same_through_the_coco_path(tmp_path):
    root = make_tiny_voc(tmp_path / "voc")[0].root
    coco = converted(root, str(tmp_path / "files"))
    layout = tmp_path / "layout"                          # a COCO-layout folder of the same files
    (layout / "annotations").mkdir(parents=True)
    for split in ("trainval", "test"):
        shutil.copy(os.path.join(coco, f"{split}.json"), layout / "annotations" / f"instances_{split}.json")
    os.symlink(os.path.join(root, "JPEGImages"), layout / "trainval")     # the split's own image folder
    os.symlink(os.path.join(root, "JPEGImages"), layout / "images")       # the shared one, for test
    assert isinstance(open_dataset(root, "test"), VOCDataset)
    difficult = 0
    for split in ("trainval", "test"):
        voc = VOCDataset(root, split)
        for ds in (open_dataset(coco_json=os.path.join(coco, f"{split}.json"), images=os.path.join(root, "JPEGImages")),
                   open_dataset(str(layout), split)):
            assert isinstance(ds, COCODataset) and ds.class_names == voc.class_names and len(ds) == len(voc)
            for i in range(len(voc)):
                for as_written in (False, True):
                    a, b = voc.annotation(i, as_written), ds.annotation(i, as_written)
                    for key in ("boxes", "labels", "difficult"):
                        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} of {split} image {i}")
                np.testing.assert_array_equal(voc.load_image(i), ds.load_image(i))
            difficult += sum(ds.annotation(i)["difficult"].sum() for i in range(len(ds)))
    assert open_dataset(str(layout), "test").images_dir == str(layout / "images")
    assert difficult > 0                                  # the flag is carried, not merely absent


def test_a_one_pixel_box_is_left_out_of_training_on_both_paths_and_counted_in_evaluation(tmp_path):
    """VOC's xmin == xmax (a point or a line) is COCO's w == 1: both readers leave it out of training,
    with a warning naming the file, and keep it as written for evaluation."""
    from tests.test_data_voc import write_folder

    root = write_folder(tmp_path / "voc", {"a": (40, 60, [("cat", 1, 2, 30, 20, 0), ("dog", 5, 6, 5, 6, 0)]),
                                           "b": (50, 30, [("dog", 3, 4, 20, 4, 0)])})
    with pytest.warns(UserWarning, match="no extent"):
        voc = VOCDataset(root, "trainval")
    coco = converted(root, str(tmp_path / "files"), splits=("trainval",))
    with pytest.warns(UserWarning, match=r"trainval.json.*pixel wide or high"):
        ds = open_dataset(coco_json=os.path.join(coco, "trainval.json"), images=os.path.join(root, "JPEGImages"))
    for i, trained in enumerate((1, 0)):
        for as_written in (False, True):
            a, b = voc.annotation(i, as_written), ds.annotation(i, as_written)
            for key in ("boxes", "labels", "difficult"):
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} of image {i}")
        assert len(ds.annotation(i)["boxes"]) == trained and len(ds.annotation(i, as_written=True)["boxes"]) in (1, 2)
        assert len(ds[i]["labels"]) == trained


def test_open_dataset_names_the_path_when_no_layout_fits(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'}: no such folder"):
        open_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: neither a VOC-layout folder .* nor a COCO-layout"):
        open_dataset(str(tmp_path))
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2017.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="instances_test.json: no such file.*holds instances_train2017.json"):
        open_dataset(str(tmp_path), "test")
    with pytest.raises(FileNotFoundError, match=r"no image folder .*\(train2017/ or images/\)"):
        open_dataset(str(tmp_path), "train2017")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'pics'}: no such folder"):
        open_dataset(coco_json=str(tmp_path / "a.json"), images=str(tmp_path / "pics"))
    with pytest.raises(ValueError, match="not both"):
        open_dataset(str(tmp_path), coco_json="a.json", images=".")
    with pytest.raises(ValueError, match="needs --images"):
        open_dataset(coco_json="a.json")
    with pytest.raises(ValueError, match="give --coco-json too"):
        open_dataset(images=".")
    with pytest.raises(ValueError, match="no data set"):
        open_dataset()


def test_training_on_coco_files_equals_training_on_the_voc_folder(runs):
    voc_model, voc_meta = load_npz(os.path.join(runs.voc, "final.npz"))
    coco_model, coco_meta = load_npz(os.path.join(runs.coco_run, "final.npz"))
    assert sorted(voc_model) == sorted(coco_model)
    for name in voc_model:
        assert np.array_equal(voc_model[name], coco_model[name]), name
    assert coco_meta["class_names"] == voc_meta["class_names"] == list(VOCDataset(runs.root, "test").class_names)
    voc_metrics = read(os.path.join(runs.voc, "metrics.json"))
    coco_metrics = read(os.path.join(runs.coco_run, "metrics.json"))
    assert coco_metrics["map"] == voc_metrics["map"] and coco_metrics["ap"] == voc_metrics["ap"]
    assert coco_metrics["coco"] == voc_metrics["coco"]    # the synthetic boxes lie inside their images: no clipping
    assert coco_metrics["coco_json"].endswith("trainval.json") and coco_metrics["data_dir"] is None
    # the same detections, under the same COCO ids (convert numbers images and categories as coco_ids does)
    with open(os.path.join(runs.voc, "detections_test.json")) as a:
        with open(os.path.join(runs.coco_run, "detections_test.json")) as b:
            assert a.read() == b.read()
    assert len(read(os.path.join(runs.voc, "detections_test.json"))) > 0
    assert voc_metrics["map"] > 0 and voc_metrics["coco"]["AP"] > 0     # something to agree on
    # the proposals of a run on COCO files are cached beside the files
    assert len(os.listdir(os.path.join(runs.coco, "proposals_cache"))) == 6 + 4


def test_eval_finds_the_coco_files_a_model_was_trained_and_tested_on(runs, tmp_path):
    checkpoint = os.path.join(runs.coco_run, "final.npz")
    code, text = quiet(evaluate, ["--checkpoint", checkpoint, "--out", str(tmp_path / "test"), "--no-progress"])
    assert code == 0, text
    test_json = os.path.join(runs.coco, "test.json")
    assert f"data: {test_json} (images in {runs.images}) (recorded in the checkpoint)" in text
    assert read(tmp_path / "test" / "eval_test.json")["map"] == read(os.path.join(runs.coco_run, "metrics.json"))["map"]
    code, text = quiet(evaluate, ["--checkpoint", checkpoint, "--split", "trainval", "--out", str(tmp_path / "train"),
                                  "--no-progress"])
    assert code == 0 and "trainval.json" in text and read(tmp_path / "train" / "eval_trainval.json")["images"] == 6
    code, text = quiet(evaluate, ["--checkpoint", checkpoint, "--split", "val"])
    assert code == 2 and "splits test and trainval, not 'val'" in text


def test_evaluation_matches_a_files_categories_to_the_models_classes_by_name(runs, tmp_path):
    data = read(os.path.join(runs.coco, "test.json"))
    new_id = {c["id"]: 100 - c["id"] for c in data["categories"]}          # other ids, in the other order
    data["categories"] = [dict(c, id=new_id[c["id"]]) for c in reversed(data["categories"])]
    for a in data["annotations"]:
        a["category_id"] = new_id[a["category_id"]]
    path = str(tmp_path / "renumbered.json")
    with open(path, "w") as f:
        json.dump(data, f)
    code, text = quiet(evaluate, ["--checkpoint", os.path.join(runs.coco_run, "final.npz"), "--coco-json", path,
                                  "--images", runs.images, "--out", str(tmp_path), "--no-progress"])
    assert code == 0, text
    mine, theirs = read(tmp_path / "eval_renumbered.json"), read(os.path.join(runs.coco_run, "eval_test.json"))
    assert mine["map"] == theirs["map"] and mine["ap"] == theirs["ap"]
    # the same numbers, averaged over the classes in another order
    assert mine["coco"]["stats"] == pytest.approx(theirs["coco"]["stats"], rel=1e-12, abs=0)
    assert {r["category_id"] for r in read(tmp_path / "detections_renumbered.json")} <= set(new_id.values())


@pytest.mark.parametrize("written", ["voc/detections_test.json", "voc/detections_test.csv",
                                     "coco/detections_test.json", "coco/detections_test.csv"])
def test_a_detections_file_scores_as_the_evaluation_that_wrote_it(runs, tmp_path, written):
    run, name = written.split("/")
    folder = runs.voc if run == "voc" else runs.coco_run
    data = ["--data-dir", runs.root] if run == "voc" else ["--coco-json", os.path.join(runs.coco, "test.json"),
                                                           "--images", runs.images]
    code, text = quiet(evaluate, ["--detections", os.path.join(folder, name), "--out", str(tmp_path)] + data)
    assert code == 0, text
    mine, theirs = read(tmp_path / "eval_test.json"), read(os.path.join(folder, "eval_test.json"))
    assert mine["map"] == theirs["map"] and mine["ap"] == theirs["ap"] and mine["coco"] == theirs["coco"]
    assert mine["detections_file"] == os.path.join(folder, name)
    for other in ("json", "csv"):                         # written again, the same
        with open(tmp_path / f"detections_test.{other}") as a:
            with open(os.path.join(folder, f"detections_test.{other}")) as b:
                assert a.read() == b.read()


def test_a_detections_file_is_not_written_over_by_its_own_evaluation(runs, tmp_path):
    folder = shutil.copytree(runs.coco_run, tmp_path / "run")
    before = {ext: (folder / f"detections_test.{ext}").read_bytes() for ext in ("json", "csv")}
    source = os.stat(folder / "detections_test.csv")      # the source itself is neither replaced nor rewritten
    code, text = quiet(evaluate, ["--detections", str(folder / "detections_test.csv"), "--coco-json",
                                  os.path.join(runs.coco, "test.json"), "--images", runs.images])
    assert code == 0, text
    assert {ext: (folder / f"detections_test.{ext}").read_bytes() for ext in ("json", "csv")} == before
    after = os.stat(folder / "detections_test.csv")
    assert (after.st_ino, after.st_mtime_ns) == (source.st_ino, source.st_mtime_ns)
    assert read(folder / "eval_test.json")["map"] == read(os.path.join(runs.coco_run, "eval_test.json"))["map"]


@pytest.mark.parametrize("run", ["voc", "coco_run"])
def test_written_coco_metrics_are_cocoeval_on_the_written_files(runs, run):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    folder = getattr(runs, run)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.path.join(runs.coco, "test.json"))
        evaluator = COCOeval(gt, gt.loadRes(os.path.join(folder, "detections_test.json")), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    written = read(os.path.join(folder, "eval_test.json"))["coco"]
    assert written["stats"] == [float(s) for s in evaluator.stats]
    metrics = read(os.path.join(folder, "metrics.json"))["coco"]
    assert [metrics[k] for k in ("AP", "AP50", "AP75", "AR100")] == [evaluator.stats[k] for k in (0, 1, 2, 8)]
    assert set(metrics["ap_by_class"]) == set(read(os.path.join(folder, "metrics.json"))["ap"])


def test_without_pycocotools_eval_says_so_in_one_line_and_gives_the_voc_figures(runs, tmp_path, monkeypatch):
    for module in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, module, None)
    code, text = quiet(evaluate, ["--detections", os.path.join(runs.voc, "detections_test.json"),
                                  "--data-dir", runs.root, "--out", str(tmp_path)])
    assert code == 0, text
    assert [line for line in text.splitlines() if line.startswith("COCO")] == [
        "COCO metrics skipped: COCO evaluation needs pycocotools, a dependency of minidet that is missing "
        "here: pip install pycocotools"]
    summary = read(tmp_path / "eval_test.json")
    assert summary["coco"] is None and summary["map"] == read(os.path.join(runs.voc, "eval_test.json"))["map"]


def test_eval_names_missing_and_contradictory_options(runs, tmp_path):
    detections = os.path.join(runs.voc, "detections_test.json")
    checkpoint = os.path.join(runs.voc, "final.npz")
    test_json = os.path.join(runs.coco, "test.json")
    cases = [
        ([], "give --checkpoint (a model to evaluate) or --detections FILE (detections to score)"),
        (["--checkpoint", checkpoint, "--detections", detections], "not both"),
        (["--detections", str(tmp_path / "none.json"), "--data-dir", runs.root], "none.json: no such file"),
        (["--detections", detections], "--detections needs the data set it was made on; pass --data-dir"),
        (["--detections", detections, "--data-dir", runs.root, "--scale", "300"], "--detections has no model"),
        (["--detections", detections, "--data-dir", runs.root, "--coco-json", test_json, "--images", runs.images],
         "or a COCO file"),
        (["--detections", detections, "--coco-json", test_json], "needs --images"),
        (["--detections", detections, "--images", runs.images], "give --coco-json too"),
        (["--detections", detections, "--data-dir", str(tmp_path)], "neither a VOC-layout folder"),
        (["--detections", os.path.join(runs.voc, "log.jsonl"), "--data-dir", runs.root], "not .jsonl"),
    ]
    for argv, message in cases:
        code, text = quiet(evaluate, argv)
        assert code == 2 and message in text, (argv, text)


def test_train_voc_names_missing_and_contradictory_data_options_before_training(runs, tmp_path):
    main = import_example("train_voc").main
    train_json = os.path.join(runs.coco, "trainval.json")
    out = str(tmp_path / "run")
    cases = [
        (["--coco-json", train_json, "--images", runs.images], "no test set for a run on"),
        (["--coco-json", train_json], "needs --images"),
        (["--data-dir", runs.root, "--coco-json", train_json, "--images", runs.images], "not both"),
        (["--data-dir", runs.root, "--test-images", runs.images], "give --test-coco-json too"),
        (["--coco-json", str(tmp_path / "missing.json"), "--images", runs.images],
         "missing.json: annotation file is missing"),
    ]
    for argv, message in cases:
        code, text = quiet(main, argv + ["--out", out, "--preset", "small"])
        assert code == 2 and message in text, (argv, text)
        assert not os.path.exists(out)


def test_coco_files_given_as_options_replace_the_configs_data_and_name_the_run(runs, tmp_path):
    module = import_example("train_voc")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data_dir": runs.root, "preset": "small", "lr": 0.5}))
    args = module.parse_args(["--config", str(config), "--coco-json", os.path.join(runs.coco, "trainval.json"),
                              "--images", runs.images, "--no-eval"])
    dataset, settings, synthetic = module.choose_settings(args, log=lambda *a: None)
    assert isinstance(dataset, COCODataset) and len(dataset) == 6 and not synthetic
    assert "data_dir" not in settings and settings["lr"] == (0.5, "--config")
    assert settings["out"] == (os.path.join("runs", "trainval"), "the COCO file's name")
