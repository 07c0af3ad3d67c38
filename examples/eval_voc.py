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
import sys

from minidet.inference import main

if __name__ == "__main__":
    sys.exit(main(prog="eval_voc", description=__doc__.split("\n")[0], epilog=__doc__))
