"""examples/demo.py on real kinds of input: a folder of images, a video, one image; the files it writes, and
its errors. The model is a tiny untrained one in final.npz's format: the detections need not be good."""
import contextlib
import importlib.util
import io
import json
import os

import cv2
import numpy as np
import pytest

from minidet.checkpoint import build_model, write_final
from minidet.convention import SCRATCH
from minidet.train_config import TrainConfig

DEMO = os.path.join(os.path.dirname(__file__), "..", "examples", "demo.py")
CLASSES = ("square", "disc", "bar")


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("minidet_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = TrainConfig(data_dir="unused", preset="small", scales=(64,), max_size=200, proposal_mode="single",
                         model_kwargs=dict(width=0.0625, fc_dim=32))
    model = build_model("small", len(CLASSES) + 1, seed=0, **config.model_kwargs)
    path = str(tmp_path_factory.mktemp("run") / "final.npz")
    write_final(path, model, config, CLASSES, SCRATCH, 0)
    return path


def picture(seed, shape=(64, 80)):
    """Blocks of colour on noise, for selective search to find something."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (*shape, 3), dtype=np.uint8)
    for _ in range(3):
        x, y = rng.integers(0, shape[1] - 20), rng.integers(0, shape[0] - 20)
        image[y:y + 16, x:x + 20] = rng.integers(100, 255, 3)
    return image


def coco_results(base):
    """pycocotools reads the results through the images file written beside them."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        images = COCO(f"{base}_images.json")
        results = images.loadRes(f"{base}.json")
    return images, results


def csv_rows(base):
    with open(f"{base}.csv") as f:
        lines = f.read().splitlines()
    assert lines[0] == "image_id,class,score,x1,y1,x2,y2"
    return [line.split(",") for line in lines[1:]]


def test_folder_of_images(demo, checkpoint, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, name in enumerate(("b.jpg", "a.png", "c.jpg")):
        cv2.imwrite(str(folder / name), picture(k))
    (folder / "notes.txt").write_text("not a picture")
    out = tmp_path / "annotated"
    argv = [str(folder), "--checkpoint", checkpoint, "--out", str(out), "--threshold", "0.1", "--no-progress"]
    assert demo(argv) == 0
    assert sorted(os.listdir(out)) == ["a.png", "b.jpg", "c.jpg", "detections.csv", "detections.json",
                                       "detections_images.json"]
    assert cv2.imread(str(out / "a.png")).shape == (64, 80, 3)
    images, results = coco_results(str(out / "detections"))
    assert [images.imgs[i]["file_name"] for i in sorted(images.imgs)] == ["a.png", "b.jpg", "c.jpg"]
    assert [c["name"] for c in images.loadCats(images.getCatIds())] == list(CLASSES)
    rows = csv_rows(str(out / "detections"))
    assert len(rows) == len(results.getAnnIds()) > 0
    assert {r[0] for r in rows} <= {"a.png", "b.jpg", "c.jpg"} and {r[1] for r in rows} <= set(CLASSES)
    assert "3 images" in capsys.readouterr().out
    # the proposals were cached, one file per image; a second run reads them and finds the same
    cache = tmp_path / "proposals_cache"
    assert len(os.listdir(cache)) == 3
    with open(out / "detections.json") as f:
        first = json.load(f)
    stamps = {n: os.path.getmtime(cache / n) for n in os.listdir(cache)}
    assert demo(argv) == 0
    assert {n: os.path.getmtime(cache / n) for n in os.listdir(cache)} == stamps
    with open(out / "detections.json") as f:
        assert json.load(f) == first


def write_video(path, frames):
    ext = os.path.splitext(path)[1]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*{".mp4": "mp4v", ".avi": "MJPG"}[ext]), 10.0,
                             (frames[0].shape[1], frames[0].shape[0]))
    if not writer.isOpened():
        pytest.skip(f"this OpenCV cannot write {ext} videos")
    for frame in frames:
        writer.write(frame)
    writer.release()


def count_frames(path):
    capture = cv2.VideoCapture(path)
    n = 0
    while capture.read()[0]:
        n += 1
    capture.release()
    return n


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_video(demo, checkpoint, tmp_path, ext):
    clip = str(tmp_path / f"clip{ext}")
    write_video(clip, [picture(k) for k in range(5)])
    out = str(tmp_path / "out" / f"annotated{ext}")
    assert demo([clip, "--checkpoint", checkpoint, "--out", out, "--threshold", "0.1", "--no-progress"]) == 0
    assert count_frames(out) == 5
    capture = cv2.VideoCapture(out)
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape == (64, 80, 3)
    base = os.path.splitext(out)[0]
    images, results = coco_results(base)
    assert [images.imgs[i]["file_name"] for i in sorted(images.imgs)] == [f"frame{n:06d}" for n in range(5)]
    assert len(csv_rows(base)) == len(results.getAnnIds())
    assert len(os.listdir(tmp_path / "out" / "proposals_cache")) == 5
    assert sorted(os.listdir(tmp_path / "out")) == sorted(["proposals_cache", f"annotated{ext}", "annotated.json",
                                                           "annotated_images.json", "annotated.csv"])


def test_one_image_prints_its_detections(demo, checkpoint, tmp_path, capsys):
    image = str(tmp_path / "x.jpg")
    cv2.imwrite(image, picture(3))
    out = str(tmp_path / "x_detections.png")
    assert demo([image, "--checkpoint", checkpoint, "--out", out, "--threshold", "0", "--no-cache",
                 "--detections", str(tmp_path / "dets" / "x"), "--no-progress"]) == 0
    assert cv2.imread(out).shape == (64, 80, 3)
    printed = capsys.readouterr().out
    rows = csv_rows(str(tmp_path / "dets" / "x"))
    assert printed.count("(") == len(rows) > 0          # every detection printed at threshold 0
    assert not (tmp_path / "proposals_cache").exists()


@pytest.mark.parametrize("case, message", [
    ("text file", "neither an image nor a video that OpenCV can decode"),
    ("broken video", "neither an image nor a video that OpenCV can decode"),
    ("missing input", "no such file or folder"),
    ("missing checkpoint", "no such checkpoint file"),
    ("not a model", "not a minidet model"),
    ("empty folder", "no image files"),
    ("video to png", "an annotated video is written as .mp4 or .avi"),
    ("picture kind", "OpenCV cannot write pictures of this kind"),
])
def test_bad_inputs_are_named(demo, checkpoint, tmp_path, capsys, case, message):
    image = str(tmp_path / "x.jpg")
    cv2.imwrite(image, picture(0))
    clip = str(tmp_path / "clip.avi")
    write_video(clip, [picture(0)] * 2)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 200)
    argv = {"text file": [str(junk)], "broken video": [str(tmp_path / "broken.mp4")],
            "missing input": [str(tmp_path / "none.jpg")], "missing checkpoint": [image, "--checkpoint", "none.npz"],
            "not a model": [image, "--checkpoint", str(junk)], "empty folder": [str(tmp_path / "empty")],
            "video to png": [clip, "--out", str(tmp_path / "o.png")],
            "picture kind": [image, "--out", str(tmp_path / "o.xyz")]}[case]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", checkpoint]
    assert demo(argv + ["--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not {"o.png", "o.xyz", "detections.json"} & set(os.listdir(tmp_path))


def test_help_describes_every_input_and_output(demo, capsys):
    with pytest.raises(SystemExit) as info:
        demo(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for word in ("folder", "video", "--detections", "BASE.csv", "--cache-dir", "--threshold", "pycocotools"):
        assert word in text
