"""Training a Fast R-CNN: the loop, checkpoints, resuming, logging. `minidet train` is `main`.

One iteration (SPEC.md "Training"):

    batch = next(loader)                   # N images, R RoIs sampled 25% fg / 75% bg, targets / stds
    cls_score, bbox_pred = model.forward(batch images, batch rois, train=True)
    loss, dcls, dbbox, parts = fast_rcnn_loss(cls_score, bbox_pred, labels, targets, weights, details=True)
    model.backward(dcls, dbbox)
    sgd.step(model.grads())                # v = mu v + lr_eff (g + decay_eff w); w -= v

A checkpoint (OUT/checkpoint.npz, every `checkpoint_every` iterations and at the end) holds
the model's parameters, the optimiser's velocities and iteration, the seeds of the random draws
to come, the class names, the input convention and the configuration; it is written to a
temporary file and renamed over the old one, so a run killed while writing leaves the previous
checkpoint whole.

Resuming continues exactly: the next losses equal those of a run that was never stopped. The
batch loader prepares batches in a background thread, so its generator's state at a given
iteration is not something it can hand out. Instead every random draw after a checkpoint is
made a function of (seed, iteration): at the start of a run and after every checkpoint, the
loader is created anew and each dropout layer restarts its mask stream, from seeds derived from
(seed, iteration), in an uninterrupted run and in a resumed one alike. The end of a run also
writes OUT/final.npz: the model alone, its bbox_pred folded back to raw deltas (SPEC.md), with
its class names, input convention and test scale.

A NaN or infinite loss stops the run before the update that would spread it, with an error that
names the iteration; the last checkpoint on disk is the last good one.
"""
import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from minidet.backend import asnumpy, require_cupy, to_device
from minidet.convention import CAFFE, InputConvention
from minidet.optim import SGD

# Regression targets are divided by these (the sampler's defaults); final.npz folds them back.
BBOX_MEANS = (0.0, 0.0, 0.0, 0.0)
BBOX_STDS = (0.1, 0.1, 0.2, 0.2)
# A network trained from scratch sees pixels of unit scale: BGR minus the means, divided by the
# ImageNet standard deviations (0.225, 0.224, 0.229 in 0..1 units, BGR order). Caffe's convention
# (no division) feeds values of +-100 into He-initialised layers, whose activations then start
# ~50x too large and the untrained network collapses onto the background class.
SCRATCH = InputConvention("BGR", 255.0, CAFFE.mean, (57.375, 57.12, 58.395))
CHECKPOINT_NAME = "checkpoint.npz"
FINAL_NAME = "final.npz"
LOG_NAME = "log.jsonl"
META_KEY = "__meta__"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration and the checkpoint kept."""


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in every checkpoint and in OUT/config.json.

    The defaults are the paper's (VGG16 from ImageNet weights, SPEC.md "Training"):
    lr 0.001, momentum 0.9, decay 0.0005, x0.1 after 30k of 40k iterations, N=2, R=128, scale 600.
    """
    data_dir: str
    out: str = "runs/train"
    split: str = "trainval"
    preset: str = "vgg16"                    # "vgg16" (the paper's model) or "small" (narrow, from scratch)
    weights: str = None                      # converted ImageNet weights (.npz) or a minidet model
    device: str = "cpu"                      # "cpu" or "gpu"
    iters: int = 40000
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0005
    step_size: int = 30000                   # lr x gamma every step_size iterations (0: never)
    gamma: float = 0.1
    warmup_iters: int = 0                    # linear warmup from warmup_factor x lr
    warmup_factor: float = 0.1
    images_per_batch: int = 2
    rois_per_image: int = 64
    fg_fraction: float = 0.25                # share of foreground RoIs, at most
    scales: tuple = (600,)                   # shorter side; one drawn per image
    max_size: int = 1000
    test_scale: int = None                   # recorded in final.npz; default: the single scale, else 600
    flip: bool = True
    use_difficult: bool = False
    class_names: tuple = None                # when the folder has no classes.txt
    proposals_dir: str = None                # default: see proposals_cache_dir
    proposal_mode: str = "fast"              # selective search setup (minidet.data.proposals.MODES)
    proposal_workers: int = 2
    checkpoint_every: int = 5000
    seed: int = 0
    resume: bool = False
    progress: bool = True
    model_kwargs: dict = field(default_factory=dict)   # extra FastRCNN / FastRCNN.small arguments

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["scales"] = list(self.scales)
        d["class_names"] = None if self.class_names is None else list(self.class_names)
        return d


# ---------------------------------------------------------------------------------------------
# checkpoints: one .npz, arrays by name plus a JSON string under META_KEY

def save_npz_atomic(path, arrays, meta):
    """Write arrays {name: numpy array} and meta (JSON-able dict) to path, atomically.

    The data goes to path + '.tmp', is flushed to disk, then renamed over path: a reader sees
    the old file or the new one, never a half-written one.
    """
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **{META_KEY: np.array(json.dumps(meta))}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_npz(path):
    """(arrays {name: numpy array}, meta dict) from a file written by save_npz_atomic.
    Entries whose names start with '__' are metadata, not arrays, and are left out."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if not k.startswith("__")}
        meta = json.loads(str(f[META_KEY])) if META_KEY in f.files else {}
    return arrays, meta


def segment_seed(seed, iteration, stream=0):
    """A seed for the random draws from `iteration` on: a function of (seed, iteration, stream) only.

    Stream 0 is the batch loader's, stream 1 + k the k-th dropout layer's.
    """
    return int(np.random.SeedSequence([int(seed), int(iteration), int(stream)]).generate_state(1)[0])


def find_dropouts(model):
    """The model's Dropout layers, in forward order."""
    from minidet.nn.dropout import Dropout

    return [layer for _, layer in model.named_layers() if isinstance(layer, Dropout)]


def reseed_dropouts(model, seed, iteration):
    """Restart every dropout layer's mask stream from a seed derived from (seed, iteration).

    Works alike for the numpy and the cupy generators (the layer makes its generator from
    `seed` on first use). Returns the seeds, for the checkpoint's record.
    """
    seeds = []
    for k, layer in enumerate(find_dropouts(model)):
        layer.seed = segment_seed(seed, iteration, 1 + k)
        layer.generators = {}
        seeds.append(layer.seed)
    return seeds


# ---------------------------------------------------------------------------------------------
# model and data

def build_model(preset, num_classes, seed=0, **kwargs):
    """FastRCNN (VGG16, the paper's) or FastRCNN.small (narrow, all layers trainable)."""
    from minidet.models.fast_rcnn import FastRCNN

    if preset == "vgg16":
        return FastRCNN(num_classes=num_classes, seed=seed, **kwargs)
    if preset == "small":
        return FastRCNN.small(num_classes, seed=seed, **kwargs)
    raise ValueError(f"preset must be 'vgg16' or 'small', got {preset!r}")


def rebuild_model(structure):
    """A FastRCNN of the structure a saved model recorded (FastRCNN.config)."""
    from minidet.models.fast_rcnn import FastRCNN

    return FastRCNN(**structure)


def load_initial_weights(model, path):
    """Copy the parameters of a weights file whose names and shapes match the model's.

    Returns (convention, names loaded). ImageNet weights have no cls_score / bbox_pred (and a
    1000-way fc8): those keep the model's own initialisation. A trained model (OUT/final.npz)
    predicts raw deltas; its bbox_pred is brought back to the normalised targets that training uses.
    """
    from minidet.weights import load_weights

    state, convention = load_weights(path)
    if "bbox_pred.weight" in state and load_npz(path)[1].get("bbox_pred") == "raw deltas":
        state = unfold_bbox_normalization(state, state["bbox_pred.weight"].shape[0] // 4)
    current = model.state_dict()
    loaded = sorted(k for k, v in state.items() if k in current and tuple(v.shape) == tuple(current[k].shape))
    if not loaded:
        raise ValueError(f"{path}: no parameter matches the model by name and shape")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return convention, loaded


def proposals_cache_dir(data_dir, run_dir, proposals_dir=None):
    """Where proposals are cached (one file per image, named by image and settings, any split):
    proposals_dir when given; else DATA_DIR/proposals_cache, as `minidet proposals` uses, when the
    data folder is writable; else a proposals_cache folder beside the run folder."""
    if proposals_dir:
        return proposals_dir
    if os.access(data_dir, os.W_OK):
        return os.path.join(data_dir, "proposals_cache")
    return os.path.join(os.path.dirname(os.path.abspath(run_dir)), "proposals_cache",
                        os.path.basename(os.path.abspath(data_dir)))


def make_loader(config, dataset, proposals, convention, num_classes, iteration):
    """The batch loader for the batches from `iteration` on, seeded by (config.seed, iteration)."""
    from minidet.data.loader import BatchLoader

    return BatchLoader(dataset, proposals, convention, num_classes,
                       images_per_batch=config.images_per_batch, rois_per_image=config.rois_per_image,
                       fg_fraction=config.fg_fraction, bbox_means=BBOX_MEANS, bbox_stds=BBOX_STDS,
                       scales=tuple(config.scales), max_size=config.max_size, flip=config.flip,
                       use_difficult=config.use_difficult, seed=segment_seed(config.seed, iteration))


def close_loader(loader):
    close = getattr(loader, "close", None)
    if close is not None:
        close()


# ---------------------------------------------------------------------------------------------
# the loop

def fold_for_saving(state, num_classes):
    """The state dict with the target normalisation folded into bbox_pred (raw deltas)."""
    from minidet.models.fast_rcnn import fold_bbox_normalization

    means = np.tile(np.asarray(BBOX_MEANS, np.float64), num_classes)
    stds = np.tile(np.asarray(BBOX_STDS, np.float64), num_classes)
    return fold_bbox_normalization(state, means, stds)


def scale_for_testing(scales, chosen=None):
    """The scale a model is tested at: `chosen`, else its one training scale, else the paper's 600."""
    return int(chosen or (scales[0] if len(scales) == 1 else 600))


def unfold_bbox_normalization(state, num_classes):
    """The inverse of fold_for_saving: W' = W / std, b' = (b - mean) / std."""
    means = np.tile(np.asarray(BBOX_MEANS, np.float64), num_classes)
    stds = np.tile(np.asarray(BBOX_STDS, np.float64), num_classes)
    weight, bias = state["bbox_pred.weight"], state["bbox_pred.bias"]
    return dict(state, **{"bbox_pred.weight": (weight / stds[:, None]).astype(weight.dtype),
                          "bbox_pred.bias": ((bias - means) / stds).astype(bias.dtype)})


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
        "bbox_pred": "raw deltas",
        "iteration": int(iteration),
        "config": config.to_dict(),
    }


def write_checkpoint(path, model, optimizer, config, class_names, convention, iteration):
    arrays = {"model/" + k: asnumpy(v) for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    arrays.update({"optim/" + k: v for k, v in opt_state.items() if k != "iteration"})
    meta = {
        "format": "minidet-checkpoint",
        "model": model.config,
        "iteration": int(iteration),
        "optimizer_iteration": int(opt_state["iteration"]),
        # the draws after this iteration come from these seeds (see the module docstring)
        "loader_seed": segment_seed(config.seed, iteration),
        "dropout_seeds": [segment_seed(config.seed, iteration, 1 + k) for k in range(len(find_dropouts(model)))],
        "class_names": list(class_names),
        "convention": convention.to_dict(),
        "config": config.to_dict(),
    }
    save_npz_atomic(path, arrays, meta)


def write_final(path, model, config, class_names, convention, iteration):
    """OUT/final.npz: the parameters under their names, bbox_pred folded to raw deltas, the metadata
    under META_KEY and the input convention under minidet.weights' key, so that the file also
    serves as --weights of another run (load_weights)."""
    from minidet.weights import CONVENTION_KEY

    state = fold_for_saving({k: asnumpy(v) for k, v in model.state_dict().items()}, len(class_names) + 1)
    arrays = {k: np.asarray(v) for k, v in state.items()}
    arrays[CONVENTION_KEY] = np.array(json.dumps(convention.to_dict()))
    save_npz_atomic(path, arrays, model_meta(model, config, class_names, convention, iteration))


def read_log(path):
    """The JSON lines of a training log, as a list of dicts."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_log(path, iteration):
    """Keep the log's records up to `iteration` (those after it are about to be redone)."""
    records = [r for r in read_log(path) if r["iteration"] <= iteration]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)


def train(config, dataset=None, proposals=None, log=print):
    """Run (or resume) training as `config` says; returns a summary dict.

    dataset / proposals: an already loaded VOCDataset and its proposals (else read from
    config.data_dir and cached under proposals_cache_dir). Returns dict(final, checkpoint,
    iterations, seconds, last) with `last` the final iteration's record.
    """
    from minidet.data.voc import VOCDataset
    from minidet.losses import fast_rcnn_loss

    if config.device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {config.device!r}")
    if config.device == "gpu":
        require_cupy()
    os.makedirs(config.out, exist_ok=True)
    ckpt_path = os.path.join(config.out, CHECKPOINT_NAME)
    log_path = os.path.join(config.out, LOG_NAME)

    if dataset is None:
        dataset = VOCDataset(config.data_dir, config.split, config.class_names)
    class_names = tuple(dataset.class_names)
    num_classes = len(class_names) + 1
    if proposals is None:
        from minidet.data.proposals import load_proposals

        cache = proposals_cache_dir(config.data_dir, config.out, config.proposals_dir)
        log(f"proposals for {len(dataset)} images of {config.split} ({config.proposal_mode} selective search, "
            f"cached in {cache})")
        proposals = load_proposals(dataset, cache, workers=config.proposal_workers, mode=config.proposal_mode,
                                   progress=config.progress)

    model = build_model(config.preset, num_classes, seed=config.seed, **config.model_kwargs)
    convention = SCRATCH
    resuming = config.resume and os.path.exists(ckpt_path)
    if config.resume and not resuming:
        log(f"no checkpoint in {config.out}: starting from iteration 0")
    if config.weights and not resuming:
        convention, loaded = load_initial_weights(model, config.weights)
        log(f"loaded {len(loaded)} arrays from {config.weights}")
    if config.device == "gpu":
        model.to("gpu")
    optimizer = SGD(model.trainable_params(), lr=config.lr, momentum=config.momentum,
                    weight_decay=config.weight_decay, step_size=config.step_size or None,
                    gamma=config.gamma, warmup_iters=config.warmup_iters, warmup_factor=config.warmup_factor)

    start, checkpointed = 0, None       # checkpointed: the iteration of this run's last checkpoint
    if resuming:
        arrays, meta = load_npz(ckpt_path)
        if list(meta["class_names"]) != list(class_names):
            raise ValueError(f"{ckpt_path}: classes {meta['class_names']} differ from the data's {list(class_names)}")
        # in place, onto the parameters' device: the optimiser's arrays stay the model's
        model.load_state_dict({k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")})
        opt_state = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
        opt_state["iteration"] = meta["optimizer_iteration"]
        optimizer.load_state_dict(opt_state)
        convention = InputConvention.from_dict(meta["convention"])
        start = checkpointed = int(meta["iteration"])
        truncate_log(log_path, start)
        log(f"resumed from {ckpt_path} at iteration {start}")
    if start == 0 and os.path.exists(log_path):
        os.remove(log_path)
    with open(os.path.join(config.out, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2)

    started = time.perf_counter()
    last = None
    loader = None
    if start < config.iters:
        loader = make_loader(config, dataset, proposals, convention, num_classes, start)
        reseed_dropouts(model, config.seed, start)
    batches = iter(loader) if loader is not None else None
    progress = _progress(config, start)
    try:
        with open(log_path, "a") as log_file:
            for it in range(start, config.iters):
                tick = time.perf_counter()
                batch = next(batches)
                images = to_device(batch["images"], config.device)
                rois = to_device(batch["rois"], config.device)
                labels = to_device(batch["labels"], config.device)
                targets = to_device(batch["bbox_targets"], config.device)
                weights = to_device(batch["bbox_weights"], config.device)
                cls_score, bbox_pred = model.forward(images, rois, train=True)
                loss, dcls, dbbox, parts = fast_rcnn_loss(cls_score, bbox_pred, labels, targets, weights,
                                                          details=True)
                loss = float(loss)
                if not math.isfinite(loss):
                    kept = (f"the last good checkpoint, {ckpt_path} (iteration {checkpointed}), is kept"
                            if checkpointed is not None else "no checkpoint of this run had been written")
                    raise TrainingDiverged(f"loss became {loss} at iteration {it + 1} (lr {optimizer.lr:.3g}); "
                                           f"training stopped before the update; {kept}")
                lr = optimizer.lr
                model.backward(dcls, dbbox)
                optimizer.step(model.grads())
                last = {"iteration": it + 1, "loss": loss,
                        "loss_cls": float(parts["loss_cls"]), "loss_bbox": float(parts["loss_bbox"]),
                        "accuracy": float(parts["accuracy"]), "lr": lr,
                        "rois": int(len(batch["labels"])), "seconds": time.perf_counter() - tick}
                log_file.write(json.dumps(last) + "\n")
                log_file.flush()
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss:.3f}", cls=f"{last['loss_cls']:.3f}",
                                         bbox=f"{last['loss_bbox']:.3f}", acc=f"{last['accuracy']:.2f}",
                                         lr=f"{lr:.2g}", s_it=f"{last['seconds']:.2f}", refresh=False)
                done = it + 1
                if done == config.iters or (config.checkpoint_every and done % config.checkpoint_every == 0):
                    write_checkpoint(ckpt_path, model, optimizer, config, class_names, convention, done)
                    checkpointed = done
                    if done < config.iters:
                        # the batches after a checkpoint depend on (seed, iteration) only: see the module doc
                        close_loader(loader)
                        loader = make_loader(config, dataset, proposals, convention, num_classes, done)
                        batches = iter(loader)
                        reseed_dropouts(model, config.seed, done)
    finally:
        if progress is not None:
            progress.close()
        if loader is not None:
            close_loader(loader)

    final_iteration = max(start, config.iters)
    final_path = os.path.join(config.out, FINAL_NAME)
    write_final(final_path, model, config, class_names, convention, final_iteration)
    seconds = time.perf_counter() - started
    log(f"trained {final_iteration - start} iterations in {seconds:.1f} s; model in {final_path}")
    return {"final": final_path, "checkpoint": ckpt_path, "iterations": final_iteration,
            "seconds": seconds, "last": last}


def _progress(config, start):
    if not config.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=config.iters, initial=start, desc="train", unit="it", dynamic_ncols=True,
                mininterval=1.0, file=sys.stderr)


def plot_losses(log_path, png_path, smooth=20):
    """Loss curves (total, classification, box regression, accuracy) of a training log, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    if not records:
        return None
    it = np.array([r["iteration"] for r in records])

    def running(key):
        x = np.array([r[key] for r in records], dtype=np.float64)
        k = max(1, min(smooth, len(x)))
        c = np.cumsum(np.concatenate(([0.0], x)))
        lo = np.maximum(np.arange(1, len(x) + 1) - k, 0)
        return (c[1:] - c[lo]) / (np.arange(1, len(x) + 1) - lo)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, colour in (("loss", "k"), ("loss_cls", "tab:blue"), ("loss_bbox", "tab:orange")):
        axes[0].plot(it, running(key), colour, label=key)
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel(f"loss (running mean of {smooth})")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    axes[1].plot(it, running("accuracy"), "tab:green")
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("RoI classification accuracy")
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


# ---------------------------------------------------------------------------------------------
# command line

def parse_scales(text):
    return tuple(int(s) for s in str(text).split(",") if s.strip())


def parse_classes(text):
    return None if not text else tuple(s.strip() for s in text.split(",") if s.strip())


def add_train_arguments(parser, defaults):
    """The options of `minidet train` (also used by examples/train_voc.py), defaults from a TrainConfig."""
    d = defaults
    parser.add_argument("--out", default=d.out, help=f"run folder (default {d.out})")
    parser.add_argument("--split", default=d.split, help=f"training split (default {d.split})")
    parser.add_argument("--preset", choices=("vgg16", "small"), default=d.preset,
                        help=f"network (default {d.preset})")
    parser.add_argument("--weights", default=d.weights, help="initial weights .npz (minidet convert-weights)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default=d.device, help=f"default {d.device}")
    parser.add_argument("--iters", type=int, default=d.iters, help=f"iterations (default {d.iters})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"base learning rate (default {d.lr})")
    parser.add_argument("--step-size", type=int, default=d.step_size,
                        help=f"lr x0.1 every this many iterations, 0 never (default {d.step_size})")
    parser.add_argument("--warmup-iters", type=int, default=d.warmup_iters,
                        help=f"linear lr warmup iterations (default {d.warmup_iters})")
    parser.add_argument("--scales", type=parse_scales, default=d.scales,
                        help="shorter image side(s), comma-separated (default %s)" % ",".join(map(str, d.scales)))
    parser.add_argument("--max-size", type=int, default=d.max_size, help=f"longer side at most (default {d.max_size})")
    parser.add_argument("--images-per-batch", type=int, default=d.images_per_batch)
    parser.add_argument("--rois-per-image", type=int, default=d.rois_per_image)
    parser.add_argument("--classes", type=parse_classes, default=d.class_names,
                        help="class names a,b,c when the folder has no classes.txt (default: the 20 of VOC)")
    parser.add_argument("--use-difficult", action="store_true", help="train on 'difficult' objects too")
    parser.add_argument("--no-flip", action="store_true", help="do not add horizontally flipped images")
    parser.add_argument("--proposals-dir", default=d.proposals_dir, help="proposal cache folder")
    parser.add_argument("--proposal-mode", default=d.proposal_mode,
                        help=f"selective search setup: fast, quality, single, compact (default {d.proposal_mode})")
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                        help=f"iterations between checkpoints (default {d.checkpoint_every})")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args, base):
    """A TrainConfig: `base` with the parsed command-line values."""
    return dataclasses.replace(
        base, out=args.out, split=args.split, preset=args.preset, weights=args.weights, device=args.device,
        iters=args.iters, lr=args.lr, step_size=args.step_size, warmup_iters=args.warmup_iters,
        scales=tuple(args.scales), max_size=args.max_size, images_per_batch=args.images_per_batch,
        rois_per_image=args.rois_per_image, class_names=args.classes, use_difficult=args.use_difficult,
        flip=not args.no_flip, proposals_dir=args.proposals_dir, proposal_mode=args.proposal_mode,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed, resume=args.resume, progress=not args.no_progress)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="minidet train", description="Train a Fast R-CNN on a VOC-layout folder.")
    parser.add_argument("--data-dir", required=True, help="VOC-layout folder (e.g. VOCdevkit/VOC2007)")
    add_train_arguments(parser, TrainConfig(data_dir=""))
    args = parser.parse_args(argv)
    config = config_from_args(args, TrainConfig(data_dir=args.data_dir))
    try:
        summary = train(config)
    except TrainingDiverged as err:
        print(f"minidet train: {err}", file=sys.stderr)
        return 1
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        print(f"minidet train: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "last"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
