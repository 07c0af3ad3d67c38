"""RoIAlign's GPU kernels against the CPU's on the same inputs.

The forward does the CPU's arithmetic in the CPU's order (no fused multiply-add) and must be
identical. The backward's atomic adds sum in no fixed order: identical where every share is exact
(small integer dy, RoIs whose points fall on sixteenths of a cell), equal to rounding otherwise.
"""
import numpy as np
import pytest

from minidet.backend import asnumpy
from tests.gpu.test_ops_gpu import assert_identical, assert_matches, with_random_rois
from tests.reference import require_torch, require_torchvision

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float64]
SETTINGS = [((7, 7), 1 / 16, 2, True), ((7, 7), 1 / 16, 0, True), ((3, 5), 1 / 16, 2, False),
            ((6, 6), 1 / 8, 0, False), ((2, 2), 1 / 16, 3, True)]


@pytest.fixture(scope="module")
def cp():
    return pytest.importorskip("cupy")


def roi_align_inputs(rng, dtype, num_random=60):
    """A (2, 4, 36, 40) map at stride 16 (a 576x640 image) and RoIs that reach every rule."""
    x = rng.standard_normal((2, 4, 36, 40)).astype(dtype)
    hand = [
        [0, 0, 0, 639, 575],        # the whole image
        [1, 8, 8, 8, 8],            # a point of a RoI: zero size (aligned) or one cell (not aligned)
        [0, 700, 600, 900, 800],    # beyond the map: points beyond H and W read nothing
        [1, -40, -40, 30, 30],      # negative corners: points in the band [-1, 0] and below -1
        [0, 100, 50, 20, 10],       # x2 < x1, y2 < y1: one cell (not aligned), backwards (aligned)
        [1, 600, 0, 639, 575],      # a strip at the right edge: the last-column rule
        [0, 8, 8, 648, 584],        # points up to W and H themselves
        [1, 24, 40, 56, 72],        # corners on half cells
    ]
    return x, with_random_rois(rng, hand, dtype, num_random)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("settings", SETTINGS)
def test_roi_align_gpu_forward_is_identical_to_cpu(cp, dtype, settings):
    from minidet.ops.roi_align import roi_align

    x, rois = roi_align_inputs(np.random.default_rng(0), dtype)
    y = roi_align(x, rois, *settings)
    assert_identical(roi_align(cp.asarray(x), cp.asarray(rois), *settings), y)
    assert (y == 0).any() and (y != 0).any()                      # bins that read nothing were reached


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_gpu_backward_sums_exactly_what_the_cpu_sums_when_every_share_is_exact(cp, dtype, aligned):
    # Corners on whole cells, 4 x 4 bins of 2 x 2 points: every point on a sixteenth of a cell,
    # every weight a multiple of 1/256, every share dy * w / 4 exact, so any order gives one sum.
    from minidet.ops.roi_align import roi_align_backward

    rng = np.random.default_rng(1)
    x, _ = roi_align_inputs(rng, dtype)
    cells = rng.integers(-3, 45, (200, 4))
    rois = np.concatenate([rng.integers(0, 2, (200, 1)), np.sort(cells.reshape(200, 2, 2), axis=1).reshape(200, 4)
                           * 16], axis=1).astype(dtype)
    dy = rng.integers(-8, 9, (200, 4, 4, 4)).astype(dtype)
    settings = ((4, 4), 1 / 16, 2, aligned)
    dx = roi_align_backward(dy, rois, x.shape, *settings)
    assert_identical(roi_align_backward(cp.asarray(dy), cp.asarray(rois), x.shape, *settings), dx)
    assert dx.any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("settings", SETTINGS)
def test_roi_align_gpu_backward_matches_cpu_to_rounding(cp, dtype, settings):
    from minidet.ops.roi_align import roi_align_backward

    rng = np.random.default_rng(2)
    x, rois = roi_align_inputs(rng, dtype, num_random=300)        # many RoIs share cells
    dy = rng.standard_normal((len(rois), 4, *settings[0])).astype(dtype)
    assert_matches(roi_align_backward(cp.asarray(dy), cp.asarray(rois), x.shape, *settings),
                   roi_align_backward(dy, rois, x.shape, *settings))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("missing", [2, -1])                      # N and -1, for a batch of N = 2 images
def test_roi_align_gpu_gives_rois_of_missing_images_zero_without_reading_indices_back(cp, monkeypatch,
                                                                                     missing, dtype):
    # The CPU raises on such a RoI; the GPU does not read the indices back, so its kernels must keep
    # the RoI from reading or writing outside x: 0 in every bin, and no gradient.
    from minidet.ops.roi_align import roi_align, roi_align_backward
    from tests.gpu.test_train_gpu import HostTransfers

    rng = np.random.default_rng(4)
    x, rois = roi_align_inputs(rng, dtype, num_random=20)
    missing_rows = np.arange(len(rois)) % 3 == 0
    rois[missing_rows, 0] = missing
    with pytest.raises(ValueError, match="batch"):
        roi_align(x, rois)
    present = rois.copy()
    present[missing_rows, 0] = 0
    y = roi_align(x, present)
    y[missing_rows] = 0
    dy = rng.integers(-8, 9, y.shape).astype(dtype)
    dy_present = dy.copy()
    dy_present[missing_rows] = 0
    dx = roi_align_backward(dy_present, present, x.shape)
    x_gpu, rois_gpu, dy_gpu = cp.asarray(x), cp.asarray(rois), cp.asarray(dy)
    transfers = HostTransfers(cp, monkeypatch)
    y_gpu = roi_align(x_gpu, rois_gpu)
    dx_gpu = roi_align_backward(dy_gpu, rois_gpu, x.shape)
    monkeypatch.undo()
    assert transfers.events == [], f"copies between host and device: {transfers.events}"
    assert_identical(y_gpu, y)
    assert_matches(dx_gpu, dx)


def test_roi_align_layer_on_the_gpu_equals_the_cpu(cp):
    from minidet.nn.roi_align import RoIAlign

    rng = np.random.default_rng(5)
    x, rois = roi_align_inputs(rng, np.float32)
    cpu, gpu = RoIAlign(), RoIAlign()
    y = cpu.forward(x, rois)
    y_gpu = gpu.forward(cp.asarray(x), cp.asarray(rois))
    assert_identical(y_gpu, y)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    assert_matches(gpu.backward(cp.asarray(dy)), cpu.backward(dy))


def test_roi_align_gpu_matches_torchvision_on_the_gpu(cp):
    torch = require_torch()
    torchvision = require_torchvision()
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    from minidet.ops.roi_align import roi_align

    rng = np.random.default_rng(3)
    x, rois = roi_align_inputs(rng, np.float32, num_random=100)
    y = roi_align(cp.asarray(x), cp.asarray(rois), (7, 7), 1 / 16, 2, True)
    # torchvision's CUDA kernel lets the compiler fuse multiply-adds: equal to rounding
    expected = torchvision.ops.roi_align(torch.from_numpy(x).cuda(), torch.from_numpy(rois).cuda(), (7, 7),
                                         1 / 16, 2, True)
    np.testing.assert_allclose(asnumpy(y), expected.cpu().numpy(), rtol=1e-5, atol=1e-5)
