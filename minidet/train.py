"""Training a Fast R-CNN: one step, and the loop around it. `minidet train` is `main`.

One iteration (SPEC.md "Training"; the paper's Figure 1, left to right and back), `train_step`:

    cls_score, bbox_pred = model.forward(images, rois)        # N images, R RoIs, 25% foreground
    loss, dcls, dbbox = fast_rcnn_loss(cls_score, bbox_pred, labels, targets, weights)
    model.backward(dcls, dbbox)                                # every trained layer's grads
    grads, stats = comm.allreduce_gradients(model.grads(), ...)  # one process: the grads themselves
    sgd.step(grads)                                            # v = mu v + lr_eff (g + decay_eff w); w -= v

The loss is read from the device once, before the update: a NaN or infinite loss stops the run
(on every rank at once) before the update that would spread it, with an error naming the
iteration; the last checkpoint on disk is the last good one. The loop around the step takes the
batches from the loader (minidet.data.loader: a function of (seed, iteration)), logs each step
(minidet.runlog) and every `checkpoint_every` iterations writes a checkpoint (minidet.checkpoint).
Resuming continues exactly (minidet.seeds). The end of a run writes OUT/final.npz, the model alone.
With several processes (config.distributed, minidet.distributed) every rank trains on its share of
each batch and rank 0 alone writes the log, the checkpoints and the final model.
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time

from minidet.atomic import atomic_write
from minidet.backend import require_cupy
from minidet.checkpoint import (BBOX_MEANS, BBOX_STDS, CHECKPOINT_NAME, FINAL_NAME, build_model,
                                load_initial_weights, read_checkpoint, write_checkpoint, write_final)
from minidet.convention import SCRATCH, InputConvention
from minidet.data.training_set import load_training_data
from minidet.device_batch import DeviceBatches
from minidet.distributed import make_communicator, scale_schedule
from minidet.losses import fast_rcnn_loss
from minidet.optim import SGD, default_multipliers
from minidet.runlog import LOG_NAME, truncate_log
from minidet.seeds import reseed_dropouts
from minidet.train_config import TrainConfig, add_config_arguments, given_settings



class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration and the checkpoint kept."""


def train_step(model, optimizer, batch, comm):
    """One SGD iteration on a mini-batch on the model's device -> stats (the batch's loss, loss_cls,
    loss_bbox, accuracy and rois, over every rank). batch: images (N, 3, H, W), rois (R, 5), labels
    (R,), bbox_targets, bbox_weights (R, 4(K+1)). Raises TrainingDiverged before a non-finite update.
    """
    cls_score, bbox_pred = model.forward(batch["images"], batch["rois"])
    loss, dcls, dbbox, parts = fast_rcnn_loss(cls_score, bbox_pred, batch["labels"], batch["bbox_targets"],
                                              batch["bbox_weights"], details=True)
    model.backward(dcls, dbbox)
    grads, stats = comm.allreduce_gradients(model.grads(), loss, parts, rois=len(batch["labels"]))
    if not math.isfinite(stats["loss"]):
        raise TrainingDiverged(f"loss became {stats['loss']}")
    optimizer.step(grads)
    return stats


def make_loader(config, dataset, proposals, convention, num_classes, start, comm):
    """The batch loader of this rank, from iteration `start` on (its batches depend on (seed, iteration))."""
    from minidet.data.loader import BatchLoader

    return BatchLoader(dataset, proposals, convention, num_classes,
                       images_per_batch=config.images_per_batch, rois_per_image=config.rois_per_image,
                       fg_fraction=config.fg_fraction, bbox_means=BBOX_MEANS, bbox_stds=BBOX_STDS,
                       scales=tuple(config.scales), max_size=config.max_size, flip=config.flip,
                       use_difficult=config.use_difficult, seed=config.seed, start_iteration=start,
                       rank=comm.rank, world_size=comm.size)


def prepare_model(config, class_names, ckpt_path, comm, log):
    """(model in training mode, optimizer, input convention, first iteration): new, from --weights, or
    resumed from the checkpoint; the same on every rank (rank 0's parameters and velocities)."""
    model = build_model(config.preset, len(class_names) + 1, seed=config.seed, **config.model_kwargs)
    convention, start = SCRATCH, 0
    resuming = config.resume and os.path.exists(ckpt_path)
    if config.resume and not resuming:
        log(f"no checkpoint in {config.out}: starting from iteration 0")
    new_layers = []                     # trained parameters that the weights file does not hold
    if config.weights:                  # (on resume the checkpoint overwrites what is loaded here)
        convention, loaded = load_initial_weights(model, config.weights)
        new_layers = [name for name in model.trainable_params() if name not in loaded]
        if not resuming:
            log(f"loaded {len(loaded)} arrays from {config.weights}")
    if config.device == "gpu":
        model.to("gpu")
    lr_mult = {name: default_multipliers(name)[0] * config.new_layer_lr_mult for name in new_layers}
    optimizer = SGD(model.trainable_params(), lr=config.lr, momentum=config.momentum, lr_mult=lr_mult,
                    weight_decay=config.weight_decay, step_size=config.step_size or None,
                    gamma=config.gamma, warmup_iters=config.warmup_iters, warmup_factor=config.warmup_factor)
    if resuming:
        model_state, optim_state, meta = read_checkpoint(ckpt_path, class_names)
        model.load_state_dict(model_state)      # in place: the optimiser's arrays stay the model's
        optimizer.load_state_dict(optim_state)
        convention, start = InputConvention.from_dict(meta["convention"]), int(meta["iteration"])
        log(f"resumed from {ckpt_path} at iteration {start}")
    comm.bcast_params(model)
    comm.bcast_arrays(optimizer.velocity)
    return model.train(), optimizer, convention, start


def train(config, dataset=None, proposals=None, log=print, comm=None):
    """Run (or resume) training as `config` says -> dict(final, checkpoint, iterations, seconds, last).

    dataset / proposals: an already loaded data set and its proposals (else read from config.data_dir, or
    config.coco_json and config.images: minidet.data.open).
    comm: the run's communicator (default: made from config.distributed and config.allreduce).
    """
    if config.device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {config.device!r}")
    comm = comm or make_communicator(config.distributed, config.device, config.allreduce)
    if config.device == "gpu":
        require_cupy()
    if config.scale_lr:
        config = dataclasses.replace(config, scale_lr=False, **scale_schedule(
            config.lr, config.iters, config.step_size, config.warmup_iters, config.warmup_factor, comm.size))
    comm.check_same(config.to_dict(), "configuration")
    log = log if comm.is_root else (lambda *args: None)
    os.makedirs(config.out, exist_ok=True)
    ckpt_path, log_path = os.path.join(config.out, CHECKPOINT_NAME), os.path.join(config.out, LOG_NAME)
    dataset, proposals, mode = load_training_data(config, dataset, proposals, comm, log)
    if mode != config.proposal_mode:    # what "auto" or a proposals file stood for, recorded with the run
        config = dataclasses.replace(config, proposal_mode=mode)
    class_names = tuple(dataset.class_names)
    model, optimizer, convention, start = prepare_model(config, class_names, ckpt_path, comm, log)
    if comm.size > 1:
        log(f"{comm.size} ranks ({comm.backend}), {config.images_per_batch} images each: a global batch of "
            f"{comm.size * config.images_per_batch} images, lr {config.lr:g}")
    checkpointed = start or None        # the iteration of the last checkpoint on disk, for errors
    if comm.is_root:
        truncate_log(log_path, start)
        with atomic_write(os.path.join(config.out, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2)

    started, last = time.perf_counter(), None
    stage = DeviceBatches(config.device)    # pinned buffers, copies queued behind the device's work
    loader = make_loader(config, dataset, proposals, convention, len(class_names) + 1, start, comm)
    reseed_dropouts(model, config.seed, start, comm.rank)
    progress = _progress(config, start) if comm.is_root else None
    try:
        with open(log_path, "a") if comm.is_root else contextlib.nullcontext() as log_file:
            for it, batch in zip(range(start, config.iters), loader):
                tick, lr = time.perf_counter(), optimizer.lr
                try:
                    stats = train_step(model, optimizer, stage(batch), comm)
                except TrainingDiverged as err:
                    kept = (f"the last good checkpoint, {ckpt_path} (iteration {checkpointed}), is kept"
                            if checkpointed is not None else "no checkpoint of this run had been written")
                    raise TrainingDiverged(f"{err} at iteration {it + 1} (lr {lr:.3g}); training stopped before "
                                           f"the update; {kept}") from None
                last = dict(iteration=it + 1, **stats, lr=lr, seconds=time.perf_counter() - tick)
                if comm.is_root:
                    log_file.write(json.dumps(last) + "\n")
                    log_file.flush()
                    _show(progress, last)
                if it + 1 == config.iters or (config.checkpoint_every and (it + 1) % config.checkpoint_every == 0):
                    seeds = reseed_dropouts(model, config.seed, it + 1, comm.rank)     # see minidet.seeds
                    if comm.is_root:
                        write_checkpoint(ckpt_path, model, optimizer, config, class_names, convention, it + 1,
                                         {"world_size": comm.size, "dropout_seeds": seeds})
                    checkpointed = it + 1
    finally:
        if progress is not None:
            progress.close()
        loader.close()

    final_iteration = max(start, config.iters)
    final_path = os.path.join(config.out, FINAL_NAME)
    if comm.is_root:
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


def _show(progress, record):
    if progress is not None:
        progress.update(1)
        progress.set_postfix(loss=f"{record['loss']:.3f}", cls=f"{record['loss_cls']:.3f}",
                             bbox=f"{record['loss_bbox']:.3f}", acc=f"{record['accuracy']:.2f}",
                             lr=f"{record['lr']:.2g}", s_it=f"{record['seconds']:.2f}", refresh=False)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="minidet train", description="Train a Fast R-CNN on a VOC- or COCO-layout "
                                     "folder, or a COCO file; every setting of TrainConfig is an option.")
    parser.add_argument("--config", help="a run's config.json to start from; the options given override it")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        base = {}
        if args.config:
            with open(args.config) as f:
                base = json.load(f)
        config = TrainConfig.from_dict(dict(base, **given_settings(args)))
        if not (config.data_dir or config.coco_json):
            parser.error("--data-dir, or --coco-json with --images, is needed (or a --config that names them)")
        summary = train(config)
    except TrainingDiverged as err:
        print(f"minidet train: {err}", file=sys.stderr)
        return 1
    except (RuntimeError, OSError, ValueError) as err:
        print(f"minidet train: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "last"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
