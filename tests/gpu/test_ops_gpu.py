"""The GPU kernels and array functions against their CPU versions on the same inputs.

im2col, col2im (which adds each pixel's taps in the CPU's order), RoI pooling (forward, argmax)
and NMS (keep indices) compute the same numbers in the same way on both devices and must be
identical; RoI pooling's atomic adds sum in no fixed order, so its backward is identical for
integer inputs, whose sums are exact in any order, and agrees to rounding otherwise.

Float32 kernels run as CuPy compiles them, with -ftz=true: arithmetic and comparisons take
subnormal inputs (below 1.18e-38) as zero and flush subnormal results, so for them the GPU
agrees with the CPU run on the input with its subnormals flushed (tests marked "subnormal"). Boxes, losses and the SGD step are elementwise and
reductions: float32 to 1e-5 of the magnitude (1e-6 for the SGD step), float64 to 1e-12.
"""
import numpy as np
import pytest

from minidet.backend import asnumpy, is_gpu_array
from minidet.losses import fast_rcnn_loss, smooth_l1_loss, softmax_log_loss
from minidet.ops.im2col import col2im, im2col
from minidet.optim import SGD
from tests.reference import require_torch, require_torchvision

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float64]


@pytest.fixture(scope="module")
def cp():
    return pytest.importorskip("cupy")


def tolerance(dtype):
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-12


def assert_matches(actual_gpu, expected_cpu, rtol=None):
    """A GPU array against the CPU's: on the device, same dtype and shape, equal to rtol of the magnitude."""
    assert is_gpu_array(actual_gpu), f"expected a cupy array, got {type(actual_gpu)}"
    actual, expected = asnumpy(actual_gpu), np.asarray(expected_cpu)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    rtol = tolerance(expected.dtype) if rtol is None else rtol
    scale = float(np.abs(expected).max(initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def assert_identical(actual_gpu, expected_cpu):
    assert is_gpu_array(actual_gpu), f"expected a cupy array, got {type(actual_gpu)}"
    actual = asnumpy(actual_gpu)
    assert actual.dtype == np.asarray(expected_cpu).dtype
    np.testing.assert_array_equal(actual, expected_cpu)


# ---- im2col / col2im ---------------------------------------------------------------------------

GEOMETRIES = [(3, 1, 1), (1, 1, 0), (3, 2, 1), (5, 2, 2), (2, 3, 0), ((3, 1), (1, 2), (1, 0)),
              ((1, 3), (3, 2), (0, 1))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,stride,padding", GEOMETRIES)
def test_im2col_gpu_copies_exactly_what_the_cpu_copies(cp, kernel, stride, padding, dtype):
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 11)).astype(dtype)
    cols = im2col(x, kernel, stride, padding)
    assert_identical(im2col(cp.asarray(x), kernel, stride, padding), cols)
    out = cp.full(cols.shape, np.nan, dtype=dtype)                # a reused buffer is overwritten entirely
    assert im2col(cp.asarray(x), kernel, stride, padding, out=out) is out
    assert_identical(out, cols)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,stride,padding", GEOMETRIES)
def test_col2im_gpu_adds_back_what_the_cpu_adds_back(cp, kernel, stride, padding, dtype):
    rng = np.random.default_rng(1)
    x_shape = (2, 3, 9, 11)
    shape = im2col(np.zeros(x_shape, dtype), kernel, stride, padding).shape
    whole = rng.integers(-50, 51, shape).astype(dtype)          # exact sums in any order
    assert_identical(col2im(cp.asarray(whole), x_shape, kernel, stride, padding),
                     col2im(whole, x_shape, kernel, stride, padding))
    real = rng.standard_normal(shape).astype(dtype)                 # the same order of additions
    assert_identical(col2im(cp.asarray(real), x_shape, kernel, stride, padding),
                     col2im(real, x_shape, kernel, stride, padding))


def test_im2col_and_col2im_gpu_cover_many_blocks_and_a_wide_stride(cp):
    # 64 channels of two 37x41 images: thousands of blocks; a 3x3 window at stride 2 and one at stride 4
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 64, 37, 41)).astype(np.float32)
    for kernel, stride, padding in ((3, 2, 1), (5, 4, 0)):
        cols = im2col(x, kernel, stride, padding)
        assert_identical(im2col(cp.asarray(x), kernel, stride, padding), cols)
        dcols = rng.standard_normal(cols.shape).astype(np.float32)
        assert_identical(col2im(cp.asarray(dcols), x.shape, kernel, stride, padding),
                         col2im(dcols, x.shape, kernel, stride, padding))


def test_im2col_gpu_refuses_sizes_beyond_32_bit_indices(cp):
    from minidet.ops.im2col import _gpu_sizes

    assert _gpu_sizes((2, 512, 600, 1000), (3, 3, 1, 1, 1, 1), (600, 1000))[0] == 2
    with pytest.raises(ValueError, match="32-bit"):
        _gpu_sizes((4, 1024, 1024, 1024), (3, 3, 1, 1, 1, 1), (1024, 1024))


# ---- subnormal inputs: float32 kernels flush them (CuPy's -ftz=true) ----------------------------

def flush_subnormals(a):
    """a with every subnormal float32 replaced by a zero of its sign, as -ftz=true reads it."""
    a = np.array(a)
    if a.dtype == np.float32:
        a[(a != 0) & (np.abs(a) < np.finfo(np.float32).tiny)] *= 0
    return a


def subnormal_mixture(rng, shape, dtype):
    """Small integers times the smallest normal / 8: zeros, subnormals and, in float64, no flushing."""
    return (rng.integers(-3, 4, shape) * (np.finfo(np.float32).tiny / 8)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_subnormal_col2im_gpu_sums_as_the_cpu_sums_flushed_inputs(cp, dtype):
    rng = np.random.default_rng(5)
    x_shape = (2, 3, 9, 11)
    shape = im2col(np.zeros(x_shape, dtype), 3, 1, 1).shape
    x = subnormal_mixture(rng, x_shape, dtype)
    assert_identical(im2col(cp.asarray(x), 3, 1, 1), im2col(x, 3, 1, 1))       # a copy keeps subnormals
    dcols = subnormal_mixture(rng, shape, dtype)
    dx_gpu = col2im(cp.asarray(dcols), x_shape, 3, 1, 1)
    expected = flush_subnormals(col2im(flush_subnormals(dcols), x_shape, 3, 1, 1))
    assert_identical(dx_gpu, expected)
    if dtype == np.float32:
        assert not np.array_equal(expected, col2im(dcols, x_shape, 3, 1, 1))   # the inputs meant something


# ---- RoI pooling -------------------------------------------------------------------------------

def with_random_rois(rng, hand, dtype, num_random=60):
    """(R, 5) RoIs [n, x1, y1, x2, y2]: the hand-picked ones, then num_random random ones over the two
    images of a 576x640 image's map at stride 16 (corners from just outside it, sides up to 400)."""
    x1 = rng.uniform(-30, 600, num_random)
    y1 = rng.uniform(-30, 540, num_random)
    random = np.stack([rng.integers(0, 2, num_random), x1, y1, x1 + rng.uniform(0, 400, num_random),
                       y1 + rng.uniform(0, 400, num_random)], axis=1)
    return np.concatenate([np.asarray(hand, np.float64), random]).astype(dtype)


def roi_pool_inputs(rng, dtype, num_random=60):
    """A (2, 4, 36, 40) map at stride 16 (a 576x640 image) and RoIs that reach every rule."""
    x = rng.integers(-20, 21, (2, 4, 36, 40)).astype(dtype)          # ties on purpose
    hand = [
        [0, 0, 0, 639, 575],        # the whole image
        [1, 8, 8, 8, 8],            # one cell (8/16 = 0.5 rounds away from zero, to 1)
        [0, 700, 600, 900, 800],    # beyond the map: every bin empty, 0 and argmax -1
        [1, 24, 40, 56, 72],        # corners at 1.5, 2.5, 3.5, 4.5 cells
        [0, 100, 50, 20, 10],       # x2 < x1: width clamped to one cell
        [0, -40, -40, 30, 30],      # negative corners: -2.5 rounds to -3
        [1, 0, 0, 160, 448],        # 29 rows in 7 bins: the last bin ends at row 29 in float32, 30 in float64
        [0, 600, 0, 639, 575],      # a strip at the right edge, bins clipped to W
    ]
    return x, with_random_rois(rng, hand, dtype, num_random)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output_size,spatial_scale", [((7, 7), 1 / 16), ((3, 5), 1 / 16), ((6, 6), 1 / 8)])
def test_roi_pool_gpu_forward_and_argmax_are_identical_to_cpu(cp, dtype, output_size, spatial_scale):
    from minidet.ops.roi_pool import roi_pool

    x, rois = roi_pool_inputs(np.random.default_rng(0), dtype)
    y, argmax = roi_pool(x, rois, output_size, spatial_scale)
    y_gpu, argmax_gpu = roi_pool(cp.asarray(x), cp.asarray(rois), output_size, spatial_scale)
    assert_identical(y_gpu, y)
    assert_identical(argmax_gpu, argmax)
    assert argmax_gpu.dtype == np.int32
    assert (argmax == -1).any()                                  # the empty bins were reached


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_pool_gpu_bins_are_computed_in_the_maps_float_type(cp, dtype):
    # x = row index: the last bin's maximum is its last row, 28 in float32 and 29 in float64 (SPEC)
    from minidet.ops.roi_pool import roi_pool

    x = cp.broadcast_to(cp.arange(36, dtype=dtype)[None, None, :, None], (1, 1, 36, 8)).copy()
    y, argmax = roi_pool(x, cp.asarray([[0, 0, 0, 16, 448]], dtype=dtype), (7, 7), 1 / 16)
    last_row = 28 if dtype == np.float32 else 29
    np.testing.assert_array_equal(asnumpy(y)[0, 0, :, 0], [4, 8, 12, 16, 20, 24, last_row])
    assert int(argmax[0, 0, 6, 0]) == last_row * 8


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_pool_gpu_backward_sums_what_the_cpu_sums(cp, dtype):
    from minidet.ops.roi_pool import roi_pool, roi_pool_backward

    rng = np.random.default_rng(1)
    x, rois = roi_pool_inputs(rng, dtype, num_random=300)        # many RoIs hit the same cells
    y, argmax = roi_pool(x, rois)
    argmax_gpu = cp.asarray(argmax)
    dy = rng.integers(-8, 9, y.shape).astype(dtype)              # exact sums in any order
    dx = roi_pool_backward(dy, argmax, x.shape, rois)
    assert_identical(roi_pool_backward(cp.asarray(dy), argmax_gpu, x.shape, cp.asarray(rois)), dx)
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert_matches(roi_pool_backward(cp.asarray(dy), argmax_gpu, x.shape, cp.asarray(rois)),
                   roi_pool_backward(dy, argmax, x.shape, rois))


def test_roi_pool_gpu_gradient_lands_on_argmax(cp):
    # a plain loop over the bins, written here, against the GPU kernel
    from minidet.ops.roi_pool import roi_pool, roi_pool_backward

    rng = np.random.default_rng(2)
    x, rois = roi_pool_inputs(rng, np.float64, num_random=20)
    y, argmax = roi_pool(cp.asarray(x), cp.asarray(rois))
    dy = rng.standard_normal(y.shape)
    dx = asnumpy(roi_pool_backward(cp.asarray(dy), argmax, x.shape, cp.asarray(rois)))
    expected = np.zeros(x.shape)
    a = asnumpy(argmax)
    for r, c, i, j in np.ndindex(a.shape):
        if a[r, c, i, j] >= 0:
            h, w = divmod(int(a[r, c, i, j]), x.shape[3])
            expected[int(rois[r, 0]), c, h, w] += dy[r, c, i, j]
    np.testing.assert_allclose(dx, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("missing", [2, -1])                      # N and -1, for a batch of N = 2 images
def test_roi_pool_gpu_empties_rois_of_missing_images_without_reading_indices_back(cp, monkeypatch, missing, dtype):
    # The CPU reads the batch indices and raises; the GPU path does not read them back (that would
    # stall the device on every call), so the kernels themselves must keep such a RoI from reading
    # or writing outside x: 0 and argmax -1 in every bin, and no gradient.
    from minidet.ops.roi_pool import roi_pool, roi_pool_backward
    from tests.gpu.test_train_gpu import HostTransfers

    rng = np.random.default_rng(4)
    x, rois = roi_pool_inputs(rng, dtype, num_random=20)
    missing_rows = np.arange(len(rois)) % 3 == 0
    rois[missing_rows, 0] = missing
    with pytest.raises(ValueError, match="batch"):
        roi_pool(x, rois)
    present = rois.copy()
    present[missing_rows, 0] = 0
    y, argmax = roi_pool(x, present)
    y[missing_rows], argmax[missing_rows] = 0, -1
    dy = rng.integers(-8, 9, y.shape).astype(dtype)               # exact sums in any order
    dx = roi_pool_backward(dy, argmax, x.shape, present)
    x_gpu, rois_gpu, dy_gpu = cp.asarray(x), cp.asarray(rois), cp.asarray(dy)
    transfers = HostTransfers(cp, monkeypatch)
    y_gpu, argmax_gpu = roi_pool(x_gpu, rois_gpu)
    dx_gpu = roi_pool_backward(dy_gpu, argmax_gpu, x.shape, rois_gpu)
    monkeypatch.undo()
    assert transfers.events == [], f"copies between host and device: {transfers.events}"
    assert_identical(y_gpu, y)
    assert_identical(argmax_gpu, argmax)
    assert_identical(dx_gpu, dx)


def test_roi_pool_gpu_matches_torchvision_on_the_gpu(cp):
    torch = require_torch()
    torchvision = require_torchvision()
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    from minidet.ops.roi_pool import roi_pool

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 36, 40)).astype(np.float32)
    x1, y1 = rng.uniform(0, 600, 100), rng.uniform(0, 540, 100)
    rois = np.stack([rng.integers(0, 2, 100), x1, y1, x1 + rng.uniform(10, 300, 100),
                     y1 + rng.uniform(10, 300, 100)], axis=1).astype(np.float32)
    y, _ = roi_pool(cp.asarray(x), cp.asarray(rois), (7, 7), 1 / 16)
    expected = torchvision.ops.roi_pool(torch.from_numpy(x).cuda(), torch.from_numpy(rois).cuda(), (7, 7), 1 / 16)
    np.testing.assert_array_equal(asnumpy(y), expected.cpu().numpy())


# ---- NMS ---------------------------------------------------------------------------------------

def random_boxes(rng, n, clusters=None, size=600.0):
    """(n, 4) float64 boxes; with clusters, jittered copies of a few boxes (long suppression chains)."""
    if clusters:
        centres = rng.uniform(0, size, (clusters, 2))[rng.integers(0, clusters, n)]
        wh = rng.uniform(20, 120, (clusters, 2))[rng.integers(0, clusters, n)] * rng.uniform(0.7, 1.3, (n, 2))
        centres = centres + rng.normal(0, 8, (n, 2))
    else:
        centres, wh = rng.uniform(0, size, (n, 2)), rng.uniform(4, 200, (n, 2))
    return np.concatenate([centres - wh / 2, centres + wh / 2], axis=1)


def greedy_nms(boxes, scores, threshold):
    """Plain greedy NMS, one box at a time: keep the best, drop all with IoU >= threshold (+1 areas)."""
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    alive = np.ones(len(boxes), bool)
    keep = []
    for i in np.argsort(-scores, kind="stable"):
        if not alive[i]:
            continue
        keep.append(i)
        w = np.maximum(0, np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]) + 1)
        h = np.maximum(0, np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]) + 1)
        inter = w * h
        alive &= inter / (areas[i] + areas - inter) < threshold
    return np.asarray(keep, np.int64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,clusters", [(1, None), (63, None), (64, None), (65, 4), (300, 10), (2000, 40)])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_gpu_keeps_the_same_indices_as_cpu(cp, n, clusters, threshold, dtype):
    from minidet.ops.nms import nms

    rng = np.random.default_rng(n)
    boxes = random_boxes(rng, n, clusters).astype(dtype)
    scores = rng.permutation(n).astype(dtype) / n                 # distinct scores: one right order
    keep = asnumpy(nms(boxes, scores, threshold))
    keep_gpu = nms(cp.asarray(boxes), cp.asarray(scores), threshold)
    assert asnumpy(keep_gpu).dtype == np.int64
    np.testing.assert_array_equal(asnumpy(keep_gpu), keep)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 63, 64, 65, 150, 2000])
def test_nms_gpu_suppresses_identical_boxes_in_other_tiles_as_the_cpu_does(cp, n, dtype):
    # The last fifth of the boxes repeats the first (IoU exactly 1); with more than 64 boxes, sorting
    # by score leaves pairs in different 64-box tiles of the mask. Of each pair only one is kept.
    from minidet.ops.nms import nms

    rng = np.random.default_rng(n + 1)
    boxes = random_boxes(rng, n).astype(dtype)
    copies = n // 5
    boxes[:copies] = boxes[n - copies:]
    scores = rng.permutation(n).astype(dtype) / n                 # distinct scores: one right order
    for threshold in (0.3, 0.7):
        keep = nms(boxes, scores, threshold)
        keep_gpu = nms(cp.asarray(boxes), cp.asarray(scores), threshold)
        assert_identical(keep_gpu, keep)
        kept = np.zeros(n, bool)
        kept[asnumpy(keep_gpu)] = True
        assert not (kept[:copies] & kept[n - copies:]).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [63, 65, 150, 2000])
def test_nms_gpu_orders_equal_scores_by_index_as_the_cpu_does(cp, n, dtype):
    from minidet.ops.nms import nms

    rng = np.random.default_rng(n + 2)
    boxes = random_boxes(rng, n).astype(dtype)
    scores = rng.integers(0, 8, n).astype(dtype)                  # many ties: lower index first
    for threshold in (0.3, 0.7):
        assert_identical(nms(cp.asarray(boxes), cp.asarray(scores), threshold), nms(boxes, scores, threshold))


def test_nms_gpu_matches_a_plain_greedy_loop(cp):
    from minidet.ops.nms import nms

    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, 150, clusters=8).astype(np.float32)
    scores = rng.permutation(150).astype(np.float32)
    keep = asnumpy(nms(cp.asarray(boxes), cp.asarray(scores), 0.3))
    np.testing.assert_array_equal(keep, greedy_nms(boxes.astype(np.float64), scores.astype(np.float64), 0.3))
    assert len(keep) < 150


def test_nms_gpu_of_no_boxes_keeps_nothing(cp):
    from minidet.ops.nms import nms

    keep = nms(cp.zeros((0, 4), cp.float32), cp.zeros(0, cp.float32), 0.3)
    assert asnumpy(keep).shape == (0,) and asnumpy(keep).dtype == np.int64


# ---- boxes -------------------------------------------------------------------------------------

def box_pairs(rng, n, dtype):
    boxes = random_boxes(rng, n)
    other = boxes + rng.normal(0, 10, boxes.shape)
    other[:, 2:] = np.maximum(other[:, 2:], other[:, :2] + 1)
    return boxes.astype(dtype), other.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bbox_overlaps_and_transform_gpu_match_cpu(cp, dtype):
    from minidet.boxes import bbox_overlaps, bbox_transform

    boxes, gt = box_pairs(np.random.default_rng(0), 50, dtype)
    assert_matches(bbox_overlaps(cp.asarray(boxes), cp.asarray(gt[:7])), bbox_overlaps(boxes, gt[:7]))
    assert_matches(bbox_transform(cp.asarray(boxes), cp.asarray(gt)), bbox_transform(boxes, gt))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bbox_transform_inv_and_clip_gpu_match_cpu(cp, dtype):
    from minidet.boxes import bbox_transform_inv, clip_boxes

    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, 40).astype(dtype)
    deltas = (rng.standard_normal((40, 20)) * np.tile([0.3, 0.3, 0.8, 0.8], 5)).astype(dtype)
    decoded = bbox_transform_inv(boxes, deltas)
    decoded_gpu = bbox_transform_inv(cp.asarray(boxes), cp.asarray(deltas))
    assert_matches(decoded_gpu, decoded)
    clipped = clip_boxes(decoded, (480, 640))
    clipped_gpu = clip_boxes(decoded_gpu, (480, 640))
    assert_matches(clipped_gpu, clipped)
    c = asnumpy(clipped_gpu)
    assert c[:, 0::2].min() >= 0 and c[:, 0::2].max() <= 639
    assert c[:, 1::2].min() >= 0 and c[:, 1::2].max() <= 479


# ---- losses ------------------------------------------------------------------------------------

def loss_inputs(rng, dtype, num_rois=32, num_classes=5):
    labels = rng.integers(0, num_classes, num_rois)
    bbox_weights = np.zeros((num_rois, 4 * num_classes))
    columns = 4 * labels[:, None] + np.arange(4)
    bbox_weights[np.arange(num_rois)[:, None], columns] = labels[:, None] > 0
    cls_score = 4 * rng.standard_normal((num_rois, num_classes))
    cls_score[0] += 60                                          # large scores: the softmax must not overflow
    bbox_pred, bbox_targets = 2 * rng.standard_normal((2, num_rois, 4 * num_classes))
    return (cls_score.astype(dtype), bbox_pred.astype(dtype), labels,
            bbox_targets.astype(dtype), bbox_weights.astype(dtype))


def gpu(cp, arrays):
    return [cp.asarray(a) for a in arrays]


def assert_scalar_on_gpu(loss, expected, dtype):
    assert is_gpu_array(loss) and loss.ndim == 0, f"the loss must be a 0-d cupy array, got {type(loss)}"
    np.testing.assert_allclose(float(loss), float(expected), rtol=10 * tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_log_loss_gpu_matches_cpu(cp, dtype):
    cls_score, _, labels, _, _ = loss_inputs(np.random.default_rng(0), dtype)
    loss, dscores = softmax_log_loss(cls_score, labels)
    loss_gpu, dscores_gpu = softmax_log_loss(*gpu(cp, (cls_score, labels)))
    assert_scalar_on_gpu(loss_gpu, loss, dtype)
    assert_matches(dscores_gpu, dscores)


@pytest.mark.parametrize("dtype", DTYPES)
def test_smooth_l1_loss_gpu_matches_cpu(cp, dtype):
    _, pred, _, target, weights = loss_inputs(np.random.default_rng(1), dtype)
    loss, dpred = smooth_l1_loss(pred, target, weights, 32)
    loss_gpu, dpred_gpu = smooth_l1_loss(*gpu(cp, (pred, target, weights)), 32)
    assert_scalar_on_gpu(loss_gpu, loss, dtype)
    assert_matches(dpred_gpu, dpred)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_rcnn_loss_gpu_matches_cpu_with_details(cp, dtype):
    inputs = loss_inputs(np.random.default_rng(2), dtype)
    loss, dcls, dbbox, parts = fast_rcnn_loss(*inputs, details=True)
    loss_gpu, dcls_gpu, dbbox_gpu, parts_gpu = fast_rcnn_loss(*gpu(cp, inputs), details=True)
    assert_scalar_on_gpu(loss_gpu, loss, dtype)
    assert_matches(dcls_gpu, dcls)
    assert_matches(dbbox_gpu, dbbox)
    assert sorted(parts_gpu) == ["accuracy", "loss_bbox", "loss_cls"]
    for name in parts:
        assert_scalar_on_gpu(parts_gpu[name], parts[name], dtype)


# ---- SGD ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_steps_on_gpu_match_cpu_in_place(cp, dtype):
    rng = np.random.default_rng(0)
    params = {"fc.weight": rng.standard_normal((6, 5)).astype(dtype), "fc.bias": rng.standard_normal(6).astype(dtype)}
    grads = [{k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()} for _ in range(4)]
    params_gpu = {k: cp.asarray(v) for k, v in params.items()}
    arrays_gpu = dict(params_gpu)
    settings = dict(lr=0.1, momentum=0.9, weight_decay=0.01, step_size=2, gamma=0.5)
    cpu, gpu_sgd = SGD(params, **settings), SGD(params_gpu, **settings)
    for g in grads[:3]:
        cpu.step(g)
        gpu_sgd.step({k: cp.asarray(v) for k, v in g.items()})
    for name in params:                                            # the same roundings: bit for bit
        assert params_gpu[name] is arrays_gpu[name]                # updated in place: the model sees it
        assert is_gpu_array(gpu_sgd.velocity[name])
        assert_identical(params_gpu[name], params[name])
        assert_identical(gpu_sgd.velocity[name], cpu.velocity[name])
    # a saved optimiser (numpy) loads onto GPU parameters and continues as the CPU one does
    resumed = SGD(params_gpu, **settings)
    resumed.load_state_dict(cpu.state_dict())
    assert all(is_gpu_array(v) for v in resumed.velocity.values())
    cpu.step(grads[3])
    resumed.step({k: cp.asarray(v) for k, v in grads[3].items()})
    for name in params:
        assert_identical(params_gpu[name], params[name])


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_step_on_gpu_given_a_nonfinite_loss_changes_nothing_and_reads_nothing_back(cp, monkeypatch, dtype):
    from tests.gpu.test_train_gpu import HostTransfers

    rng = np.random.default_rng(1)
    params = {"fc.weight": cp.asarray(rng.standard_normal((6, 5)).astype(dtype)),
              "fc.bias": cp.asarray(rng.standard_normal(6).astype(dtype))}
    grads = {k: cp.asarray(rng.standard_normal(v.shape).astype(dtype)) for k, v in params.items()}
    sgd = SGD(params, lr=0.1, momentum=0.9)
    sgd.step(grads)
    before = {k: asnumpy(v) for k, v in params.items()}
    velocity = {k: asnumpy(v) for k, v in sgd.velocity.items()}
    transfers = HostTransfers(cp, monkeypatch)
    for bad in (np.nan, np.inf):
        sgd.step(grads, loss=cp.asarray(dtype(bad)))
    sgd.step(grads, loss=cp.asarray(dtype(1.5)))                   # a finite loss: the step happens
    monkeypatch.undo()
    assert transfers.events == []
    cpu = SGD(before, lr=0.1, momentum=0.9)
    cpu.velocity = velocity
    cpu.step({k: asnumpy(v) for k, v in grads.items()}, loss=np.nan)
    assert all(np.array_equal(before[k], cpu.params[k]) for k in before)     # the CPU skips alike
    cpu.step({k: asnumpy(v) for k, v in grads.items()}, loss=1.5)
    for name in params:
        assert_identical(params[name], cpu.params[name])


@pytest.mark.parametrize("dtype", DTYPES)
def test_subnormal_max_pool_gpu_picks_the_maximum_of_the_flushed_input(cp, dtype):
    # A float32 comparison sees a subnormal as zero: the argmax is the CPU's on the flushed input,
    # and the value is the input at that argmax (a copy, which keeps its bits).
    from minidet.ops.maxpool import max_pool_backward, max_pool_forward

    rng = np.random.default_rng(6)
    x = subnormal_mixture(rng, (2, 3, 9, 13), dtype)
    y_gpu, argmax_gpu = max_pool_forward(cp.asarray(x), 3, 2, 1, ceil_mode=True)
    _, argmax = max_pool_forward(flush_subnormals(x), 3, 2, 1, ceil_mode=True)
    assert_identical(argmax_gpu, argmax)
    picked = np.take_along_axis(x.reshape(2, 3, -1), argmax.reshape(2, 3, -1), axis=2).reshape(argmax.shape)
    assert_identical(y_gpu, picked)
    dy = subnormal_mixture(rng, argmax.shape, dtype)
    assert_identical(max_pool_backward(cp.asarray(dy), argmax_gpu, x.shape, 3, 2, 1),
                     flush_subnormals(max_pool_backward(flush_subnormals(dy), argmax, x.shape, 3, 2, 1)))
    if dtype == np.float32:
        assert not np.array_equal(argmax, max_pool_forward(x, 3, 2, 1, ceil_mode=True)[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_subnormal_roi_pool_gpu_flushes_as_cuda_does(cp, dtype):
    # The forward compares as max pooling does; the backward's float atomicAdd flushes subnormal
    # operands and results whatever -ftz says (PTX atom.add.f32), so subnormal gradients vanish.
    from minidet.ops.roi_pool import roi_pool, roi_pool_backward

    rng = np.random.default_rng(7)
    _, rois = roi_pool_inputs(rng, dtype, num_random=20)
    x = subnormal_mixture(rng, (2, 4, 36, 40), dtype)
    y_gpu, argmax_gpu = roi_pool(cp.asarray(x), cp.asarray(rois))
    _, argmax = roi_pool(flush_subnormals(x), rois)
    assert_identical(argmax_gpu, argmax)
    batch = rois[:, 0].astype(np.int64)
    flat = x.reshape(2, 4, -1)[batch[:, None], np.arange(4)[None, :]]            # (R, C, H*W)
    picked = np.take_along_axis(flat, np.maximum(argmax, 0).reshape(len(rois), 4, -1), axis=2)
    assert_identical(y_gpu, np.where(argmax >= 0, picked.reshape(argmax.shape), 0).astype(dtype))
    dy = subnormal_mixture(rng, argmax.shape, dtype)
    dx_gpu = roi_pool_backward(cp.asarray(dy), argmax_gpu, x.shape, cp.asarray(rois))
    assert_identical(dx_gpu, roi_pool_backward(flush_subnormals(dy), argmax, x.shape, rois))
    if dtype == np.float64:
        assert asnumpy(dx_gpu).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_gpu_treats_boxes_with_nan_coordinates_as_the_cpu_does(cp, dtype):
    # CUDA's fminf/fmaxf drop a NaN that a comparison keeps; nms.cu compares as the CPU does.
    from minidet.ops.nms import nms

    rng = np.random.default_rng(8)
    boxes = random_boxes(rng, 300, clusters=10).astype(dtype)
    boxes[rng.random(boxes.shape) < 0.05] = np.nan
    scores = rng.permutation(300).astype(dtype)
    for threshold in (0.3, 0.7):
        assert_identical(nms(cp.asarray(boxes), cp.asarray(scores), threshold), nms(boxes, scores, threshold))
