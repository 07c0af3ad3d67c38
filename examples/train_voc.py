"""Train a Fast R-CNN on a VOC- or COCO-layout folder or on COCO files, then evaluate it on the test split.

    python examples/train_voc.py                       # no VOC here: the embedded synthetic set, CPU, minutes
    python examples/train_voc.py --data-dir VOCdevkit/VOC2007 --weights vgg16.npz --device gpu
    python examples/train_voc.py --data-dir my_data --classes cat,dog --preset small
    python examples/train_voc.py --coco-json train.json --images images/ --test-coco-json test.json --preset small
    python examples/train_voc.py --resume              # continue the run in --out where it stopped

A data folder is in the VOC layout (ImageSets/Main/SPLIT.txt, Annotations/, JPEGImages/) or in
COCO's (annotations/instances_SPLIT.json, images in SPLIT/ or images/); --coco-json and --images
name a COCO file and its images directly, --test-coco-json (and --test-images, default --images)
the file evaluated after training (minidet.data.open).

With a VOC folder: VGG16 fine-tuned from ImageNet weights with the paper's settings (SPEC.md
"Training": lr 0.001, x0.1 after 30k of 40k iterations, N = 2 images, R = 128 RoIs, scale 600).
Convert the weights once with `minidet convert-weights vgg16-397923af.pth vgg16.npz`.

Without --data-dir or --coco-json and with no VOC at ./VOCdevkit/VOC2007 or ./data/VOCdevkit/VOC2007, the
embedded synthetic data set is written into ./data/synthetic (once) and the narrow preset is
trained on it from scratch on the CPU. --preset small trains the same narrow network from scratch
on any folder. The settings are the recipe of the preset scaled to the data (minidet.recipes),
then those of --config, then the options given; the run prints each with where it comes from.
Every TrainConfig field is an option (--rois-per-image 64, --flip false, --model-kwargs JSON, ...).

A run's folder (--out) receives checkpoint.npz, final.npz, log.jsonl, config.json, loss.png,
metrics.json (map, per-class ap, coco: COCO's metrics when pycocotools is installed, iterations,
seconds), eval_test.json, pr_test.png, the test detections as detections_test.json (COCO results)
and detections_test.csv, and a few pictures of detections in detections/.
"""
import argparse
import json
import os
import sys
import time
import warnings

from minidet.recipes import data_summary, format_recipe, recipe, with_iterations
from minidet.train_config import add_config_arguments, given_settings

VOC_LOCATIONS = (os.path.join("VOCdevkit", "VOC2007"), os.path.join("data", "VOCdevkit", "VOC2007"))
SYNTHETIC_DIR = os.path.join("data", "synthetic")

PICTURES = 6


def find_voc():
    """The first default VOC location that exists, or None."""
    for path in VOC_LOCATIONS:
        if os.path.isdir(os.path.join(path, "ImageSets", "Main")):
            return path
    return None


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", default=None,
                        help="a run's config.json to start from (recipe < --config < the options given)")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    add_config_arguments(parser)
    return parser.parse_args(argv)


def choose_settings(args, log=print, comm=None):
    """(dataset, {TrainConfig field: (value, where it comes from)}, synthetic?): the recipe of the
    preset on this data, then the --config file, then the options given. Data given as options
    (--data-dir or --coco-json) replace the --config's, test files included."""
    from minidet.data.open import DATA_SETTINGS, evaluation_source, open_dataset

    given = given_settings(args)
    base = {}
    if args.config:
        with open(args.config) as f:
            base = json.load(f)
    if "data_dir" in given or "coco_json" in given:
        base = {k: v for k, v in base.items() if k not in DATA_SETTINGS}
    chosen = dict(base, **given)
    data_dir, coco_json = chosen.get("data_dir"), chosen.get("coco_json")
    if data_dir is None and coco_json is None:
        data_dir = find_voc()
        if data_dir is None:
            log(f"no VOC found at {' or '.join(VOC_LOCATIONS)}: training on the embedded synthetic data set "
                f"({SYNTHETIC_DIR}), from scratch, on the CPU")
            data_dir = SYNTHETIC_DIR
        else:
            log(f"found VOC at {data_dir}")
    synthetic = data_dir is not None and os.path.abspath(data_dir) == os.path.abspath(SYNTHETIC_DIR)
    if synthetic and (comm is None or comm.is_root):
        from minidet.data.synthetic import write_synthetic_voc

        start = time.perf_counter()
        write_synthetic_voc(data_dir)
        log(f"synthetic data set ready in {data_dir} ({time.perf_counter() - start:.1f} s)")
    if comm is not None:
        comm.barrier()                  # the other ranks read what rank 0 wrote
    dataset = open_dataset(data_dir, chosen.get("split", "trainval"), chosen.get("class_names"), coco_json,
                           chosen.get("images"))
    if not args.no_eval:
        evaluation_source(dict(chosen, data_dir=data_dir))      # no test set: say so before training
    preset = chosen.get("preset") or ("small" if synthetic else "vgg16")
    settings = recipe(preset, data_summary(dataset, chosen.get("flip", True)), chosen.get("images_per_batch"),
                      1 if comm is None else comm.size)
    if "iters" in chosen and "step_size" not in chosen:
        source = "option" if "iters" in given else "--config"
        settings = with_iterations(settings, chosen["iters"], source)
    settings["out"] = ((os.path.join("runs", os.path.basename(os.path.abspath(data_dir))), "the data folder's name")
                       if data_dir is not None else
                       (os.path.join("runs", os.path.splitext(os.path.basename(coco_json))[0]), "the COCO file's name"))
    for source, values in (("--config", base), ("option", given)):
        for key, value in values.items():
            if key == "model_kwargs" and key in settings:   # merged into the preset's: '{"roi_op":
                preset_value, preset_source = settings[key]  # "align"}' keeps the small preset's width
                settings[key] = ({**preset_value, **value}, f"{preset_source} + {source}")
            else:
                settings[key] = (value, source)
    if data_dir is not None and "data_dir" not in chosen:
        settings["data_dir"] = (data_dir, "found")
    return dataset, settings, synthetic


def save_pictures(dataset, detections, class_names, folder, count=PICTURES):
    """The first `count` test images with their detections (score >= 0.5) drawn, as PNGs."""
    import cv2

    from minidet.detect import draw_detections

    os.makedirs(folder, exist_ok=True)
    boxes, labels, scores = detections
    paths = []
    for i in range(min(count, len(dataset))):
        picture = draw_detections(dataset.load_image(i), boxes[i], labels[i], scores[i], class_names)
        path = os.path.join(folder, f"{dataset.ids[i]}.png")
        cv2.imwrite(path, picture)
        paths.append(path)
    return paths


def main(argv=None):
    started = time.perf_counter()
    args = parse_args(argv)
    from minidet.backend import require_cupy
    from minidet.data.open import describe_source, evaluation_source
    from minidet.plots import plot_losses
    from minidet.train import TrainingDiverged, train
    from minidet.train_config import TrainConfig

    if args.device == "gpu":
        try:
            require_cupy()
        except RuntimeError as err:
            print(f"train_voc: {err}", file=sys.stderr)
            return 2
    from minidet.distributed import make_communicator

    comm = make_communicator(bool(args.distributed), args.device or "cpu", args.allreduce or "auto")
    say = print if comm.is_root else (lambda *args, **kw: None)     # rank 0 alone speaks and evaluates
    if not comm.is_root:
        warnings.simplefilter("ignore")
    try:
        dataset, settings, synthetic = choose_settings(args, say, comm)
    except (OSError, ValueError) as err:
        if comm.size > 1:
            raise                       # the abort hook ends every rank with this message
        say(f"train_voc: {err}", file=sys.stderr)
        return 2
    if settings["preset"][0] == "vgg16" and not settings.get("weights", (None,))[0]:
        say("train_voc: VGG16 is fine-tuned from ImageNet weights: pass --weights vgg16.npz (made by "
              "`minidet convert-weights vgg16-397923af.pth vgg16.npz`), or --preset small to train the "
              "narrow network from scratch", file=sys.stderr)
        return 2
    say("settings (value, where it comes from):\n" + format_recipe(settings))
    config = TrainConfig.from_dict({k: v for k, (v, _) in settings.items()})
    data = (f"{config.data_dir} ({config.split})" if config.data_dir else
            describe_source(coco_json=config.coco_json, images=config.images))
    say(f"training {config.preset} on {data} for {config.iters} iterations "
          f"on the {config.device.upper()}; run folder {config.out}")
    start = time.perf_counter()
    try:
        summary = train(config, dataset=dataset, comm=comm)
    except TrainingDiverged as err:     # every rank stops at the same iteration
        say(f"train_voc: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as err:
        if comm.size > 1:
            raise
        say(f"train_voc: {err}", file=sys.stderr)
        return 2
    if not comm.is_root:
        return 0
    # train_seconds includes the training split's proposals when they are computed (not cached)
    metrics = {"iterations": summary["iterations"], "train_seconds": round(time.perf_counter() - start, 1),
               "preset": config.preset, "data_dir": config.data_dir, "device": config.device,
               "final": summary["final"]}
    metrics.update({k: getattr(config, k) for k in ("coco_json", "images") if getattr(config, k)})
    plot_losses(os.path.join(config.out, "log.jsonl"), os.path.join(config.out, "loss.png"))
    if not args.no_eval:
        from minidet.inference import evaluate_checkpoint

        start = time.perf_counter()
        result = evaluate_checkpoint(summary["final"], split="test", device=config.device, out=config.out,
                                     proposals_dir=config.proposals_dir, class_names=config.class_names,
                                     workers=config.proposal_workers, proposals_file=config.test_proposals_file,
                                     proposals_layout=config.proposals_layout, **evaluation_source(config.to_dict()))
        metrics.update(map=result["map"], ap=result["ap"], test_images=result["images"],
                       eval_seconds=round(time.perf_counter() - start, 1),
                       detect_seconds=round(result["detect_seconds"], 1))
        if result["coco"] is not None:
            metrics["coco"] = {k: v for k, v in result["coco"].items() if k != "stats"}
        dataset = result["dataset"]
        save_pictures(dataset, result["detections"], list(dataset.class_names),
                      os.path.join(config.out, "detections"))
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    with open(os.path.join(config.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    if "map" in metrics:
        say(f"mAP {100 * metrics['map']:.1f} (VOC07, {metrics['test_images']} test images); "
              f"{metrics['seconds']:.0f} s in all")
    say(f"metrics, curves and pictures in {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
