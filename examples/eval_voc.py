"""Evaluate a trained minidet model with the PASCAL VOC07 mAP.

    python examples/eval_voc.py --checkpoint runs/synthetic/final.npz
    python examples/eval_voc.py --checkpoint runs/voc07/final.npz --data-dir VOCdevkit/VOC2007 --device gpu
    python examples/eval_voc.py --checkpoint runs/voc07/final.npz --test-scales 480,576,688,864,1200 --max-size 2000

Without --data-dir, the folder the model was trained on is used (it is recorded in the model),
with its test split. The model is tested at its own scale, or at --scale, or at several with
--test-scales (the paper's multi-scale testing, section 5.1: each proposal is pooled at the scale
where it is closest to 224x224 pixels). Prints the per-class AP table; writes eval_<split>.json
and pr_<split>.png (precision-recall curves) beside the checkpoint, or into --out.
"""
import argparse
import os
import sys

from minidet.backend import require_cupy
from minidet.inference import add_scale_arguments, evaluate_checkpoint, scales_from_arguments
from minidet.checkpoint import load_npz


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--checkpoint", required=True, help="a run's final.npz (or checkpoint.npz)")
    parser.add_argument("--data-dir", default=None, help="VOC-layout folder (default: the training folder)")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--out", default=None, help="results folder (default: the checkpoint's folder)")
    add_scale_arguments(parser)
    parser.add_argument("--area-ap", action="store_true", help="VOC2010+ area AP instead of the 11-point AP")
    args = parser.parse_args(argv)

    try:
        scale = scales_from_arguments(args)
    except ValueError as err:
        print(f"eval_voc: {err}", file=sys.stderr)
        return 2
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
                                      scale=scale, max_size=args.max_size, use_07_metric=not args.area_ap)
    except (FileNotFoundError, ValueError) as err:
        print(f"eval_voc: {err}", file=sys.stderr)
        return 2
    print(f"mAP {100 * summary['map']:.1f} on {summary['images']} images of {args.split} at scale "
          f"{summary['scale']} (longer side <= {summary['max_size']}); results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
