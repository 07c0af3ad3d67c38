"""VOC07 evaluation on cases worked out by hand (the expected numbers are written in the comments)."""
import numpy as np
import pytest

from minidet.evaluate import (VOC07_RECALL_THRESHOLDS, box_iou_voc, eval_detection_voc, matlab_colon, voc_ap,
                              voc_average_precision, voc_precision_recall)

BOX = [0, 0, 9, 9]          # 10 x 10 pixels, pixel-inclusive
FAR = [50, 50, 60, 60]      # overlaps nothing


def evaluate(dets, gts, n_images, **kw):
    """dets: [(image, box, label, score)], gts: [(image, box, label, difficult)] -> eval output."""
    pb, pl, ps, gb, gl, gd = ([] for _ in range(6))
    for i in range(n_images):
        mine = [d for d in dets if d[0] == i]
        pb.append(np.array([d[1] for d in mine], dtype=np.float32).reshape(-1, 4))
        pl.append(np.array([d[2] for d in mine], dtype=np.int64))
        ps.append(np.array([d[3] for d in mine], dtype=np.float32))
        theirs = [g for g in gts if g[0] == i]
        gb.append(np.array([g[1] for g in theirs], dtype=np.float32).reshape(-1, 4))
        gl.append(np.array([g[2] for g in theirs], dtype=np.int64))
        gd.append(np.array([g[3] for g in theirs], dtype=bool))
    return eval_detection_voc(pb, pl, ps, gb, gl, gd, **kw)


def test_box_iou_counts_pixels_inclusively():
    # 10x10 against its 10x5 top half: 50 / 100; 1-pixel-wide touch at x = 9: 10 / 190
    iou = box_iou_voc([BOX], [[0, 0, 9, 4], [9, 0, 18, 9], FAR])
    np.testing.assert_allclose(iou, [[0.5, 10 / 190, 0.0]])


def test_second_detection_of_an_object_is_false_positive():
    # img0: TP (0.9), duplicate FP (0.8); img1: TP (0.7).  prec 1, 1/2, 2/3; rec 1/2, 1/2, 1.
    # 11-point: t = 0..0.5 -> 1 (6 points), t = 0.6..1 -> 2/3 (5 points): (6 + 10/3) / 11 = 28/33.
    # area: 0.5 * 1 + 0.5 * 2/3 = 5/6.
    gts = [(0, BOX, 1, False), (1, BOX, 1, False)]
    dets = [(0, BOX, 1, 0.9), (0, BOX, 1, 0.8), (1, BOX, 1, 0.7)]
    out = evaluate(dets, gts, 2)
    np.testing.assert_allclose(out["precision"][1], [1, 0.5, 2 / 3])
    np.testing.assert_allclose(out["recall"][1], [0.5, 0.5, 1.0])
    assert out["ap"][1] == pytest.approx(28 / 33)
    assert evaluate(dets, gts, 2, use_07_metric=False)["ap"][1] == pytest.approx(5 / 6)


def test_detection_of_difficult_object_is_ignored_and_not_counted_in_recall():
    # img0: A (normal) and D (difficult, far away). Dets: on D 0.9 (ignored), on A 0.8 (TP), stray 0.7 (FP).
    # n_pos = 1; tp 0, 1, 1; fp 0, 0, 1; precision nan, 1, 1/2; recall 0, 1, 1 -> AP 1.
    gts = [(0, BOX, 1, False), (0, FAR, 1, True)]
    dets = [(0, FAR, 1, 0.9), (0, BOX, 1, 0.8), (0, [100, 100, 120, 120], 1, 0.7)]
    out = evaluate(dets, gts, 1)
    np.testing.assert_allclose(out["recall"][1], [0, 1, 1])
    np.testing.assert_allclose(out["precision"][1][1:], [1, 0.5])
    assert out["ap"][1] == pytest.approx(1.0)


def test_best_box_difficult_ignores_detection_even_if_a_normal_box_overlaps():
    # The detection's highest IoU is with the difficult box (1.0), the normal box by 80/120:
    # the devkit looks only at the best box, so the detection is ignored and the normal box stays missed.
    normal = [0, 2, 9, 11]
    gts = [(0, BOX, 1, True), (0, normal, 1, False)]
    out = evaluate([(0, BOX, 1, 0.9)], gts, 1)
    np.testing.assert_allclose(out["recall"][1], [0.0])
    assert out["ap"][1] == 0.0


def test_images_without_detections_or_ground_truth():
    # img0: gt + TP (0.5); img1: gt, no detection; img2: no gt, one detection (0.9, FP).
    # order: FP, TP -> precision 0, 1/2; recall 0, 1/2. 11-point: t = 0..0.5 -> 1/2 (6 points) -> 3/11.
    gts = [(0, BOX, 1, False), (1, BOX, 1, False)]
    dets = [(0, BOX, 1, 0.5), (2, BOX, 1, 0.9)]
    out = evaluate(dets, gts, 3)
    np.testing.assert_allclose(out["precision"][1], [0, 0.5])
    np.testing.assert_allclose(out["recall"][1], [0, 0.5])
    assert out["ap"][1] == pytest.approx(3 / 11)


def test_iou_exactly_half_is_a_true_positive():
    # a 10x5 detection inside a 10x10 box: IoU 50/100 = 0.5 exactly; the devkit's >= makes it a TP
    out = evaluate([(0, [0, 0, 9, 4], 1, 0.9)], [(0, BOX, 1, False)], 1)
    assert out["ap"][1] == pytest.approx(1.0)
    # just under: 10x4 -> 40/100
    out = evaluate([(0, [0, 0, 9, 3], 1, 0.9)], [(0, BOX, 1, False)], 1)
    assert out["ap"][1] == 0.0


def test_detection_whose_best_box_is_taken_is_false_even_if_another_box_overlaps():
    # gt1 = BOX, gt2 = rows 2..11. det1 = BOX (IoU 1 with gt1) -> TP.
    # det2 = rows 0..10: IoU 100/110 with gt1 (taken), 90/120 = 0.75 with gt2 -> still FP.
    # precision 1, 1/2; recall 1/2, 1/2 -> 11-point AP = 6/11.
    gt2 = [0, 2, 9, 11]
    gts = [(0, BOX, 1, False), (0, gt2, 1, False)]
    dets = [(0, BOX, 1, 0.9), (0, [0, 0, 9, 10], 1, 0.8)]
    out = evaluate(dets, gts, 1)
    np.testing.assert_allclose(out["precision"][1], [1, 0.5])
    np.testing.assert_allclose(out["recall"][1], [0.5, 0.5])
    assert out["ap"][1] == pytest.approx(6 / 11)


def test_eleven_point_and_area_ap_by_hand():
    # five images, one object each; detections in score order: TP FP(dup) TP TP FP(stray) TP; img4 missed.
    # tp 1 1 2 3 3 4; fp 0 1 1 1 2 2; precision 1 .5 2/3 .75 .6 2/3; recall .2 .2 .4 .6 .6 .8
    # 11-point: t=0,.1,.2 -> 1; t=.3,.4,.5,.6 -> .75; t=.7,.8 -> 2/3; t=.9,1 -> 0
    #   = (3 + 3 + 4/3) / 11 = 2/3
    # area under the envelope: .2*1 + .2*.75 + .2*.75 + .2*(2/3) + .2*0 = 19/30
    gts = [(i, BOX, 1, False) for i in range(5)]
    dets = [(0, BOX, 1, 0.9), (0, BOX, 1, 0.8), (1, BOX, 1, 0.7), (2, BOX, 1, 0.6),
            (3, FAR, 1, 0.5), (3, BOX, 1, 0.4)]
    out = evaluate(dets, gts, 5)
    np.testing.assert_allclose(out["precision"][1], [1, 0.5, 2 / 3, 0.75, 0.6, 2 / 3])
    np.testing.assert_allclose(out["recall"][1], [0.2, 0.2, 0.4, 0.6, 0.6, 0.8])
    assert out["ap"][1] == pytest.approx(2 / 3)
    assert evaluate(dets, gts, 5, use_07_metric=False)["ap"][1] == pytest.approx(19 / 30)


def test_detections_are_ranked_over_all_images_by_score():
    # the same matches as the previous test, listed in a shuffled order and spread over images
    gts = [(i, BOX, 1, False) for i in range(5)]
    dets = [(3, BOX, 1, 0.4), (2, BOX, 1, 0.6), (0, BOX, 1, 0.8), (3, FAR, 1, 0.5),
            (1, BOX, 1, 0.7), (0, BOX, 1, 0.9)]
    assert evaluate(dets, gts, 5)["ap"][1] == pytest.approx(2 / 3)


def test_ap_is_indexed_by_label_and_map_skips_classes_without_ground_truth():
    # label 1: perfect (AP 1); label 2: only a difficult object (NaN); label 3: missed (AP 0).
    # ap[0] (background) is NaN; mAP = mean(1, 0) = 0.5
    gts = [(0, BOX, 1, False), (0, FAR, 2, True), (1, BOX, 3, False)]
    dets = [(0, BOX, 1, 0.9), (0, FAR, 2, 0.8), (1, FAR, 3, 0.7)]
    out = evaluate(dets, gts, 2)
    assert out["ap"].shape == (4,)
    assert np.isnan(out["ap"][0]) and np.isnan(out["ap"][2])
    assert out["ap"][1] == pytest.approx(1.0) and out["ap"][3] == 0.0
    assert out["map"] == pytest.approx(0.5)
    # a label beyond the largest seen appears with num_labels, as NaN
    assert evaluate(dets, gts, 2, num_labels=6)["ap"].shape == (6,)


def test_detection_of_another_class_does_not_match():
    out = evaluate([(0, BOX, 2, 0.9)], [(0, BOX, 1, False)], 1)
    assert out["ap"][1] == 0.0 and np.isnan(out["ap"][2])


def test_voc_ap_of_an_empty_curve_is_zero():
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=False) == 0.0


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        eval_detection_voc([np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0)], [], [], [])


def test_recall_thresholds_are_the_devkits_for_loop():
    # VOCevaldet.m: `for t=0:0.1:1`. MATLAB's colon counts the first half up from 0 (k * 0.1) and
    # the second half down from 1 (1 - (10 - k) * 0.1). By hand, as doubles:
    #   3 * 0.1 = 0.30000000000000004, one unit in the last place above the double nearest 3/10;
    #   1 - 4 * 0.1 = 0.6, 1 - 3 * 0.1 = 0.7 (0.6999999999999999555910790149937), 1 - 0.2, 1 - 0.1:
    #   the doubles nearest 6/10 .. 9/10 (np.arange(0, 1.1, 0.1) has 0.6000000000000001 and
    #   0.7000000000000001 there instead).
    expected = [0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert VOC07_RECALL_THRESHOLDS.tolist() == expected
    assert float(VOC07_RECALL_THRESHOLDS[3]).hex() == "0x1.3333333333334p-2"   # 3/10 is 0x1.3333333333333p-2
    assert (3 / 10).hex() == "0x1.3333333333333p-2"
    assert matlab_colon(0.0, 0.1, 1.0).tolist() == expected
    assert matlab_colon(0.0, 0.25, 1.0).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_a_recall_of_exactly_three_tenths_does_not_reach_the_fourth_threshold():
    # ten objects, three found with nothing wrong: precision 1, 1, 1; recall 0.1, 0.2, 0.3 (= 3/10).
    # t = 0, 0.1, 0.2 -> 1; t = 0.30000000000000004 > 3/10 -> no precision, 0; the rest 0: AP = 3/11.
    # (Thresholds at exactly k/10 would give 4/11.)
    gts = [(i, BOX, 1, False) for i in range(10)]
    dets = [(i, BOX, 1, 0.9 - 0.1 * i) for i in range(3)]
    out = evaluate(dets, gts, 10)
    assert out["recall"][1][-1] == 3 / 10
    assert out["ap"][1] == pytest.approx(3 / 11)
    assert out["ap"][1] != pytest.approx(4 / 11)
    # four found of ten: recall 0.4 reaches t = 0.30000000000000004 and 0.4 -> 5/11
    out = evaluate([(i, BOX, 1, 0.9 - 0.1 * i) for i in range(4)], gts, 10)
    assert out["ap"][1] == pytest.approx(5 / 11)


def test_eval_detection_voc_is_precision_recall_then_average_precision():
    # the split: the curves from voc_precision_recall, the APs from voc_average_precision, label by label
    gts = [(0, BOX, 1, False), (0, FAR, 2, True), (1, BOX, 3, False), (1, FAR, 1, False)]
    dets = [(0, BOX, 1, 0.9), (0, FAR, 2, 0.8), (1, FAR, 3, 0.7), (1, FAR, 1, 0.6), (1, BOX, 1, 0.95)]
    pb, pl, ps, gb, gl, gd = ([] for _ in range(6))
    for i in range(2):
        mine, theirs = [d for d in dets if d[0] == i], [g for g in gts if g[0] == i]
        pb.append(np.array([d[1] for d in mine], np.float64))
        pl.append(np.array([d[2] for d in mine]))
        ps.append(np.array([d[3] for d in mine]))
        gb.append(np.array([g[1] for g in theirs], np.float64))
        gl.append(np.array([g[2] for g in theirs]))
        gd.append(np.array([g[3] for g in theirs]))
    precision, recall = voc_precision_recall(pb, pl, ps, gb, gl, gd)
    # label 1 in score order: img1 BOX (FP), img0 BOX (TP), img1 FAR (TP): precision 0, 1/2, 2/3
    np.testing.assert_allclose(precision[1], [0, 0.5, 2 / 3])
    np.testing.assert_allclose(recall[1], [0, 0.5, 1])
    assert precision[0] is None and recall[0] is None           # the background: seen nowhere
    assert recall[2] is None and precision[2] is not None       # only a difficult object
    ap = voc_average_precision(precision, recall)
    out = eval_detection_voc(pb, pl, ps, gb, gl, gd)
    np.testing.assert_array_equal(np.isnan(ap), [True, False, True, False])
    np.testing.assert_allclose(out["ap"], ap)
    # the interpolated precision is 2/3 at every recall (the last point dominates): AP 2/3 either way
    assert ap[1] == pytest.approx(2 / 3) and ap[3] == 0.0
    assert voc_average_precision(precision, recall, use_07_metric=False)[1] == pytest.approx(2 / 3)
