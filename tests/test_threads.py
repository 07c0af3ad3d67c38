"""The threaded paths of the CPU kernels give exactly the single-thread results.

The kernels split work over threads only above a size (minidet.ops.im2col.PARALLEL_MIN_SIZE and
the max-pool ones), which no other test reaches; here the thresholds are lowered to 0.
"""
import importlib

import numpy as np
import pytest

import minidet.threads as threads
from minidet.nn.conv import Conv2d
from minidet.nn.linear import Linear
from minidet.nn.pool import MaxPool2d

im2col_ops = importlib.import_module("minidet.ops.im2col")
maxpool_ops = importlib.import_module("minidet.ops.maxpool")


def run_conv_and_pool(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 17, 23)).astype(dtype)
    conv, pool = Conv2d(5, 7, 3, stride=1, padding=1, dtype=dtype, rng=1), MaxPool2d(2, ceil_mode=True)
    y = pool.forward(conv.forward(x))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = conv.backward(pool.backward(dy))
    return [y, dx, conv.grads["weight"], conv.grads["bias"], pool.argmax]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threaded_kernels_equal_single_thread_kernels(monkeypatch, dtype):
    single = run_conv_and_pool(dtype)
    monkeypatch.setattr(im2col_ops, "PARALLEL_MIN_SIZE", 0)
    monkeypatch.setattr(maxpool_ops, "FORWARD_PARALLEL_MIN_SIZE", 0)
    monkeypatch.setattr(maxpool_ops, "BACKWARD_PARALLEL_MIN_SIZE", 0)
    for a, b in zip(run_conv_and_pool(dtype), single):
        np.testing.assert_array_equal(a, b)


def test_blas_threads_limits_small_products_and_restores_the_pool():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    blas = threadpoolctl.ThreadpoolController().select(user_api="blas")
    before = [p.num_threads for p in blas.lib_controllers]
    with threads.blas_threads(threads.BLAS_PARALLEL_MIN_FLOPS / 2):
        inside = [p.num_threads for p in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers]
    after = [p.num_threads for p in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers]
    assert all(n == 1 for n in inside) and after == before
    with threads.blas_threads(threads.BLAS_PARALLEL_MIN_FLOPS * 2):
        large = [p.num_threads for p in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers]
    assert large == before


def test_linear_under_the_blas_limit_computes_the_same_products():
    rng = np.random.default_rng(0)
    layer = Linear(6, 4, dtype=np.float64, rng=0)
    x, dy = rng.standard_normal((3, 6)), rng.standard_normal((3, 4))
    y = layer.forward(x)
    dx = layer.backward(dy)
    w = layer.params["weight"]
    np.testing.assert_allclose(y, x @ w.T + layer.params["bias"], rtol=1e-12)
    np.testing.assert_allclose(dx, dy @ w, rtol=1e-12)
    np.testing.assert_allclose(layer.grads["weight"], dy.T @ x, rtol=1e-12)
