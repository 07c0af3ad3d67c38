"""RoI pooling against RoIAlign, from conv5_3 against conv4_3: label conflicts, mAP and time, one table.

    python examples/study_roi_layers.py --data-dir data/synthetic --iters 1600 --out runs/study_synthetic
    python examples/study_roi_layers.py --data-dir ../shared/data/BCCD --classes RBC,WBC,Platelets \\
        --iters 1200 --out runs/study_bccd

For each of the four settings {RoIPool, RoIAlign} x {conv5_3 (stride 16), conv4_3 (stride 8)} the
small preset is trained from scratch with its recipe for this data (minidet.recipes), the same
iterations and the same seed, then evaluated on the test split (VOC07 mAP). Beside each: the share
of the training sampler's RoIs whose pooled input is identical to another RoI's of the same image
while their labels differ (minidet.study.conflicts, decided exactly), at the training scale, and the
median seconds per training iteration. Writes OUT/study.json and OUT/study.md; each setting's run
folder is OUT/<op>_<layer>.
"""
import argparse
import dataclasses
import json
import os
import statistics
import sys

SETTINGS = (("pool", "conv5_3"), ("align", "conv5_3"), ("pool", "conv4_3"), ("align", "conv4_3"))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data-dir", required=True, help="a VOC- or COCO-layout folder with trainval and test splits")
    parser.add_argument("--classes", default=None, help="class names a,b,c when the folder has no classes.txt")
    parser.add_argument("--iters", type=int, default=None, help="iterations of every run (default: the recipe's)")
    parser.add_argument("--scales", default=None, help="training scale (default: the recipe's)")
    parser.add_argument("--conflict-images", type=int, default=40, help="images for the conflict rates (default 40)")
    parser.add_argument("--proposal-mode", default=None,
                        help="selective-search mode of every run (default: the recipe's; \"auto\" is measured once)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="study folder")
    return parser.parse_args(argv)


def run_setting(base, op, layer, out, log):
    """Train and evaluate one setting -> dict(map, ap, seconds_per_iteration, iterations)."""
    from minidet.inference import evaluate_checkpoint
    from minidet.runlog import read_log
    from minidet.train import train

    config = dataclasses.replace(base, out=os.path.join(out, f"{op}_{layer}"),
                                 model_kwargs=dict(base.model_kwargs, roi_op=op, roi_layer=layer))
    summary = train(config, log=log)
    seconds = [r["seconds"] for r in read_log(os.path.join(config.out, "log.jsonl"))]
    result = evaluate_checkpoint(summary["final"], config.data_dir, "test", out=config.out,
                                 proposals_dir=config.proposals_dir, class_names=config.class_names, log=log)
    return {"map": result["map"], "ap": result["ap"], "iterations": summary["iterations"],
            "seconds_per_iteration": statistics.median(seconds)}


def main(argv=None):
    args = parse_args(argv)
    from minidet.arguments import parse_classes, parse_scales
    from minidet.data.proposals import proposals_cache_dir
    from minidet.data.open import open_dataset
    from minidet.recipes import data_summary, recipe, with_iterations
    from minidet.study.conflicts import run_conflict_study
    from minidet.train_config import TrainConfig

    classes = parse_classes(args.classes)
    dataset = open_dataset(args.data_dir, "trainval", classes)
    settings = recipe("small", data_summary(dataset))
    if args.iters:
        settings = with_iterations(settings, args.iters, "option")
    values = {k: v for k, (v, _) in settings.items()}
    if args.scales:
        values["scales"] = parse_scales(args.scales)
    values["proposal_mode"] = args.proposal_mode or values["proposal_mode"]
    os.makedirs(args.out, exist_ok=True)
    base = TrainConfig(data_dir=args.data_dir, class_names=classes, seed=args.seed, progress=False,
                       proposals_dir=proposals_cache_dir(args.data_dir, os.path.join(args.out, "run")),
                       **{k: v for k, v in values.items() if k != "out"})
    if base.proposal_mode == "auto":    # the conflict count and the four runs share one mode: measured once
        from minidet.data.recall import choose_mode

        base = dataclasses.replace(base, proposal_mode=choose_mode(dataset, base.proposals_dir, progress=False)[0])
    print(f"study on {args.data_dir}: {base.iters} iterations, scale {base.scales[0]}, seed {base.seed}, "
          f"{base.proposal_mode} proposals")
    conflicts = run_conflict_study(args.data_dir, "trainval", scales=tuple(base.scales), images=args.conflict_images,
                                   seed=args.seed, class_names=classes, proposals_dir=base.proposals_dir,
                                   proposal_mode=base.proposal_mode, progress=False)
    rows = []
    for op, layer in SETTINGS:
        row = next(r for r in conflicts["rows"] if r["roi_op"] == op and r["roi_layer"] == layer)
        print(f"training {op} on {layer} ...", flush=True)
        rows.append(dict(roi_op=op, roi_layer=layer, conflict=row["conflict"], identical=row["identical"],
                         **run_setting(base, op, layer, args.out, log=lambda *a: None)))
        print(f"  mAP {rows[-1]['map']:.3f}, {rows[-1]['seconds_per_iteration']:.3f} s/iteration", flush=True)
    table = ["| RoI op | RoI layer | identical RoIs | label conflicts | VOC07 mAP | s / iteration |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['roi_op']} | {r['roi_layer']} | {100 * r['identical']:.1f}% | {100 * r['conflict']:.2f}% | "
              f"{r['map']:.3f} | {r['seconds_per_iteration']:.3f} |" for r in rows]
    from minidet.atomic import atomic_write

    with atomic_write(os.path.join(args.out, "study.json"), "w") as f:
        json.dump({"data_dir": args.data_dir, "config": base.to_dict(), "rows": rows}, f, indent=2)
    with atomic_write(os.path.join(args.out, "study.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
