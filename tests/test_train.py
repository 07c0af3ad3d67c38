"""The training loop on a tiny synthetic set: resuming is exact, checkpoints survive failures,
a NaN loss stops the run, the loss falls, and the saved model predicts raw deltas."""
import json
import os

import numpy as np
import pytest

import minidet.train
from minidet.checkpoint import BBOX_STDS, load_npz, save_npz
from minidet.runlog import read_log
from minidet.train import TrainingDiverged, train
from minidet.train_config import TrainConfig

TINY_MODEL = dict(width=0.0625, fc_dim=32)   # channels 4, 8, 16, 32, 32


@pytest.fixture
def tiny(tiny_voc):
    return tiny_voc


def config(dataset, out, **kw):
    settings = dict(data_dir=dataset.root, out=str(out), preset="small", iters=6, lr=0.01, step_size=4,
                    warmup_iters=2, scales=(64,), max_size=200, rois_per_image=16, checkpoint_every=3,
                    progress=False, model_kwargs=TINY_MODEL)
    settings.update(kw)
    return TrainConfig(**settings)


def run(dataset, proposals, out, **kw):
    return train(config(dataset, out, **kw), dataset, proposals, log=lambda *a: None)


def losses(out):
    return {r["iteration"]: (r["loss"], r["loss_cls"], r["loss_bbox"]) for r in read_log(os.path.join(out, "log.jsonl"))}


def test_resumed_run_gives_the_same_next_losses_as_an_uninterrupted_one(tiny, tmp_path):
    dataset, proposals = tiny
    run(dataset, proposals, tmp_path / "whole", iters=6)
    run(dataset, proposals, tmp_path / "parts", iters=3)
    assert sorted(losses(tmp_path / "parts")) == [1, 2, 3]
    run(dataset, proposals, tmp_path / "parts", iters=6, resume=True)
    whole, parts = losses(tmp_path / "whole"), losses(tmp_path / "parts")
    assert sorted(parts) == [1, 2, 3, 4, 5, 6]
    for it in range(1, 7):
        assert parts[it] == whole[it], f"iteration {it}"
    a, _ = load_npz(tmp_path / "whole" / "final.npz")
    b, _ = load_npz(tmp_path / "parts" / "final.npz")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_checkpoint_holds_model_optimizer_classes_and_convention(tiny, tmp_path):
    dataset, proposals = tiny
    run(dataset, proposals, tmp_path, iters=3)
    arrays, meta = load_npz(tmp_path / "checkpoint.npz")
    assert meta["iteration"] == 3 and meta["optimizer_iteration"] == 3
    assert meta["class_names"] == list(dataset.class_names)
    assert meta["convention"]["channel_order"] == "BGR"
    assert meta["config"]["iters"] == 3
    assert "model/conv1_1.weight" in arrays and "optim/velocity.conv1_1.weight" in arrays
    assert not os.path.exists(tmp_path / "checkpoint.npz.tmp")


def test_final_model_predicts_raw_deltas(tiny, tmp_path):
    # final.npz = checkpoint with bbox_pred x stds (means 0): W' = W std, b' = b std
    dataset, proposals = tiny
    run(dataset, proposals, tmp_path, iters=3)
    ckpt, _ = load_npz(tmp_path / "checkpoint.npz")
    final, meta = load_npz(tmp_path / "final.npz")
    stds = np.tile(BBOX_STDS, len(dataset.class_names) + 1)
    np.testing.assert_allclose(final["bbox_pred.weight"], ckpt["model/bbox_pred.weight"] * stds[:, None], rtol=1e-6)
    np.testing.assert_allclose(final["bbox_pred.bias"], ckpt["model/bbox_pred.bias"] * stds, rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(final["cls_score.weight"], ckpt["model/cls_score.weight"])
    assert meta["class_names"] == list(dataset.class_names) and meta["bbox_pred"] == "raw deltas"


def test_load_model_reads_final_and_checkpoint_alike(tiny, tmp_path):
    from minidet.detect import load_model

    dataset, proposals = tiny
    run(dataset, proposals, tmp_path, iters=3)
    a, info = load_model(tmp_path / "final.npz")
    b, _ = load_model(tmp_path / "checkpoint.npz")
    assert info["class_names"] == list(dataset.class_names) and info["scale"] == 64
    for name, value in a.state_dict().items():
        np.testing.assert_allclose(value, b.state_dict()[name], rtol=1e-6, atol=1e-12, err_msg=name)


def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.npz")
    save_npz(path, {"w": np.arange(3.0)}, {"iteration": 1})

    def half_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_npz(path, {"w": np.zeros(3)}, {"iteration": 2})
    monkeypatch.undo()
    arrays, meta = load_npz(path)
    assert meta["iteration"] == 1
    np.testing.assert_array_equal(arrays["w"], np.arange(3.0))
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_training_killed_while_checkpointing_resumes_from_the_previous_checkpoint(tiny, tmp_path, monkeypatch):
    dataset, proposals = tiny
    real_replace = os.replace
    calls = []

    def fail_second_checkpoint(src, dst):
        calls.append(dst)
        if str(dst).endswith("checkpoint.npz") and sum(str(c).endswith("checkpoint.npz") for c in calls) == 2:
            raise KeyboardInterrupt("killed while renaming")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run(dataset, proposals, tmp_path, iters=6, checkpoint_every=2)
    monkeypatch.undo()
    _, meta = load_npz(tmp_path / "checkpoint.npz")
    assert meta["iteration"] == 2
    assert not os.path.exists(tmp_path / "final.npz")
    run(dataset, proposals, tmp_path, iters=6, checkpoint_every=2, resume=True)
    assert load_npz(tmp_path / "final.npz")[1]["iteration"] == 6
    assert sorted(losses(tmp_path)) == [1, 2, 3, 4, 5, 6]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    dataset, proposals = tiny
    real_loss = minidet.train.fast_rcnn_loss
    calls = []

    def nan_on_fifth_call(*args, **kw):
        calls.append(1)
        loss, *rest = real_loss(*args, **kw)
        return (np.asarray(np.nan) if len(calls) == 5 else loss), *rest

    monkeypatch.setattr(minidet.train, "fast_rcnn_loss", nan_on_fifth_call)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at iteration 5.*last good checkpoint.*iteration 4"):
        run(dataset, proposals, tmp_path, iters=6, checkpoint_every=2)
    arrays, meta = load_npz(tmp_path / "checkpoint.npz")
    assert meta["iteration"] == 4
    assert all(np.isfinite(v).all() for v in arrays.values())
    assert not os.path.exists(tmp_path / "final.npz")
    assert max(losses(tmp_path)) == 4


def test_loss_falls_on_a_short_run(tiny, tmp_path):
    dataset, proposals = tiny
    # 80 steps: over seeds 0-4 the last 8 losses average 0.59-0.69 of the first 8 (0.65-0.79 after 40)
    run(dataset, proposals, tmp_path, iters=80, checkpoint_every=0, step_size=0, warmup_iters=5, rois_per_image=32)
    records = read_log(tmp_path / "log.jsonl")
    first = np.mean([r["loss"] for r in records[:8]])
    last = np.mean([r["loss"] for r in records[-8:]])
    assert last < 0.75 * first, (first, last)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["iters"] == 80


def test_trained_model_detects_over_a_data_set_and_is_evaluated(tiny, tmp_path):
    from minidet.detect import load_model
    from minidet.inference import detect_dataset, evaluate_detections, format_table
    from minidet.plots import plot_losses, plot_pr_curves

    dataset, proposals = tiny
    run(dataset, proposals, tmp_path, iters=3)
    model, info = load_model(tmp_path / "final.npz")
    boxes, labels, scores = detect_dataset(model, dataset, proposals, info["convention"], info["scale"],
                                           info["max_size"], progress=False, score_thresh=0.0)
    assert len(boxes) == len(labels) == len(scores) == len(dataset)
    for i, (b, l, s) in enumerate(zip(boxes, labels, scores)):
        h, w = dataset.image_size(i)
        assert 0 < len(b) <= 100 and b.shape == (len(l), 4)
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w - 1).all() and (b[:, 3] <= h - 1).all()
        assert ((l >= 1) & (l <= len(dataset.class_names))).all()
        assert (np.diff(s) <= 0).all()
    result = evaluate_detections(dataset, boxes, labels, scores)
    assert result["ap"].shape == (len(dataset.class_names) + 1,) and 0 <= result["map"] <= 1
    assert set(result["ap_by_class"]) == set(dataset.class_names)
    assert "mAP" in format_table(result, dataset.class_names)
    assert os.path.getsize(plot_pr_curves(result, dataset.class_names, str(tmp_path / "pr.png"))) > 0
    assert os.path.getsize(plot_losses(str(tmp_path / "log.jsonl"), str(tmp_path / "loss.png"))) > 0


def test_initial_weights_load_what_matches_by_name_and_shape(tiny, tmp_path):
    from minidet.convention import TORCHVISION
    from minidet.checkpoint import build_model, load_initial_weights
    from minidet.weights import save_weights

    donor = build_model("small", 4, seed=1, **TINY_MODEL).state_dict()    # 3 classes: other head shapes
    path = str(tmp_path / "weights.npz")
    save_weights(path, {k: v for k, v in donor.items() if not k.startswith("conv5")}, TORCHVISION)
    model = build_model("small", len(tiny[0].class_names) + 1, seed=0, **TINY_MODEL)
    before = model.state_dict()
    convention, loaded = load_initial_weights(model, path)
    after = model.state_dict()
    assert convention == TORCHVISION
    assert "conv1_1.weight" in loaded and "fc6.weight" in loaded
    assert not any(k.startswith(("conv5", "cls_score", "bbox_pred")) for k in loaded)
    for name in after:
        expected = donor[name] if name in loaded else before[name]
        np.testing.assert_array_equal(after[name], expected, err_msg=name)


def test_layers_the_weights_do_not_hold_learn_at_new_layer_lr_mult_times_the_rate(tiny, tmp_path):
    from minidet.checkpoint import build_model
    from minidet.convention import TORCHVISION
    from minidet.weights import save_weights

    dataset, proposals = tiny
    donor = build_model("small", len(dataset.class_names) + 1, seed=1, **TINY_MODEL).state_dict()
    weights = str(tmp_path / "convs.npz")       # the convolutions alone, as an ImageNet VGG16's
    save_weights(weights, {k: v for k, v in donor.items() if k.startswith("conv")}, TORCHVISION)
    steps = {}                                  # the first update, v = lr_eff (g + decay w), of each run
    for mult in (1.0, 10.0):
        run(dataset, proposals, tmp_path / f"x{mult:g}", iters=1, weights=weights, new_layer_lr_mult=mult)
        state, _ = load_npz(tmp_path / f"x{mult:g}" / "checkpoint.npz")
        steps[mult] = {k: state["optim/velocity." + k] for k in ("conv3_1.weight", "fc6.weight", "fc7.bias")}
    np.testing.assert_array_equal(steps[10.0]["conv3_1.weight"], steps[1.0]["conv3_1.weight"])
    for name in ("fc6.weight", "fc7.bias"):
        assert np.abs(steps[1.0][name]).max() > 0
        np.testing.assert_allclose(steps[10.0][name], 10 * steps[1.0][name], rtol=1e-5, err_msg=name)


def test_final_model_serves_as_initial_weights_of_another_run(tiny, tmp_path):
    dataset, proposals = tiny
    run(dataset, proposals, tmp_path / "first", iters=3)
    from minidet.checkpoint import build_model, load_initial_weights

    run(dataset, proposals, tmp_path / "second", iters=1, weights=str(tmp_path / "first" / "final.npz"))
    _, meta = load_npz(tmp_path / "second" / "final.npz")
    assert meta["convention"] == load_npz(tmp_path / "first" / "final.npz")[1]["convention"]
    # the saved model's raw-delta bbox_pred comes back as the checkpoint's normalised one
    model = build_model("small", len(dataset.class_names) + 1, **TINY_MODEL)
    load_initial_weights(model, str(tmp_path / "first" / "final.npz"))
    ckpt, _ = load_npz(tmp_path / "first" / "checkpoint.npz")
    for name in ("bbox_pred.weight", "bbox_pred.bias", "fc7.weight"):
        np.testing.assert_allclose(model.state_dict()[name], ckpt["model/" + name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("damage", ["truncated", "not a zip", "another kind"])
def test_resume_from_a_damaged_checkpoint_names_the_file_and_keeps_it(tiny, tmp_path, damage):
    from minidet.checkpoint import load_model
    from minidet.errors import CheckpointError

    dataset, proposals = tiny
    run(dataset, proposals, tmp_path, iters=2)
    path = tmp_path / "checkpoint.npz"
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "not a zip":
        path.write_bytes(b"this is not a checkpoint")
    else:
        save_npz(str(path), {"w": np.zeros(2)}, {"format": "minidet-model"})
    damaged = path.read_bytes()
    with pytest.raises(CheckpointError, match=str(path)) as err:
        run(dataset, proposals, tmp_path, iters=4, resume=True)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == damaged                # nothing written over it
    if damage != "another kind":
        with pytest.raises(CheckpointError, match=str(path)):
            load_model(str(path))


def test_a_read_only_data_folder_still_trains_with_caches_beside_the_run(tiny, tmp_path, monkeypatch):
    import minidet.data.proposals as proposals_module

    dataset, proposals = tiny
    real_access = os.access
    monkeypatch.setattr(proposals_module.os, "access",        # the data folder is read-only
                        lambda path, mode: False if os.path.abspath(path) == os.path.abspath(dataset.root)
                        else real_access(path, mode))
    cache = proposals_module.proposals_cache_dir(dataset.root, str(tmp_path / "runs" / "x"))
    assert cache == str(tmp_path / "runs" / "proposals_cache" / os.path.basename(dataset.root))
    run(dataset, proposals, tmp_path / "runs" / "x", iters=1)
    assert os.path.exists(tmp_path / "runs" / "x" / "final.npz")


def test_a_proposals_file_trains_as_the_same_proposals_given_in_memory(tiny, tmp_path):
    from minidet.data.external_proposals import save_npz_proposals

    dataset, proposals = tiny
    save_npz_proposals(tmp_path / "boxes.npz", dataset, proposals)
    run(dataset, proposals, tmp_path / "memory", iters=3)
    train(config(dataset, tmp_path / "file", iters=3, proposals_file=str(tmp_path / "boxes.npz")),
          log=lambda *a: None)
    a, meta_a = load_npz(tmp_path / "memory" / "final.npz")
    b, meta_b = load_npz(tmp_path / "file" / "final.npz")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # "auto" had nothing to measure: the model records the mode detection falls back to
    assert meta_b["config"]["proposal_mode"] == "fast"


def test_proposal_mode_auto_is_resolved_by_measuring_and_recorded(tiny, tmp_path):
    """The run measures recall of the candidate modes on a sample of the training split and records
    the mode best_mode chooses from that same measurement, in config.json and in the saved model."""
    from minidet.data.recall import choose_mode

    dataset, _ = tiny
    lines = []
    out = tmp_path / "run"
    train(config(dataset, out, iters=1, proposal_mode="auto", proposals_dir=str(tmp_path / "cache")),
          log=lines.append)
    with open(out / "config.json") as f:
        recorded = json.load(f)["proposal_mode"]
    expected, _ = choose_mode(dataset, str(tmp_path / "cache"), progress=False)
    assert recorded == expected and recorded in ("fast", "fine")
    assert load_npz(out / "final.npz")[1]["config"]["proposal_mode"] == expected
    assert any(line.startswith("proposal mode auto") for line in lines)
    assert any(f"chosen: {expected}" in line for line in lines)
