"""The GPU's NMS on exact ties: a box whose IoU equals the threshold is suppressed, as on the CPU."""
import numpy as np
import pytest

from minidet.backend import asnumpy

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    return pytest.importorskip("cupy")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("first, second, iou", [
    ([0, 0, 9, 9], [0, 0, 9, 4], 0.5),       # a 10x10 box and its 10x5 half: 50 / 100
    ([0, 0, 9, 9], [0, 0, 4, 4], 0.25),      # and its 5x5 corner: 25 / 100
    ([0, 0, 9, 7], [0, 0, 9, 2], 0.375),     # a 10x8 box and the 10x3 strip inside it: 30 / 80
])
def test_nms_gpu_suppresses_at_an_iou_equal_to_the_threshold(cp, dtype, first, second, iou):
    from minidet.ops.nms import nms

    boxes = cp.asarray(np.array([first, second], dtype))
    scores = cp.asarray(np.array([1.0, 0.5], dtype))
    assert asnumpy(nms(boxes, scores, iou)).tolist() == [0]
    assert asnumpy(nms(boxes, scores, float(np.nextafter(dtype(iou), dtype(1))))).tolist() == [0, 1]


@pytest.mark.parametrize("n", [3, 70, 130])
def test_nms_gpu_ties_across_tiles_match_the_cpu(cp, n):
    # copies of a 10x10 box and of its 10x5 half, spread over several 64-box tiles: every pair is an
    # exact tie at 0.5 or an IoU of 1
    from minidet.ops.nms import nms

    rng = np.random.default_rng(n)
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 4]], np.float32)[rng.integers(0, 2, n)]
    boxes += 40 * rng.integers(0, 3, (n, 1)).astype(np.float32)     # three separate clusters
    scores = rng.permutation(n).astype(np.float32)
    for threshold in (0.5, 1.0):
        keep = nms(boxes, scores, threshold)
        np.testing.assert_array_equal(asnumpy(nms(cp.asarray(boxes), cp.asarray(scores), threshold)), keep)
    assert len(nms(boxes, scores, 0.5)) <= 3
