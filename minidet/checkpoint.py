"""Saved networks: the training checkpoint, the final model, and loading either for use.

Both are one .npz: arrays under their names plus a JSON string of metadata under META_KEY.

- OUT/checkpoint.npz ("minidet-checkpoint"): the parameters under "model/<name>", the optimiser's
  velocities under "optim/<name>", the iteration, the seeds of the draws to come, the class names,
  the input convention and the whole TrainConfig. bbox_pred predicts the normalised targets that
  training uses, (t - mean) / std.
- OUT/final.npz ("minidet-model"): the parameters under their own names with bbox_pred folded to
  raw deltas (W' = W std, b' = b std + mean), as the original's snapshot does, so that every user
  of the model decodes its output directly; the structure, class names, convention and test scale.
  It also carries the convention under minidet.weights' key, so it serves as --weights of a run.
"""
import json
import zipfile

import numpy as np

from minidet.atomic import atomic_write
from minidet.backend import asnumpy
from minidet.convention import InputConvention
from minidet.errors import CheckpointError

META_KEY = "__meta__"
CHECKPOINT_NAME = "checkpoint.npz"
FINAL_NAME = "final.npz"
# Regression targets are divided by these (the sampler's defaults); final.npz folds them back.
BBOX_MEANS = (0.0, 0.0, 0.0, 0.0)
BBOX_STDS = (0.1, 0.1, 0.2, 0.2)


def save_npz(path, arrays, meta):
    """Write arrays {name: numpy array} and meta (a JSON-able dict) to path, atomically."""
    with atomic_write(path) as f:
        np.savez(f, **{META_KEY: np.array(json.dumps(meta))}, **arrays)


def load_npz(path):
    """(arrays {name: numpy array}, meta dict) from a file written by save_npz.

    Entries whose names start with '__' are metadata, not arrays, and are left out. A missing file
    raises FileNotFoundError; a truncated or corrupt one CheckpointError, both naming the file.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files if not k.startswith("__")}
            meta = json.loads(str(f[META_KEY])) if META_KEY in f.files else {}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt, not a whole .npz written by minidet ({err})") from None
    return arrays, meta


def scale_for_testing(scales, chosen=None):
    """The scale a model is tested at: `chosen`, else its one training scale, else the paper's 600."""
    return int(chosen or (scales[0] if len(scales) == 1 else 600))


def _per_row(values, rows):
    return np.tile(np.asarray(values, dtype=np.float64), rows // 4)


def fold_bbox_normalization(state, means=BBOX_MEANS, stds=BBOX_STDS):
    """A new state dict whose bbox_pred predicts raw deltas: W' = W x std, b' = b x std + mean.

    means, stds: 4 values, one per coordinate, the same for every class. Other entries are shared
    with `state`, not copied.
    """
    weight, bias = np.asarray(state["bbox_pred.weight"]), np.asarray(state["bbox_pred.bias"])
    if len(means) != 4 or len(stds) != 4:
        raise ValueError(f"means and stds need 4 values each, got {len(means)} and {len(stds)}")
    m, s = _per_row(means, len(bias)), _per_row(stds, len(bias))
    return dict(state, **{"bbox_pred.weight": (weight * s[:, None]).astype(weight.dtype),
                          "bbox_pred.bias": (bias * s + m).astype(bias.dtype)})


def unfold_bbox_normalization(state, means=BBOX_MEANS, stds=BBOX_STDS):
    """The inverse of fold_bbox_normalization: W = W' / std, b = (b' - mean) / std."""
    weight, bias = np.asarray(state["bbox_pred.weight"]), np.asarray(state["bbox_pred.bias"])
    m, s = _per_row(means, len(bias)), _per_row(stds, len(bias))
    return dict(state, **{"bbox_pred.weight": (weight / s[:, None]).astype(weight.dtype),
                          "bbox_pred.bias": ((bias - m) / s).astype(bias.dtype)})


def build_model(preset, num_classes, seed=0, **kwargs):
    """FastRCNN (VGG16, the paper's) or FastRCNN.small (narrow, all layers trainable)."""
    from minidet.models.fast_rcnn import FastRCNN

    if preset == "vgg16":
        return FastRCNN(num_classes=num_classes, seed=seed, **kwargs)
    if preset == "small":
        return FastRCNN.small(num_classes, seed=seed, **kwargs)
    raise ValueError(f"preset must be 'vgg16' or 'small', got {preset!r}")


def model_meta(model, config, class_names, convention, iteration):
    """What a saved model needs to be rebuilt and used: architecture, classes, pixels."""
    return {
        "format": "minidet-model",
        "preset": config.preset,
        "model": model.config,
        "num_classes": len(class_names) + 1,
        "class_names": list(class_names),
        "convention": convention.to_dict(),
        "scale": scale_for_testing(config.scales, config.test_scale),
        "max_size": int(config.max_size),
        "nms": float(config.test_nms),
        "max_per_image": int(config.test_max_per_image),
        "bbox_pred": "raw deltas",
        "iteration": int(iteration),
        "config": config.to_dict(),
    }


def write_checkpoint(path, model, optimizer, config, class_names, convention, iteration, extra):
    """OUT/checkpoint.npz; `extra`: more metadata, e.g. {"world_size": W, "dropout_seeds": [...]}."""
    arrays = {"model/" + k: v for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    arrays.update({"optim/" + k: v for k, v in opt_state.items() if k != "iteration"})
    meta = dict(format="minidet-checkpoint", model=model.config, iteration=int(iteration),
                optimizer_iteration=int(opt_state["iteration"]), class_names=list(class_names),
                convention=convention.to_dict(), config=config.to_dict(), **extra)
    save_npz(path, arrays, meta)


def read_checkpoint(path, class_names):
    """(model state, optimiser state, meta) of OUT/checkpoint.npz, checked against the data's classes."""
    arrays, meta = load_npz(path)
    if meta.get("format") != "minidet-checkpoint":
        raise CheckpointError(f"{path}: not a training checkpoint written by minidet (format {meta.get('format')!r})")
    if list(meta["class_names"]) != list(class_names):
        raise CheckpointError(f"{path}: classes {meta['class_names']} differ from the data's {list(class_names)}")
    model_state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    optim_state = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    optim_state["iteration"] = meta["optimizer_iteration"]
    return model_state, optim_state, meta


def write_final(path, model, config, class_names, convention, iteration):
    """OUT/final.npz: the parameters, bbox_pred folded to raw deltas, and the model's metadata."""
    from minidet.weights import CONVENTION_KEY

    arrays = fold_bbox_normalization({k: asnumpy(v) for k, v in model.state_dict().items()})
    arrays[CONVENTION_KEY] = np.array(json.dumps(convention.to_dict()))
    save_npz(path, arrays, model_meta(model, config, class_names, convention, iteration))


def load_model(path, device="cpu"):
    """A trained model, in test mode, from OUT/final.npz (or OUT/checkpoint.npz) -> (model, info).

    info: dict(class_names, convention (InputConvention), scale, max_size, preset, iteration,
    proposal_mode: the selective search setup the model was trained with, nms and max_per_image:
    the test-time NMS threshold and cap the run chose, the paper's 0.3 and 100 unless set).
    A training checkpoint's bbox_pred predicts normalised deltas; it is folded to raw deltas here.
    """
    from minidet.models.fast_rcnn import FastRCNN

    arrays, meta = load_npz(path)
    fmt = meta.get("format")
    if fmt == "minidet-checkpoint":
        state = fold_bbox_normalization({k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")})
        scale = scale_for_testing(meta["config"]["scales"], meta["config"].get("test_scale"))
        max_size = meta["config"]["max_size"]
    elif fmt == "minidet-model":
        state, scale, max_size = arrays, meta["scale"], meta["max_size"]
    else:
        raise CheckpointError(f"{path}: not a model or checkpoint written by minidet train")
    model = FastRCNN(**meta["model"])
    model.load_state_dict(state)
    if device == "gpu":
        model.to("gpu")
    info = dict(class_names=list(meta["class_names"]), convention=InputConvention.from_dict(meta["convention"]),
                scale=int(scale), max_size=int(max_size), preset=meta.get("preset") or meta["config"]["preset"],
                iteration=meta.get("iteration"), proposal_mode=meta["config"].get("proposal_mode", "fast"),
                nms=float(meta["config"].get("test_nms", 0.3)),
                max_per_image=int(meta["config"].get("test_max_per_image", 100)))
    return model.eval(), info


def load_initial_weights(model, path):
    """Copy the parameters of a weights file whose names and shapes match the model's.

    Returns (convention, names loaded). ImageNet weights have no cls_score / bbox_pred (and a
    1000-way fc8): those keep the model's own initialisation. A trained model (OUT/final.npz)
    predicts raw deltas; its bbox_pred is brought back to the normalised targets that training uses.
    """
    from minidet.weights import load_weights

    state, convention = load_weights(path)
    if "bbox_pred.weight" in state and load_npz(path)[1].get("bbox_pred") == "raw deltas":
        state = unfold_bbox_normalization(state)
    current = model.state_dict()
    loaded = sorted(k for k, v in state.items() if k in current and tuple(v.shape) == tuple(current[k].shape))
    if not loaded:
        raise ValueError(f"{path}: no parameter matches the model by name and shape")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return convention, loaded
