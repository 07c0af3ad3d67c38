"""Every layer on the GPU against the same layer on the CPU: same inputs, same parameters.

Where the GPU does the same arithmetic in the same order as the CPU (copies, comparisons,
max pooling's forward, argmax and backward, RoI pooling's forward and argmax, ReLU, Flatten)
the results must be identical. Where cuBLAS sums in another order (convolution, Linear) they
must agree to float32 rounding (1e-4 of the result's magnitude; 1e-2 when CUPY_TF32 lets
cuBLAS round its inputs to 10 bits) or float64 rounding (1e-10).
"""
import os

import numpy as np
import pytest

from minidet.backend import asnumpy, is_gpu_array
from minidet.nn.activation import ReLU
from minidet.nn.conv import Conv2d
from minidet.nn.dropout import Dropout
from minidet.nn.linear import Linear
from minidet.nn.pool import MaxPool2d
from minidet.nn.reshape import Flatten

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float64]


@pytest.fixture(scope="module")
def cp():
    return pytest.importorskip("cupy")


def gemm_rtol(dtype):
    """Relative tolerance of a GEMM-based result against the CPU's, by dtype."""
    if np.dtype(dtype) == np.float64:
        return 1e-10
    return 1e-2 if os.environ.get("CUPY_TF32", "0") not in ("", "0") else 1e-4


def assert_matches(actual_gpu, expected_cpu, rtol=None):
    """A GPU array against the CPU's: on the device, same dtype and shape, equal to rtol of the magnitude."""
    assert is_gpu_array(actual_gpu), f"expected a cupy array, got {type(actual_gpu)}"
    actual, expected = asnumpy(actual_gpu), np.asarray(expected_cpu)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    rtol = gemm_rtol(expected.dtype) if rtol is None else rtol
    scale = float(np.abs(expected).max(initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def assert_identical(actual_gpu, expected_cpu):
    """A GPU array equal to the CPU's element for element (NaN equal to NaN), same dtype."""
    assert is_gpu_array(actual_gpu), f"expected a cupy array, got {type(actual_gpu)}"
    actual = asnumpy(actual_gpu)
    assert actual.dtype == np.asarray(expected_cpu).dtype
    np.testing.assert_array_equal(actual, expected_cpu)


def on_gpu(cp, layer):
    """The layer with its parameters copied onto the GPU (the CPU arrays are left alone)."""
    layer.params = {name: cp.asarray(value) for name, value in layer.params.items()}
    layer.grads = {}
    return layer


# ---- Conv2d ------------------------------------------------------------------------------------

CONV_GEOMETRIES = [  # kernel, stride, padding
    (3, 1, 1),
    (1, 1, 0),
    (3, 2, 1),
    (5, 2, 2),
    (2, 3, 0),
    ((3, 1), (1, 2), (1, 0)),
    (7, 4, 3),
]


def conv_pair(cp, kernel, stride, padding, dtype, in_channels=3, out_channels=5, seed=1):
    """The same Conv2d on the CPU and on the GPU, with a nonzero bias."""
    cpu = Conv2d(in_channels, out_channels, kernel, stride, padding, dtype=dtype, rng=np.random.default_rng(seed))
    cpu.params["bias"][...] = np.random.default_rng(seed + 1).standard_normal(out_channels)
    gpu = Conv2d(in_channels, out_channels, kernel, stride, padding, dtype=dtype)
    gpu.params = {name: value.copy() for name, value in cpu.params.items()}
    return cpu, on_gpu(cp, gpu)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,stride,padding", CONV_GEOMETRIES)
def test_conv2d_gpu_forward_and_backward_match_cpu(cp, kernel, stride, padding, dtype):
    rng = np.random.default_rng(0)
    cpu, gpu = conv_pair(cp, kernel, stride, padding, dtype)
    x = rng.standard_normal((2, 3, 11, 13)).astype(dtype)
    y = cpu.forward(x)
    assert_matches(gpu.forward(cp.asarray(x)), y)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = cpu.backward(dy)
    assert_matches(gpu.backward(cp.asarray(dy)), dx)
    assert sorted(gpu.grads) == ["bias", "weight"]
    for name in ("weight", "bias"):
        assert_matches(gpu.grads[name], cpu.grads[name])


def test_conv2d_gpu_wide_layer_matches_cpu(cp):
    # VGG-like channel counts: K = C*9 = 576 terms per output, several thread blocks per row of cols
    rng = np.random.default_rng(2)
    cpu, gpu = conv_pair(cp, 3, 1, 1, np.float32, in_channels=64, out_channels=32)
    x = rng.standard_normal((2, 64, 19, 23)).astype(np.float32)
    assert_matches(gpu.forward(cp.asarray(x)), cpu.forward(x))
    dy = rng.standard_normal((2, 32, 19, 23)).astype(np.float32)
    assert_matches(gpu.backward(cp.asarray(dy)), cpu.backward(dy))
    assert_matches(gpu.grads["weight"], cpu.grads["weight"])


def test_frozen_gpu_conv2d_computes_no_parameter_gradients(cp):
    rng = np.random.default_rng(3)
    cpu, gpu = conv_pair(cp, 3, 1, 1, np.float32)
    x = rng.standard_normal((1, 3, 8, 9)).astype(np.float32)
    dy = rng.standard_normal((1, 5, 8, 9)).astype(np.float32)
    cpu.frozen = gpu.frozen = True
    cpu.forward(x)
    gpu.forward(cp.asarray(x))
    assert_matches(gpu.backward(cp.asarray(dy)), cpu.backward(dy))
    assert gpu.grads == {}
    gpu.needs_input_grad = False
    gpu.forward(cp.asarray(x))
    assert gpu.backward(cp.asarray(dy)) is None and gpu.grads == {}


def test_gpu_conv2d_without_input_gradient_still_fills_grads(cp):
    rng = np.random.default_rng(4)
    cpu, gpu = conv_pair(cp, 3, 1, 1, np.float32)
    x = rng.standard_normal((2, 3, 8, 9)).astype(np.float32)
    dy = rng.standard_normal((2, 5, 8, 9)).astype(np.float32)
    gpu.needs_input_grad = False
    cpu.forward(x)
    cpu.backward(dy)
    gpu.forward(cp.asarray(x))
    assert gpu.backward(cp.asarray(dy)) is None
    assert_matches(gpu.grads["weight"], cpu.grads["weight"])
    assert_matches(gpu.grads["bias"], cpu.grads["bias"])


def test_conv2d_reused_buffers_follow_the_device_and_the_shape(cp):
    # One layer object run on the CPU, then on the GPU at two sizes and back at the first:
    # the kept cols/out buffers must be re-made on the right device and never return stale values.
    rng = np.random.default_rng(5)
    layer = Conv2d(3, 5, 3, 1, 1, dtype=np.float32, rng=np.random.default_rng(1))
    reference = Conv2d(3, 5, 3, 1, 1, dtype=np.float32)
    reference.params = {name: value.copy() for name, value in layer.params.items()}
    small = rng.standard_normal((1, 3, 6, 7)).astype(np.float32)
    large = rng.standard_normal((2, 3, 12, 10)).astype(np.float32)
    layer.forward(small)                                      # numpy buffers
    on_gpu(cp, layer)
    for x in (large, small, large):
        assert_matches(layer.forward(cp.asarray(x)), reference.forward(x))
        dy = rng.standard_normal(reference.output_shape(x.shape)).astype(np.float32)
        assert_matches(layer.backward(cp.asarray(dy)), reference.backward(dy))
        assert_matches(layer.grads["weight"], reference.grads["weight"])


@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_winograd_conv2d_gpu_matches_cpu(cp, algorithm, dtype):
    # the GPU runs the transforms' plain array reference with cuBLAS GEMMs; the CPU the Cython kernels
    rng = np.random.default_rng(6)
    cpu = Conv2d(4, 6, 3, 1, 1, dtype=dtype, rng=np.random.default_rng(1), algorithm=algorithm)
    gpu = Conv2d(4, 6, 3, 1, 1, dtype=dtype, algorithm=algorithm)
    gpu.params = {name: value.copy() for name, value in cpu.params.items()}
    on_gpu(cp, gpu)
    x = rng.standard_normal((2, 4, 11, 13)).astype(dtype)
    y = cpu.forward(x)
    assert_matches(gpu.forward(cp.asarray(x)), y)
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert_matches(gpu.backward(cp.asarray(dy)), cpu.backward(dy))
    assert_matches(gpu.grads["weight"], cpu.grads["weight"])


@pytest.mark.parametrize("algorithm", ["im2col", "winograd4"])
def test_conv2d_gpu_in_chunks_of_whole_images_matches_one_chunk(cp, algorithm, monkeypatch):
    # a one-byte workspace: one image per chunk on the GPU (its kernels take whole images)
    import minidet.nn.conv as conv_module

    monkeypatch.setattr(conv_module, "MIN_CHUNK_COLUMNS", 1)
    Workspace = conv_module.Workspace
    rng = np.random.default_rng(7)
    whole = on_gpu(cp, Conv2d(3, 5, 3, 1, 1, dtype=np.float64, rng=np.random.default_rng(1), algorithm=algorithm))
    chunked = Conv2d(3, 5, 3, 1, 1, dtype=np.float64, algorithm=algorithm, workspace=Workspace(1))
    chunked.params = whole.params
    x = cp.asarray(rng.standard_normal((3, 3, 9, 8)))
    dy = cp.asarray(rng.standard_normal((3, 5, 9, 8)))
    assert_matches(chunked.forward(x), asnumpy(whole.forward(x)))
    assert_matches(chunked.backward(dy), asnumpy(whole.backward(dy)))
    assert_matches(chunked.grads["weight"], asnumpy(whole.grads["weight"]))


# ---- MaxPool2d ---------------------------------------------------------------------------------

POOL_GEOMETRIES = [  # kernel, stride, padding, ceil_mode
    (2, 2, 0, True),
    (2, 2, 0, False),
    (3, 2, 1, True),
    (3, 2, 1, False),
    (3, 1, 1, False),
    (3, 3, 0, True),
    ((3, 2), (2, 1), (1, 0), True),
    ((3, 2), (2, 3), (1, 1), True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 9, 13), (1, 2, 8, 8)])
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", POOL_GEOMETRIES)
def test_max_pool_gpu_is_identical_to_cpu_forward_argmax_and_backward(cp, kernel, stride, padding,
                                                                       ceil_mode, shape, dtype):
    # Small integers make many ties: both devices must pick the same (first) maximum. The backward
    # adds each pixel's gradients in the same (oh, ow) order on both devices, so it is bit-identical.
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, shape).astype(dtype)
    cpu, gpu = MaxPool2d(kernel, stride, padding, ceil_mode), MaxPool2d(kernel, stride, padding, ceil_mode)
    y = cpu.forward(x)
    assert_identical(gpu.forward(cp.asarray(x)), y)
    assert_identical(gpu.argmax, cpu.argmax)
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert_identical(gpu.backward(cp.asarray(dy)), cpu.backward(dy))


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_gpu_lets_nan_win_as_the_cpu_does(cp, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 7, 9)).astype(dtype)
    x[0, 0, 1, 1] = x[0, 1, 4, 6] = x[0, 1, 4, 7] = np.nan
    cpu, gpu = MaxPool2d(3, 2, 1, ceil_mode=True), MaxPool2d(3, 2, 1, ceil_mode=True)
    assert_identical(gpu.forward(cp.asarray(x)), cpu.forward(x))
    assert_identical(gpu.argmax, cpu.argmax)


def test_vgg_pools_take_600x1000_to_38x63_on_the_gpu(cp):
    # SPEC: Caffe's ceil-mode pools, 600 -> 300 -> 150 -> 75 -> 38 and 1000 -> 500 -> 250 -> 125 -> 63
    x = cp.zeros((1, 1, 600, 1000), dtype=cp.float32)
    for _ in range(4):
        x = MaxPool2d(2, 2, ceil_mode=True).forward(x)
    assert x.shape == (1, 1, 38, 63)


# ---- Linear, ReLU, Dropout, Flatten -----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_gpu_forward_and_backward_match_cpu(cp, dtype):
    rng = np.random.default_rng(0)
    cpu = Linear(50, 9, dtype=dtype, rng=np.random.default_rng(1))
    cpu.params["bias"][...] = rng.standard_normal(9)
    gpu = Linear(50, 9, dtype=dtype)
    gpu.params = {name: value.copy() for name, value in cpu.params.items()}
    on_gpu(cp, gpu)
    x = rng.standard_normal((7, 50)).astype(dtype)
    y = cpu.forward(x)
    assert_matches(gpu.forward(cp.asarray(x)), y)
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert_matches(gpu.backward(cp.asarray(dy)), cpu.backward(dy))
    for name in ("weight", "bias"):
        assert_matches(gpu.grads[name], cpu.grads[name])


def test_frozen_gpu_linear_without_input_gradient_does_nothing(cp):
    layer = on_gpu(cp, Linear(6, 4, rng=np.random.default_rng(0)))
    layer.frozen, layer.needs_input_grad = True, False
    layer.forward(cp.ones((3, 6), dtype=cp.float32))
    assert layer.backward(cp.ones((3, 4), dtype=cp.float32)) is None
    assert layer.grads == {}


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_gpu_is_identical_to_cpu(cp, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    x[0, 0, 0, :3] = 0.0                                      # the kink: no gradient at 0 on either device
    dy = rng.standard_normal(x.shape).astype(dtype)
    cpu, gpu = ReLU(), ReLU()
    assert_identical(gpu.forward(cp.asarray(x)), cpu.forward(x))
    assert_identical(gpu.backward(cp.asarray(dy)), cpu.backward(dy))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_dropout_keeps_1_minus_p_of_the_units_and_preserves_the_mean(cp, p, dtype):
    # 10^6 units: the standard deviation of the kept fraction is <= 0.0005, of the mean <= 0.003
    layer = Dropout(p, seed=0)
    y = layer.forward(cp.ones((1000, 1000), dtype=dtype))
    assert is_gpu_array(y) and y.dtype == dtype
    assert is_gpu_array(layer.mask) and layer.mask.dtype == dtype
    kept = asnumpy(y != 0)
    assert abs(kept.mean() - (1 - p)) < 0.005
    assert abs(float(y.mean()) - 1) < 0.015
    np.testing.assert_allclose(asnumpy(y)[kept], 1 / (1 - p), rtol=1e-6)
    # no structure in the mask: every row and every column keeps about 1 - p of its units
    assert np.abs(kept.mean(axis=0) - (1 - p)).max() < 0.08
    assert np.abs(kept.mean(axis=1) - (1 - p)).max() < 0.08


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_dropout_backward_is_dy_times_the_forward_mask(cp, dtype):
    rng = np.random.default_rng(0)
    x = (rng.uniform(0.5, 2.0, (64, 48)) * rng.choice([-1, 1], (64, 48))).astype(dtype)   # no zeros
    dy = rng.standard_normal(x.shape).astype(dtype)
    layer = Dropout(0.5, seed=3)
    y = asnumpy(layer.forward(cp.asarray(x)))
    kept = y != 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(y[kept], x[kept] * 2, rtol=1e-6)
    dx = layer.backward(cp.asarray(dy))
    assert is_gpu_array(dx)
    np.testing.assert_array_equal(asnumpy(dx), asnumpy(cp.asarray(dy) * layer.mask))
    np.testing.assert_allclose(asnumpy(dx), np.where(kept, dy * 2, 0), rtol=1e-6)


def test_gpu_dropout_same_seed_same_masks_and_a_new_mask_each_forward(cp):
    x = cp.ones((128, 128), dtype=cp.float32)
    a, b = Dropout(0.5, seed=7), Dropout(0.5, seed=7)
    first_a, first_b = asnumpy(a.forward(x)), asnumpy(b.forward(x))
    np.testing.assert_array_equal(first_a, first_b)
    second_a = asnumpy(a.forward(x))
    np.testing.assert_array_equal(second_a, asnumpy(b.forward(x)))
    assert not np.array_equal(first_a, second_a)
    assert not np.array_equal(first_a, asnumpy(Dropout(0.5, seed=8).forward(x)))


def test_gpu_dropout_at_test_time_is_the_identity(cp):
    layer = Dropout(0.5, seed=0)
    x = cp.arange(12, dtype=cp.float32).reshape(3, 4)
    assert layer.eval().forward(x) is x
    dy = x + 1
    assert layer.backward(dy) is dy


def test_flatten_gpu_is_identical_to_cpu_and_c_major(cp):
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    cpu, gpu = Flatten(), Flatten()
    y = gpu.forward(cp.asarray(x))
    assert_identical(y, cpu.forward(x))
    assert float(y[1, 20]) == x[1, 1, 0, 0]                  # C-major: channel 1 starts at column 4*5
    assert_identical(gpu.backward(y * 2), cpu.backward(cpu.forward(x) * 2))


# ---- RoIPool -----------------------------------------------------------------------------------

def roi_pool_inputs(rng, dtype):
    """A (2, 4, 20, 24) map at stride 16 and RoIs that reach every rule of the layer."""
    x = rng.integers(-20, 21, (2, 4, 20, 24)).astype(dtype)          # ties on purpose
    hand = [
        [0, 0, 0, 383, 319],        # the whole image
        [1, 8, 8, 8, 8],            # one cell (8/16 = 0.5 rounds away from zero, to 1)
        [0, 400, 330, 500, 400],    # beyond the map: every bin empty, 0 and argmax -1
        [1, 24, 40, 56, 72],        # corners at 1.5, 2.5, 3.5, 4.5 cells
        [0, 100, 50, 20, 10],       # x2 < x1: width clamped to one cell
        [0, -40, -40, 30, 30],      # negative corners: -2.5 rounds to -3
    ]
    x1 = rng.uniform(-30, 370, 30)
    y1 = rng.uniform(-30, 300, 30)
    random = np.stack([rng.integers(0, 2, 30), x1, y1, x1 + rng.uniform(0, 300, 30),
                       y1 + rng.uniform(0, 250, 30)], axis=1)
    return x, np.concatenate([np.asarray(hand, np.float64), random]).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output_size", [(7, 7), (3, 5)])
def test_roi_pool_layer_gpu_is_identical_to_cpu(cp, dtype, output_size):
    from minidet.nn.roi_pool import RoIPool

    rng = np.random.default_rng(0)
    x, rois = roi_pool_inputs(rng, dtype)
    cpu, gpu = RoIPool(output_size, 1 / 16), RoIPool(output_size, 1 / 16)
    y = cpu.forward(x, rois)
    assert_identical(gpu.forward(cp.asarray(x), cp.asarray(rois)), y)
    # integer gradients: every sum is exact, so the order of the GPU's atomic adds cannot show
    dy = rng.integers(-8, 9, y.shape).astype(dtype)
    assert_identical(gpu.backward(cp.asarray(dy)), cpu.backward(dy))
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert_matches(gpu.backward(cp.asarray(dy)), cpu.backward(dy),
                   rtol=1e-5 if dtype == np.float32 else 1e-12)
