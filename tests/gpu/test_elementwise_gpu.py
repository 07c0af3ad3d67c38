"""The fused elementwise kernels (minidet.ops.elementwise) on the GPU against the same functions on the CPU.

Each does the CPU's arithmetic in the CPU's order, so the results are identical, dropout masks
included: they are a hash of (seed, draw, index), not a generator's stream.
"""
import numpy as np
import pytest

from minidet.backend import asnumpy, is_gpu_array
from minidet.ops.elementwise import bias_relu, dropout, dropout_backward, dropout_keep, relu, relu_backward

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float64]


@pytest.fixture(scope="module")
def cp():
    return pytest.importorskip("cupy")


def assert_identical(actual_gpu, expected_cpu):
    assert is_gpu_array(actual_gpu), f"expected a cupy array, got {type(actual_gpu)}"
    actual = asnumpy(actual_gpu)
    assert actual.dtype == np.asarray(expected_cpu).dtype and actual.shape == np.shape(expected_cpu)
    np.testing.assert_array_equal(actual, expected_cpu)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_kernels_on_the_gpu_are_identical_to_the_cpu(cp, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    x[0, 0, 0, :3] = [0.0, -0.0, np.nan]
    dy = rng.standard_normal(x.shape).astype(dtype)
    y = relu(x)
    y_gpu = relu(cp.asarray(x))
    assert_identical(y_gpu, y)
    assert_identical(relu_backward(y_gpu, cp.asarray(dy)), relu_backward(y, dy))
    out = cp.asarray(x)
    assert relu(out, out=out) is out                              # in place
    assert_identical(out, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_relu_on_the_gpu_reads_a_transposed_view_as_the_cpu_does(cp, dtype):
    # A convolution's GEMM output (F, N, H*W) read as (N, F, H*W): the bias add needs no copy.
    rng = np.random.default_rng(1)
    gemm = rng.standard_normal((5, 2, 12)).astype(dtype)
    bias = rng.standard_normal((5, 1)).astype(dtype)
    expected = bias_relu(gemm.transpose(1, 0, 2), bias)
    out = cp.empty((2, 5, 12), dtype=dtype)
    assert bias_relu(cp.asarray(gemm).transpose(1, 0, 2), cp.asarray(bias), out=out) is out
    assert_identical(out, expected)


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_on_the_gpu_draws_the_cpus_masks(cp, p, dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((130, 257)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    for draw in (0, 1, 12345):
        assert_identical(dropout(cp.asarray(x), p, 99, draw), dropout(x, p, 99, draw))
        assert_identical(dropout_backward(cp.asarray(dy), p, 99, draw), dropout_backward(dy, p, 99, draw))
    kept = asnumpy(dropout(cp.ones((1000, 1000), dtype), p, 5, 0)) != 0
    np.testing.assert_array_equal(kept, dropout_keep((1000, 1000), p, 5, 0))
    assert abs(kept.mean() - (1 - p)) < 0.005


def test_subnormal_relu_on_the_gpu_rectifies_the_flushed_input(cp):
    # CuPy compiles elementwise kernels with -ftz=true too: a float32 subnormal is not > 0 there.
    from tests.gpu.test_ops_gpu import flush_subnormals, subnormal_mixture

    x = subnormal_mixture(np.random.default_rng(3), (4, 50), np.float32)
    assert_identical(relu(cp.asarray(x)), relu(flush_subnormals(x)))
    x64 = x.astype(np.float64)
    assert_identical(relu(cp.asarray(x64)), relu(x64))
