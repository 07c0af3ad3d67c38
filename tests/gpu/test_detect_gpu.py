"""Detection on the GPU: the CPU's levels, RoIs, scores and boxes, at one scale and at several."""
import numpy as np
import pytest

from minidet.backend import asnumpy, is_gpu_array
from minidet.convention import CAFFE, InputConvention

pytestmark = pytest.mark.gpu

GENTLE = InputConvention("BGR", 255.0, CAFFE.mean, (64.0, 64.0, 64.0))   # moderate scores from a random model


@pytest.fixture(scope="module")
def cp():
    return pytest.importorskip("cupy")


def proposals_for(rng, n=40, height=48, width=64):
    x1y1 = rng.uniform(0, [width - 8, height - 8], (n, 2))
    x2y2 = np.minimum(x1y1 + rng.uniform(4, width, (n, 2)), [width - 1, height - 1])
    boxes = np.round(np.concatenate([x1y1, x2y2], axis=1))
    return np.concatenate([boxes, [[0, 0, width - 1, height - 1]], boxes[:10] + 1])


def test_pyramid_levels_and_rois_on_the_gpu_are_the_cpus(cp):
    from minidet.detect import pyramid_levels, pyramid_rois

    rng = np.random.default_rng(0)
    boxes = proposals_for(rng)
    scales = np.array([10 / 3, 5.0])
    levels = pyramid_levels(cp.asarray(boxes), scales)
    assert is_gpu_array(levels)
    np.testing.assert_array_equal(asnumpy(levels), pyramid_levels(boxes, scales))
    assert len(set(asnumpy(levels).tolist())) == 2
    np.testing.assert_array_equal(asnumpy(pyramid_rois(cp.asarray(boxes), scales)), pyramid_rois(boxes, scales))


@pytest.mark.parametrize("scale", [48, (160, 240)])
def test_detect_on_the_gpu_finds_the_cpus_detections(cp, scale):
    from minidet.detect import detect, image_pyramid, score_and_decode
    from minidet.models.fast_rcnn import FastRCNN

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    proposals = proposals_for(rng)
    cpu = FastRCNN.small(num_classes=3, width=0.125, seed=0)
    gpu = FastRCNN.small(num_classes=3, width=0.125, seed=0).to("gpu")
    scales = (scale,) if np.ndim(scale) == 0 else scale
    blob, im_scales = image_pyramid(image, GENTLE, scales, 1000)
    scores, boxes = score_and_decode(cpu, blob, proposals, im_scales, (48, 64))
    for dedup in (False, True):
        scores_gpu, boxes_gpu = score_and_decode(gpu, cp.asarray(blob), cp.asarray(proposals), im_scales, (48, 64),
                                                 dedup)
        assert is_gpu_array(scores_gpu) and is_gpu_array(boxes_gpu)
        np.testing.assert_allclose(asnumpy(scores_gpu), scores, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(asnumpy(boxes_gpu), boxes, rtol=1e-5, atol=1e-3)
    expected = detect(cpu, image, proposals, GENTLE, scale)
    found = detect(gpu, image, proposals, GENTLE, scale, device="gpu")
    assert len(expected[0]) > 0
    np.testing.assert_array_equal(found[1], expected[1])
    np.testing.assert_allclose(found[2], expected[2], rtol=1e-4)
    np.testing.assert_allclose(found[0], expected[0], atol=1e-3)
