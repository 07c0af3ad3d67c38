"""Evaluate a trained minidet model with the PASCAL VOC07 mAP and COCO's metrics.

    python examples/eval_voc.py --checkpoint runs/synthetic/final.npz
    python examples/eval_voc.py --checkpoint runs/voc07/final.npz --data-dir VOCdevkit/VOC2007 --device gpu
    python examples/eval_voc.py --checkpoint runs/voc07/final.npz --test-scales 480,576,688,864,1200 --max-size 2000
    python examples/eval_voc.py --checkpoint runs/mine/final.npz --coco-json val.json --images val_images/
    python examples/eval_voc.py --detections results.json --coco-json val.json --images val_images/

Without --data-dir or --coco-json, the data the model was trained on is used (it is recorded in
the model): the folder's test split, or the COCO file it was tested on after training. A COCO
file's categories are matched to the model's classes by name. The model is tested at its own
scale, or at --scale, or at several with --test-scales (the paper's multi-scale testing, section
5.1: each proposal is pooled at the scale where it is closest to 224x224 pixels). --detections
scores detections made elsewhere (COCO results .json, or minidet's .csv) without a model.

Prints the per-class VOC AP table and COCO's (AP@[.5:.95], AP50, AP75, AP of small, medium and
large objects, AR; they need pycocotools: pip install 'minidet[coco]'); writes eval_<split>.json,
pr_<split>.png (precision-recall curves) and the detections as detections_<split>.json (COCO
results) and detections_<split>.csv beside the checkpoint (or the detections file), or into --out.
"""
import sys

from minidet.inference import main

if __name__ == "__main__":
    sys.exit(main(prog="eval_voc", description=__doc__.split("\n")[0], epilog=__doc__))
