"""minidet plot: the curves of several runs on one figure, and a clear error for a folder that is not a run."""
import json

import numpy as np
import pytest

from minidet.plots import main, plot_runs, running_mean


def write_log(folder, losses):
    folder.mkdir(parents=True)
    with open(folder / "log.jsonl", "w") as f:
        for i, loss in enumerate(losses, 1):
            f.write(json.dumps({"iteration": i, "loss": loss, "loss_cls": loss, "loss_bbox": 0.0,
                                "accuracy": 0.5, "lr": 0.01, "rois": 8, "seconds": 0.1}) + "\n")


def test_running_mean_against_a_loop():
    x = np.random.default_rng(0).standard_normal(30)
    expected = [x[max(0, i - 4):i + 1].mean() for i in range(30)]
    np.testing.assert_allclose(running_mean(x, 5), expected, rtol=1e-12)


def test_two_runs_on_one_figure(tmp_path):
    write_log(tmp_path / "a", [1.0, 0.8, 0.5])
    write_log(tmp_path / "b", [1.2, 0.9])
    png = plot_runs([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "runs.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_folder_without_a_log_is_named(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="log.jsonl"):
        plot_runs([str(tmp_path)], str(tmp_path / "x.png"))
