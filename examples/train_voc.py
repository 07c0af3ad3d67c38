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
trained on it from scratch on the CPU (settings in SYNTHETIC below).

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

# The paper's run (SPEC.md "Training"), as TrainConfig fields.
VOC = dict(out=os.path.join("runs", "voc07"), preset="vgg16", iters=40000, lr=0.001, step_size=30000,
           scales=(600,), max_size=1000, images_per_batch=2, rois_per_image=64, checkpoint_every=2000)

# The synthetic run, tuned to finish on two CPU cores within minutes:
# - the narrow network learns from scratch, so unlike the paper's fine-tuning it takes a higher rate
#   after a short linear warmup (from a tenth of it: the first steps of an untrained network are
#   the ones that blow up), and one x0.1 step near the end;
# - no dropout: a 256-wide fc6/fc7 trained for a few thousand steps underfits rather than overfits,
#   and dropout halves the signal each step sees;
# - 128 RoIs per image instead of 64: the fully connected part is cheap next to the convolutions,
#   so more RoIs per image give more gradient for almost the same time per iteration;
# - the images are 320x240: trained and tested at their own size (shorter side 240) rather than
#   600, which would cost 6x the computation for no new detail;
# - "compact" selective search: found more of the synthetic objects than "fast" in a third of the time.
SYNTHETIC = dict(out=os.path.join("runs", "synthetic"), preset="small", iters=3000, lr=0.02, warmup_iters=100,
                 warmup_factor=0.1, step_size=2400, scales=(240,), max_size=1000, images_per_batch=2,
                 rois_per_image=128, checkpoint_every=500, proposal_mode="compact",
                 model_kwargs={"dropout": 0.0})

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
    """(data_dir, settings dict of TrainConfig fields, synthetic?) from the arguments, without numpy."""
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
    settings = dict(SYNTHETIC if synthetic else VOC)
    if not synthetic and args.data_dir is not None:
        settings["out"] = os.path.join("runs", os.path.basename(os.path.abspath(data_dir)))
    if args.out:
        settings["out"] = args.out
    if args.preset:
        settings["preset"] = args.preset
    if args.iters is not None:
        settings["iters"] = args.iters
        if settings["step_size"]:   # keep the rate step at the same share of the run
            ratio = settings["step_size"] / (SYNTHETIC if synthetic else VOC)["iters"]
            settings["step_size"] = max(1, int(round(ratio * args.iters)))
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
    data_dir, settings, synthetic = choose_settings(args)

    from minidet.backend import require_cupy
    from minidet.train import TrainConfig, TrainingDiverged, plot_losses, train

    if args.device == "gpu":
        try:
            require_cupy()
        except RuntimeError as err:
            print(f"train_voc: {err}", file=sys.stderr)
            return 2
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
