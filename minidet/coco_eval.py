"""COCO's detection metrics, computed by pycocotools' COCOeval (the field's referee, not rewritten here).

coco_evaluate gives the twelve numbers of COCOeval.summarize(): AP averaged over IoU 0.50:0.05:0.95,
AP at IoU 0.5 and 0.75, AP of small (area < 32^2), medium and large objects, AR given 1, 10 and 100
detections per image, AR small / medium / large; and per class the AP and AP50, read from COCOeval's
precision array (T IoUs, R recall points, K classes, A areas, M detection limits) the way summarize
reads it: the mean over the IoUs and recall points of the "all" area and 100 detections, leaving out
the -1 entries of a class without ground truth.

The ground truth is any data set: a COCODataset gives its file's annotations as written (crowds as
iscrowd says), a VOC-layout one is converted in memory by minidet.convert.voc_to_coco_dict, where
difficult objects become iscrowd=1 (that module's docstring says why), so that they neither count
nor penalise, as in VOC. Box areas, and so the small / medium / large split, are COCO's w * h.
"""
import contextlib
import copy
import io
import os

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
STAT_TEXT = ("AP @[IoU=0.50:0.95]", "AP @[IoU=0.50]", "AP @[IoU=0.75]", "AP small", "AP medium", "AP large",
             "AR maxDets=1", "AR maxDets=10", "AR maxDets=100", "AR small", "AR medium", "AR large")


def _require_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError("COCO evaluation needs pycocotools, a dependency of minidet that is missing "
                          "here: pip install pycocotools") from None
    return COCO, COCOeval


def coco_ground_truth(dataset_or_coco_gt):
    """A pycocotools COCO object from a COCO object (used as is), a path to a COCO JSON, a COCO dict
    (copied), a COCODataset (its file's annotations), or any other data set (voc_to_coco_dict)."""
    COCO, _ = _require_pycocotools()
    gt = dataset_or_coco_gt
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        from minidet.data.coco import read_json

        data = read_json(os.fspath(gt))
    elif isinstance(gt, dict):
        data = copy.deepcopy(gt)
    elif hasattr(gt, "coco_ground_truth"):
        data = gt.coco_ground_truth()
    else:
        from minidet.convert import voc_to_coco_dict

        data = voc_to_coco_dict(gt)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _results(gt, detections, dataset):
    """COCO result dicts from (boxes, labels, scores) lists in dataset order, a list of dicts, or a file."""
    from minidet.detections_io import check_coco_results, coco_results, read_coco_results

    source = "detections"
    if isinstance(detections, (str, os.PathLike)):
        source = os.fspath(detections)
        results = read_coco_results(source)
    elif isinstance(detections, tuple) and len(detections) == 3:
        if dataset is None:
            raise ValueError("detections as (boxes, labels, scores) lists need a data set, "
                             "to give their images and labels COCO ids; pass COCO results instead")
        from minidet.data.coco import coco_ids

        results = coco_results(*detections, *coco_ids(dataset))
    else:
        results = detections
    check_coco_results(results, gt.getImgIds(), gt.getCatIds(), source)
    return results


def _load_results(gt, results):
    """COCO.loadRes, which fails on an empty list: then an empty result set of the same images."""
    COCO, _ = _require_pycocotools()
    if results:
        return gt.loadRes(copy.deepcopy(results))        # loadRes writes into its entries
    empty = COCO()
    empty.dataset = dict(images=list(gt.dataset["images"]), categories=copy.deepcopy(gt.dataset["categories"]),
                         annotations=[])
    empty.createIndex()
    return empty


def _class_ap(precision, k, t=slice(None)):
    """Mean of precision[t, :, k, area all, 100 detections] over its defined (> -1) entries; None if none."""
    p = precision[t, :, k, 0, -1]
    p = p[p > -1]
    return float(np.mean(p)) if p.size else None


def coco_evaluate(dataset_or_coco_gt, detections):
    """COCO bbox evaluation of detections against a ground truth.

    dataset_or_coco_gt: a data set, COCO dict, COCO JSON path or pycocotools COCO (coco_ground_truth).
    detections: (boxes, labels, scores), lists in dataset order (minidet boxes; needs a data set), or
    COCO results (a list of dicts or a results JSON path). Returns dict with the twelve STAT_NAMES
    (None where COCOeval gives -1, nothing to measure), stats (COCOeval.stats, the twelve as it gives
    them), ap_by_class and ap50_by_class {class name: AP or None} in label order (category-id order
    without a data set), images, detections (counts), summary (summarize()'s printed text).
    """
    _, COCOeval = _require_pycocotools()
    dataset = dataset_or_coco_gt if hasattr(dataset_or_coco_gt, "class_names") else None
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        gt = coco_ground_truth(dataset_or_coco_gt)
        results = _results(gt, detections, dataset)
        evaluator = COCOeval(gt, _load_results(gt, results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    stats = [float(s) for s in evaluator.stats]
    out = {name: (None if s == -1 else s) for name, s in zip(STAT_NAMES, stats)}
    precision = evaluator.eval["precision"]
    cat_ids = list(evaluator.params.catIds)
    at_50 = np.where(evaluator.params.iouThrs == 0.5)[0]
    names = {c: gt.cats[c]["name"] for c in cat_ids}
    order = cat_ids
    if dataset is not None:
        from minidet.data.coco import coco_ids

        order = [c for c in coco_ids(dataset)[1] if c in names]
    out.update(stats=stats, images=len(gt.getImgIds()), detections=len(results), summary=summary.getvalue(),
               ap_by_class={names[c]: _class_ap(precision, cat_ids.index(c)) for c in order},
               ap50_by_class={names[c]: _class_ap(precision, cat_ids.index(c), at_50) for c in order})
    return out


def coco_metrics(dataset, detections, log=print):
    """coco_evaluate's numbers (without the printed summary), their table logged; None, said in one
    line, when pycocotools is not installed (the VOC figures do not need it)."""
    try:
        _require_pycocotools()
    except ImportError as err:
        log(f"COCO metrics skipped: {err}")
        return None
    result = coco_evaluate(dataset, detections)
    log(format_coco_table(result))
    return {k: v for k, v in result.items() if k != "summary"}


def format_coco_table(result):
    """The twelve COCO numbers and the per-class AP / AP50 table of a coco_evaluate result, as text (x100)."""
    def pct(v):
        return "  -  " if v is None else f"{100 * v:5.1f}"

    lines = [f"{text:<20} {pct(result[name])}" for name, text in zip(STAT_NAMES, STAT_TEXT)]
    width = max([len(n) for n in result["ap_by_class"]] + [5])
    lines += ["", f"{'class':<{width}}  AP     AP50"]
    for name, ap in result["ap_by_class"].items():
        lines.append(f"{name:<{width}}  {pct(ap)}  {pct(result['ap50_by_class'][name])}")
    return "\n".join(lines)
