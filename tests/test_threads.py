"""The threaded paths of the CPU kernels give exactly the single-thread results.

The kernels split work over threads only above a size (PARALLEL_MIN_SIZE of minidet.ops.im2col and
minidet.ops.winograd, the max-pool ones), which no other test reaches; here the thresholds are
lowered to 0. The OpenMP kernels' equality tests skip unless the kernels really run on more than
one thread (built with OpenMP, on a machine that gives them two or more); the Winograd transforms
and batched products, shared out between Python threads, run threaded on any machine.
"""
import importlib

import numpy as np
import pytest

import minidet.threads as threads
from minidet.nn.conv import Conv2d
from minidet.nn.linear import Linear
from minidet.nn.pool import MaxPool2d
from minidet.ops import winograd
from minidet._ext import winograd as _cpu_winograd
from minidet.ops.roi_pool import roi_pool, roi_pool_backward

im2col_ops = importlib.import_module("minidet.ops.im2col")
maxpool_ops = importlib.import_module("minidet.ops.maxpool")

needs_threads = pytest.mark.skipif(threads.kernel_threads() < 2,
                                   reason="the kernels run on one thread here (no OpenMP, or one core)")


@pytest.fixture
def parallel_everywhere(monkeypatch):
    """Every kernel that can split its work does so, however small the call."""
    for module, name in ((im2col_ops, "PARALLEL_MIN_SIZE"), (winograd, "PARALLEL_MIN_SIZE"),
                         (maxpool_ops, "FORWARD_PARALLEL_MIN_SIZE"), (maxpool_ops, "BACKWARD_PARALLEL_MIN_SIZE"),
                         (maxpool_ops, "FORWARD_2X2_PARALLEL_MIN_SIZE")):
        monkeypatch.setattr(module, name, 0)


def run_conv_and_pool(dtype, algorithm):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 17, 23)).astype(dtype)
    conv = Conv2d(5, 7, 3, stride=1, padding=1, dtype=dtype, rng=1, algorithm=algorithm)
    pool = MaxPool2d(2, ceil_mode=True)
    y = pool.forward(conv.forward(x))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = conv.backward(pool.backward(dy))
    return [y, dx, conv.grads["weight"], conv.grads["bias"], pool.argmax]


@needs_threads
@pytest.mark.parametrize("algorithm", ["im2col", "winograd2", "winograd4"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threaded_conv_and_pool_kernels_equal_single_thread_kernels(request, dtype, algorithm):
    single = run_conv_and_pool(dtype, algorithm)
    request.getfixturevalue("parallel_everywhere")
    for a, b in zip(run_conv_and_pool(dtype, algorithm), single):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("parts", [2, 3, 7])
@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_winograd_transforms_shared_between_threads_equal_single_thread_ones(monkeypatch, request, m, parts):
    """Every transform cut into `parts` shares on minidet.threads' Python threads (more of them than
    the machine may have, and uneven shares) gives the one-thread result, bit for bit; on a range of
    tile rows that starts and ends inside images."""
    monkeypatch.setattr(threads, "_blas_thread_count", lambda: parts)
    rng = np.random.default_rng(m)
    x, dy = rng.standard_normal((3, 6, 19, 30)), rng.standard_normal((3, 5, 19, 30))
    w = rng.standard_normal((5, 6, 3, 3))
    rows = (2, 3 * winograd.tiles(19, m) - 1)

    def transforms():
        v = winograd.input_transform(x, m, rows)
        z = winograd.output_transform_adjoint(dy, m, rows)
        u = winograd.filter_transform(w, m)
        y = winograd.output_transform(u @ v, np.ones(5), m, np.zeros(dy.shape), rows)
        dx = winograd.input_transform_adjoint(u.transpose(0, 2, 1) @ z, m, np.zeros(x.shape), rows)
        return [v, z, u, y, dx, winograd.filter_transform_adjoint(z @ v.transpose(0, 2, 1), m)]

    single = transforms()
    request.getfixturevalue("parallel_everywhere")
    for a, b in zip(transforms(), single):
        np.testing.assert_array_equal(a, b)


@needs_threads
def test_threaded_col2im_equals_single_thread_col2im(request):
    rng = np.random.default_rng(0)
    shape, geometry = (2, 4, 13, 11), ((3, 2), (2, 1), (1, 1))      # OH = 7, OW = 12
    cols = rng.standard_normal(im2col_ops.im2col(np.zeros(shape), *geometry).shape)
    part = cols[:, 12 * 3:]                                           # output rows 3 .. 13: from inside image 0

    def both():
        return [im2col_ops.col2im(cols, shape, *geometry),
                im2col_ops.col2im(part, shape, *geometry, out=np.ones(shape), rows=(3, 14))]

    single = both()
    request.getfixturevalue("parallel_everywhere")
    for a, b in zip(both(), single):
        np.testing.assert_array_equal(a, b)


@needs_threads
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roi_pool_backward_on_several_threads_equals_one_thread(dtype):
    # the backward always runs in parallel (blocks of channels); on one OpenMP thread it runs serially
    threadpoolctl = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 70, 20, 24)).astype(dtype)
    x1 = rng.uniform(0, 300, 200)
    y1 = rng.uniform(0, 250, 200)
    rois = np.stack([rng.integers(0, 2, 200), x1, y1, x1 + rng.uniform(0, 200, 200),
                     y1 + rng.uniform(0, 150, 200)], axis=1).astype(dtype)
    y, argmax = roi_pool(x, rois)
    dy = rng.standard_normal(y.shape).astype(dtype)
    threaded = roi_pool_backward(dy, argmax, x.shape, rois)
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert threads.kernel_threads() == 1
        single = roi_pool_backward(dy, argmax, x.shape, rois)
    np.testing.assert_array_equal(threaded, single)


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


@pytest.mark.parametrize("workers", [2, 3, 7])
def test_batched_matmul_shared_out_between_threads_equals_one_product_at_a_time(monkeypatch, rng, workers):
    """However the batch is cut between Python threads (here more of them than the machine may have),
    each product is the same single-threaded GEMM, bit for bit; below the threshold, one thread."""
    a = rng.standard_normal((36, 24, 40)).astype(np.float32)
    b = rng.standard_normal((36, 80, 40)).astype(np.float32).transpose(0, 2, 1)     # a strided view, as dU's V^T
    with threads.blas_threads(0):
        expected = np.stack([a[k] @ b[k] for k in range(len(a))])
    monkeypatch.setattr(threads, "_blas_thread_count", lambda: workers)
    monkeypatch.setattr(threads, "_workers", None)                   # a pool of this many threads
    calls = []
    original = np.matmul
    monkeypatch.setattr(threads.np, "matmul", lambda x, y, out: calls.append(len(x)) or original(x, y, out=out))
    for threshold, runs in ((0, workers), (1e18, 1)):
        monkeypatch.setattr(threads, "BATCH_PARALLEL_MIN_FLOPS", threshold)
        calls.clear()
        out = np.full((36, 24, 80), np.nan, np.float32)
        assert threads.batched_matmul(a, b, out) is out
        np.testing.assert_array_equal(out, expected)
        assert len(calls) == runs and sum(calls) == 36


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_batched_matmul_accumulating_adds_each_single_threaded_product(monkeypatch, rng, workers):
    """accumulate=True: out[k] += a[k] @ b[k], each product the same single-threaded GEMM as one at
    a time, bit for bit, however the batch is cut between threads (the dU of a later Winograd chunk)."""
    a = rng.standard_normal((36, 24, 40)).astype(np.float32)
    b = rng.standard_normal((36, 80, 40)).astype(np.float32).transpose(0, 2, 1)
    start = rng.standard_normal((36, 24, 80)).astype(np.float32)
    with threads.blas_threads(0):
        expected = np.stack([start[k] + a[k] @ b[k] for k in range(len(a))])
    monkeypatch.setattr(threads, "_blas_thread_count", lambda: workers)
    monkeypatch.setattr(threads, "_workers", None)
    monkeypatch.setattr(threads, "BATCH_PARALLEL_MIN_FLOPS", 0)
    out = start.copy()
    assert threads.batched_matmul(a, b, out, accumulate=True) is out
    np.testing.assert_array_equal(out, expected)


def test_a_share_outside_the_parts_is_refused():
    x, out = np.zeros((1, 2, 8, 8), np.float32), np.zeros((36, 2, 2), np.float32)
    bt = winograd.matrices(4, np.float32)[0]
    for part, parts in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="part must be in"):
            _cpu_winograd.to_tiles(x, bt, 0, out, False, part, parts)


@pytest.mark.parametrize("needs_input_grad", [False, True])
def test_im2col_lanes_on_two_threads_equal_the_lanes_one_after_another(monkeypatch, rng, needs_input_grad):
    """An im2col layer alternates its chunks between two lanes of buffers. Run on two Python threads
    (threshold 0) or one after the other (threshold infinite), the lanes give the same y, dW and db,
    bit for bit; with threshold 0 the forward (and a backward without dx) run on the worker threads."""
    import threading

    import minidet.nn.conv as conv_module

    x = rng.standard_normal((2, 3, 23, 17)).astype(np.float32)
    layer = Conv2d(3, 8, 3, padding=1, rng=0, algorithm="im2col", workspace=conv_module.Workspace(1))
    layer.needs_input_grad = needs_input_grad
    dy = rng.standard_normal(layer.output_shape(x.shape)).astype(np.float32)
    monkeypatch.setattr(threads, "_blas_thread_count", lambda: 2)
    callers = set()
    original = conv_module.im2col
    monkeypatch.setattr(conv_module, "im2col", lambda *a, **k: callers.add(threading.get_ident()) or original(*a, **k))

    main = threading.get_ident()

    def run(threshold):
        monkeypatch.setattr(conv_module, "BATCH_PARALLEL_MIN_FLOPS", threshold)
        callers.clear()
        y = layer.forward(x)
        forward_callers = set(callers)
        callers.clear()
        dx = layer.backward(dy)
        return [y, layer.grads["weight"], layer.grads["bias"]] + ([] if dx is None else [dx]), forward_callers

    single, callers_single = run(1e18)
    assert callers_single == {main} == callers
    threaded, callers_threaded = run(0)
    for a, b in zip(threaded, single):
        np.testing.assert_array_equal(a, b)
    assert main not in callers_threaded
    assert (callers == {main}) if needs_input_grad else (main not in callers)   # with dx: in order, here
