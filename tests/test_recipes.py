"""Recipes: the preset's settings scaled to the data, and the order in which settings override."""
import json

import pytest

from minidet.recipes import data_summary, recipe, with_iterations
from tests.examples import import_example


def values(settings):
    return {k: v for k, (v, _) in settings.items()}


def test_paper_recipe_on_voc07_trainval_is_the_papers_run():
    r = values(recipe("vgg16", {"images": 5011, "epoch_images": 10022, "shorter_side": 375}))
    assert (r["iters"], r["step_size"], r["lr"], r["rois_per_image"]) == (40000, 30000, 0.001, 64)
    assert r["scales"] == (375,)       # VOC's images are smaller than 600 on their shorter side


def test_small_recipe_on_the_synthetic_set_is_the_embedded_default():
    # 400 trainval images of 320x240, flipped: 400 iterations an epoch, 8 epochs, the step at 6.4
    r = values(recipe("small", {"images": 400, "epoch_images": 800, "shorter_side": 240, "synthetic": True}))
    assert (r["iters"], r["step_size"], r["checkpoint_every"], r["scales"]) == (3200, 2560, 400, (240,))
    assert r["proposal_mode"] == "compact" and r["model_kwargs"] == {"width": 0.25, "dropout": 0.0, "roi_layer": "conv4_3"}


def test_large_images_train_at_the_papers_scale_and_iterations_keep_the_step_share():
    r = recipe("small", {"images": 100, "epoch_images": 200, "shorter_side": 1200})
    assert r["scales"][0] == (600,)
    shorter = values(with_iterations(r, 500, "option"))
    assert shorter["iters"] == 500 and shorter["step_size"] == 400


def test_data_summary_reads_the_folder(tiny_voc):
    dataset, _ = tiny_voc
    s = data_summary(dataset)
    assert s == {"images": 6, "epoch_images": 12, "shorter_side": 64, "synthetic": True}


def test_options_override_the_config_file_which_overrides_the_recipe(tiny_voc, tmp_path, monkeypatch):
    train_voc = import_example("train_voc")
    dataset, _ = tiny_voc
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"lr": 0.5, "rois_per_image": 32, "preset": "small"}))
    args = train_voc.parse_args(["--data-dir", dataset.root, "--config", str(config), "--lr", "0.25"])
    _, settings, synthetic = train_voc.choose_settings(args, log=lambda *a: None)
    assert settings["lr"] == (0.25, "option")
    assert settings["rois_per_image"] == (32, "--config")
    assert settings["iters"] == (48, "8 epochs of 12 images, 2 a batch")
    assert not synthetic
    with pytest.raises(SystemExit):
        train_voc.parse_args(["--flip", "maybe"])


def test_an_epoch_counts_the_global_batch_of_every_rank():
    summary = {"images": 400, "epoch_images": 800, "shorter_side": 240}
    one = values(recipe("small", summary))
    two_ranks = values(recipe("small", summary, images_per_batch=1, world_size=2))
    assert (two_ranks["iters"], two_ranks["step_size"]) == (one["iters"], one["step_size"]) == (3200, 2560)


def test_model_options_are_merged_into_the_presets(tiny_voc, tmp_path):
    train_voc = import_example("train_voc")
    dataset, _ = tiny_voc
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_kwargs": {"fc_dim": 64}}))
    args = train_voc.parse_args(["--data-dir", dataset.root, "--preset", "small", "--config", str(config),
                                 "--model-kwargs", '{"roi_op": "align", "dropout": 0.5}'])
    _, settings, _ = train_voc.choose_settings(args, log=lambda *a: None)
    kwargs, source = settings["model_kwargs"]
    assert kwargs == {"width": 0.25, "dropout": 0.5, "roi_layer": "conv4_3", "fc_dim": 64, "roi_op": "align"}
    assert source == "small preset + --config + option"
    assert settings["preset"] == ("small", "option") and settings["data_dir"][1] == "option"
