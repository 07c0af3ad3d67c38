"""Evaluate a trained minidet model with the PASCAL VOC07 mAP.

    python examples/eval_voc.py --checkpoint runs/synthetic/final.npz
    python examples/eval_voc.py --checkpoint runs/voc07/final.npz --data-dir VOCdevkit/VOC2007 --device gpu

Without --data-dir, the folder the model was trained on is used (it is recorded in the model),
with its test split. Prints the per-class AP table; writes eval_<split>.json and pr_<split>.png
(precision-recall curves) beside the checkpoint, or into --out.
"""
import argparse
import os
import sys

from minidet.backend import require_cupy
from minidet.evaluate import evaluate_checkpoint
from minidet.checkpoint import load_npz


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--checkpoint", required=True, help="a run's final.npz (or checkpoint.npz)")
    parser.add_argument("--data-dir", default=None, help="VOC-layout folder (default: the training folder)")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--out", default=None, help="results folder (default: the checkpoint's folder)")
    parser.add_argument("--scale", type=int, default=None, help="test scale (default: the model's)")
    parser.add_argument("--area-ap", action="store_true", help="VOC2010+ area AP instead of the 11-point AP")
    args = parser.parse_args(argv)

    if not os.path.isfile(args.checkpoint):
        print(f"eval_voc: {args.checkpoint}: no such file", file=sys.stderr)
        return 2
    if args.device == "gpu":
        try:
            require_cupy()
        except RuntimeError as err:
            print(f"eval_voc: {err}", file=sys.stderr)
            return 2
    data_dir = args.data_dir
    if data_dir is None:
        _, meta = load_npz(args.checkpoint)
        data_dir = meta.get("config", {}).get("data_dir")
        if not data_dir or not os.path.isdir(data_dir):
            print("eval_voc: the checkpoint does not name a training folder that exists here; "
                  "pass --data-dir", file=sys.stderr)
            return 2
        print(f"data: {data_dir} (recorded in the checkpoint)")
    out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    try:
        summary = evaluate_checkpoint(args.checkpoint, data_dir, args.split, args.device, out,
                                      scale=args.scale, use_07_metric=not args.area_ap)
    except (FileNotFoundError, ValueError) as err:
        print(f"eval_voc: {err}", file=sys.stderr)
        return 2
    print(f"mAP {100 * summary['map']:.1f} on {summary['images']} images of {args.split}; "
          f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
